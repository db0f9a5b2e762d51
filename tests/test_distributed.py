"""Scale-out (issue 6): two gloo processes give what one process gives, for OTI, concept association and features."""
import os
import socket
import warnings
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from searle_lib import distributed

TEMPLATES = ["a photo of a {}", "{}", "a sketch of a {}", "We see a {} in this image"]
PHRASES = {"red circle": ["a photo of red circle that is big", "a photo of red circle that shines"],
           "blue square": ["a photo of blue square that is small", "a photo of blue square that sits"]}
CONCEPTS = ["red circle", "blue square", "green thing", "old lamp", "small boat"]
IDS = [f"img{i}" for i in range(7)]  # odd: the shares differ in size


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _images(folder: Path):
    from PIL import Image

    from searle_lib.datasets.base import ImageSet
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, i in enumerate(IDS):
        g = torch.Generator().manual_seed(n)
        pixels = (torch.rand(40, 48, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"{i}.png")
        paths.append(str(folder / f"{i}.png"))
    return ImageSet(tuple(IDS), tuple(paths), "dist-test")


def _work(root: Path, tag: str) -> dict:
    """Everything the test compares; run by one process, or by each of several under a process group."""
    from searle_lib.backbones import create_backbone
    from searle_lib.concepts import associate, concept_embeddings, read_concepts_csv, write_concepts_csv
    from searle_lib.config import ModelConfig, OTIConfig
    from searle_lib.features import extract_features
    from searle_lib.oti import run_oti

    torch.manual_seed(0)
    b = create_backbone(ModelConfig(name="test-micro-vit", pretrained=None), "cpu")
    images = _images(root / "images")
    fs = extract_features(b, images, batch_size=2, cache_dir=root / tag / "features", chunk_images=2,
                          progress=False)
    embs = concept_embeddings(b, CONCEPTS, TEMPLATES, batch_size=8, progress=False)
    top = associate(fs.features, embs, top_k=3)
    csv = write_concepts_csv(root / tag / "concepts.csv", fs.ids, CONCEPTS, top)
    assert list(read_concepts_csv(csv)) == fs.ids  # every rank reads the file rank 0 wrote
    ranked = {i: ["red circle", "blue square"] if n % 3 else ["blue square"] for n, i in enumerate(IDS)}
    cfg = OTIConfig(steps=4, batch_size=2, chunk_images=2)
    chunked = run_oti(b, fs.ids, fs.features, ranked, PHRASES, TEMPLATES, cfg, seed=5, out_dir=root / tag / "oti",
                      config_hash="h", progress=False)
    gathered = run_oti(b, fs.ids, fs.features, ranked, PHRASES, TEMPLATES, cfg, seed=5, progress=False)
    one_batch = run_oti(b, fs.ids, fs.features, ranked, PHRASES, TEMPLATES, OTIConfig(steps=2, batch_size=8),
                        seed=5, progress=False)  # a single batch: rank 1 has nothing to do
    return {"features": fs.features, "ids": fs.ids, "embs": embs, "top": top, "csv": csv.read_text(),
            "oti_chunked": chunked.ema_tokens, "oti_gathered": gathered.ema_tokens,
            "oti_one_batch": one_batch.ema_tokens,
            "oti_file": (root / tag / "oti" / "oti_tokens.safetensors").read_bytes()}


def _worker(rank: int, world: int, port: int, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1")
    torch.set_num_threads(1)
    assert distributed.init_from_env("gloo") == (rank, world)
    try:
        out = _work(Path(root), "multi")
        torch.save(out, Path(root) / f"rank{rank}.pt")
    finally:
        distributed.destroy()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker: CPU kernels may sum in another order with another thread count
    try:
        single = _work(root, "single")
    finally:
        torch.set_num_threads(threads)
    try:
        mp.spawn(_worker, args=(2, _free_port(), str(root)), nprocs=2, join=True)
    except mp.ProcessExitedException as e:
        # the port _free_port found can be taken by another process before rank 0 binds it (seen once, while
        # Jupyter kernels were starting on the same machine): one retry on a fresh port; a real bug fails twice
        warnings.warn(f"distributed test: first spawn failed ({e}); retrying once on another port")
        mp.spawn(_worker, args=(2, _free_port(), str(root)), nprocs=2, join=True)
    return single, [torch.load(root / f"rank{r}.pt", weights_only=False) for r in range(2)]


def test_helpers_on_one_process():
    assert distributed.init_from_env() == (0, 1) or distributed.is_initialized()
    assert (distributed.rank(), distributed.world_size()) == (0, 1)
    assert distributed.all_gather_objects({"a": 1}) == [{"a": 1}]
    full = distributed.gather_rows(4, [2, 0], {"x": torch.tensor([[5.0], [7.0]])})
    assert full["x"].flatten().tolist() == [7.0, 0.0, 5.0, 0.0]


def test_a_rank_without_rows_does_not_set_the_shape():
    parts = [(torch.zeros(0, dtype=torch.long), {"x": torch.zeros(0)}),
             (torch.tensor([1, 0]), {"x": torch.tensor([[1.0, 2.0], [3.0, 4.0]])})]
    assert distributed._assemble(2, parts)["x"].tolist() == [[3.0, 4.0], [1.0, 2.0]]


def test_shards_cover_the_list_once():
    for n in (0, 1, 7, 10):
        for w in (1, 2, 3):
            parts = [list(distributed.shard_range(n, r, w)) for r in range(w)]
            assert sum(parts, []) == list(range(n))


def test_two_processes_equal_one(runs):
    single, ranks = runs
    for multi in ranks:  # every rank returns the merged result
        assert multi["ids"] == single["ids"]
        torch.testing.assert_close(multi["features"], single["features"], rtol=0, atol=1e-6)
        torch.testing.assert_close(multi["embs"], single["embs"], rtol=0, atol=1e-6)
        assert torch.equal(multi["top"], single["top"])
        assert multi["csv"] == single["csv"]  # the concept CSV, byte for byte
        # OTI: per-image random streams and the same batches, so bit-identical to one process
        assert torch.equal(multi["oti_chunked"], single["oti_chunked"])
        assert torch.equal(multi["oti_gathered"], single["oti_gathered"])
        assert torch.equal(multi["oti_gathered"], multi["oti_chunked"])
        assert torch.equal(multi["oti_one_batch"], single["oti_one_batch"])
        assert multi["oti_file"] == single["oti_file"]  # the merged file, byte for byte
