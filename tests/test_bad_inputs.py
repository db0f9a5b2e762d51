"""The bad-input catalogue (issue 7; ``book/bad_inputs.md``): one test per catalogued input.

Each bad input must give ONE clear error that names the file or value and says how to fix it, or, where the
official behaviour is to skip (an unreadable image of an unlabeled set), skip it and report the count. Where work
was done before the error, it is kept. The last tests audit safe loading: no pickle, torch.load without
``weights_only=True``, unsafe YAML or eval/exec on data in ``searle_lib``.
"""
from __future__ import annotations

import ast
import json
import os
import pickle
import re
import shutil
import struct
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image

import _official_fixtures as F
from searle_lib.backbones import MissingWeightsError, create_backbone
from searle_lib.chunkstore import ResumeMismatchError
from searle_lib.concepts import load_templates, load_vocabulary
from searle_lib.config import ConfigError, ModelConfig, OTIConfig, PhiConfig, PhrasesConfig, load_config
from searle_lib.datasets import ImageSet, load_split, load_unlabeled
from searle_lib.datasets.base import CIRQuery, DatasetError
from searle_lib.features import extract_features
from searle_lib.images import ImageError, open_image
from searle_lib.methods import CaptionTooLongError, QueryContext, query_features
from searle_lib.oti import run_oti
from searle_lib.phi import Phi, load_phi, save_phi, train_phi
from searle_lib.phrases import PhrasesError, generate_phrases, load_phrases, prepare_phrases
from searle_lib.safe_pickle import UnsafePickleError
from searle_lib.submissions import SubmissionError, validate_circo_submission, validate_cirr_submission

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = ["a photo of a {}", "{}"]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return F.write_all(tmp_path_factory.mktemp("pristine"))


@pytest.fixture
def roots(pristine, tmp_path):
    """A private copy of the four official-layout fixture datasets, free to damage."""
    return {k: Path(shutil.copytree(v, tmp_path / k)) for k, v in pristine.items()}


def _one_error(exc_type, fn, *needles: str) -> str:
    """``fn()`` raises ``exc_type`` whose message holds every needle (file or value, and the fix)."""
    with pytest.raises(exc_type) as e:
        fn()
    msg = str(e.value)
    for n in needles:
        assert n in msg, f"{n!r} not in the message:\n{msg}"
    return msg


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ---------------------------------------------------------------------------------------------------- datasets
def test_missing_dataset_folder(tmp_path):
    _one_error(DatasetError, lambda: load_split("cirr", tmp_path / "CIRR", "val"),
               f"dataset root {tmp_path / 'CIRR'} does not exist", "Expected layout", "Fix: get the annotations")


def test_dataset_root_not_set():
    _one_error(DatasetError, lambda: load_split("circo", None, "val"), "no dataset root given (data.root is null)",
               "Fix:")


def test_unknown_dataset_name(roots):
    _one_error(DatasetError, lambda: load_split("cirrr", roots["cirr"], "val"), "unknown dataset 'cirrr'",
               "available: ", "cirr")


def test_missing_annotation_json(roots):
    path = roots["cirr"] / "cirr" / "captions" / "cap.rc2.val.json"
    path.unlink()
    _one_error(DatasetError, lambda: load_split("cirr", roots["cirr"], "val"),
               f"annotation file {path} does not exist", "Fix:")


def test_malformed_annotation_json(roots):
    path = roots["fashioniq"] / "captions" / "cap.dress.val.json"
    path.write_text(path.read_text()[:50])  # a truncated download
    _one_error(DatasetError, lambda: load_split("fashioniq", roots["fashioniq"], "val", category="dress"),
               f"annotation file {path} is not valid JSON (line", "download it again")


def test_annotation_record_missing_a_field(roots):
    path = roots["circo"] / "annotations" / "val.json"
    records = json.loads(path.read_text())
    del records[1]["reference_img_id"]
    path.write_text(json.dumps(records))
    _one_error(DatasetError, lambda: load_split("circo", roots["circo"], "val"),
               f"{path}, record 1: field 'reference_img_id' is missing", "Fix:")


def test_empty_gallery(roots):
    path = roots["fashioniq"] / "image_splits" / "split.dress.test.json"
    path.write_text("[]")
    _one_error(DatasetError, lambda: load_split("fashioniq", roots["fashioniq"], "test", category="dress"),
               f"{path} holds an empty list (no image names (ASINs))", "download it again")


def test_image_listed_but_absent(roots):
    gone = roots["cirr"] / "dev" / "dev-1-3-img1.png"
    gone.unlink()
    _one_error(DatasetError, lambda: load_split("cirr", roots["cirr"], "val"),
               "1 image(s) listed in split.rc2.val.json are absent", f"dev-1-3-img1 -> {gone}", "on_missing='drop'")
    with pytest.warns(UserWarning, match="1 image.* absent and were dropped with the queries that use them"):
        sp = load_split("cirr", roots["cirr"], "val", on_missing="drop")
    assert "dev-1-3-img1" not in sp.gallery.ids and len(sp.queries) == F.CIRR_VAL_QUERIES - 2


def test_corrupt_image_in_a_benchmark_gallery_keeps_finished_chunks(roots, micro_backbone, tmp_path):
    sp = load_split("circo", roots["circo"], "val")
    bad = sp.gallery.paths[13]
    good = bad.read_bytes()
    bad.write_bytes(b"\xff\xd8\xff this is not a jpeg")
    cache = tmp_path / "cache"
    _one_error(ImageError, lambda: extract_features(micro_backbone, sp.gallery, batch_size=4, cache_dir=cache,
                                                    chunk_images=4, progress=False),
               f"image {bad} is not a readable image", "re-download it")
    bad.write_bytes(good)  # fixed: the three chunks finished before the bad image are reused, not recomputed
    encoded = []
    real = type(micro_backbone).encode_image
    type(micro_backbone).encode_image = lambda self, x: encoded.append(len(x)) or real(self, x)
    try:
        fs = extract_features(micro_backbone, sp.gallery, batch_size=4, cache_dir=cache, chunk_images=4,
                              progress=False)
    finally:
        type(micro_backbone).encode_image = real
    assert sum(encoded) == len(sp.gallery) - 12 and fs.ids == list(sp.gallery.ids)


def test_truncated_image(tmp_path):
    path = tmp_path / "cut.jpg"
    Image.effect_noise((64, 64), 40).convert("RGB").save(path)
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    _one_error(ImageError, lambda: open_image(path), f"image {path} is corrupt or truncated", "re-download it")


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_grayscale_and_cmyk_images_are_read_as_rgb(tmp_path, micro_backbone, mode):
    rgb = Image.effect_noise((48, 40), 60).convert("RGB")
    path = tmp_path / f"x_{mode}.jpg"
    rgb.convert(mode).save(path, quality=95)
    image = open_image(path)
    assert image.mode == "RGB" and image.size == (48, 40)
    fs = extract_features(micro_backbone, ImageSet(("x",), (path,), "modes"), progress=False)
    assert fs.ids == ["x"] and torch.isfinite(fs.features).all()


def test_sixteen_bit_image_is_scaled_not_saturated(tmp_path):
    import numpy as np
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((8, 8), 100 * 256, dtype=np.uint16)).save(path)
    assert np.array(open_image(path))[0, 0].tolist() == [100, 100, 100]


def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A tiny PNG file whose header claims ``width`` x ``height`` pixels (the pixels are never decoded)."""
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def test_huge_image_is_refused_before_decoding(tmp_path):
    path = _png_claiming(tmp_path / "huge.png", 10_000, 10_000)
    _one_error(ImageError, lambda: open_image(path), f"image {path} is 10000x10000 = 100,000,000 pixels",
               "over the limit", "shrink it")
    path = _png_claiming(tmp_path / "bomb.png", 40_000, 40_000)  # beyond Pillow's own hard limit
    _one_error(ImageError, lambda: open_image(path), f"image {path} refused as a decompression bomb", "shrink it")


def test_unlabeled_set_with_a_corrupt_image_is_skipped_and_counted(roots, micro_backbone, tmp_path):
    images = load_unlabeled("imagenet", roots["imagenet"])
    images.paths[3].write_bytes(images.paths[3].read_bytes()[:100])
    with pytest.warns(UserWarning, match=r"1 of 6 images of imagenet/test could not be read and were skipped "
                                         r"\(first: \['ILSVRC2012_test_00000004.JPEG'\]\)"):
        fs = extract_features(micro_backbone, images, cache_dir=tmp_path / "c", skip_bad=True, progress=False)
    assert fs.skipped == ["ILSVRC2012_test_00000004.JPEG"] and len(fs) == 5
    again = extract_features(micro_backbone, images, cache_dir=tmp_path / "c", skip_bad=True, progress=False)
    assert again.from_cache and again.skipped == fs.skipped  # the count survives in the cache


def test_empty_unlabeled_folder(tmp_path):
    (tmp_path / "ImageNet1K" / "test").mkdir(parents=True)
    _one_error(DatasetError, lambda: load_unlabeled("imagenet", tmp_path / "ImageNet1K"),
               f"{tmp_path / 'ImageNet1K' / 'test'} holds no *.JPEG files", "Fix: download")


def test_unlabeled_names_repeated_in_subfolders(roots):
    src = roots["imagenet"] / "test" / "ILSVRC2012_test_00000001.JPEG"
    (roots["imagenet"] / "test" / "extra").mkdir()
    shutil.copy(src, roots["imagenet"] / "test" / "extra" / src.name)
    _one_error(DatasetError, lambda: load_unlabeled("imagenet", roots["imagenet"]),
               "file name 'ILSVRC2012_test_00000001.JPEG' appears in two sub-folders", "must be unique")


# ------------------------------------------------------------------------------------------ models and weights
def test_unknown_backbone():
    _one_error(ConfigError, lambda: create_backbone(ModelConfig(name="ViT-B-33", pretrained=None)),
               "model.name='ViT-B-33' is not an open_clip architecture", "Available:", "ViT-B-32")


def test_unknown_weights_tag():
    _one_error(ConfigError, lambda: create_backbone(ModelConfig(name="ViT-B-32", pretrained="opneai")),
               "model.pretrained='opneai' is neither a file nor a known open_clip tag", "Known tags", "openai")


def test_weights_absent_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    msg = _one_error(MissingWeightsError, lambda: create_backbone(ModelConfig(name="ViT-B-32", pretrained="openai")),
                     "pretrained weights ViT-B-32/openai are not on this machine", "Looked in",
                     "set model.pretrained to its file path")
    assert msg.count("\n") >= 1


def test_missing_clip_checkpoint_file(tmp_path):
    _one_error(MissingWeightsError, lambda: create_backbone(ModelConfig(name="test-micro-vit", pretrained=None,
                                                                        checkpoint=str(tmp_path / "clip.st"))),
               f"model.checkpoint='{tmp_path / 'clip.st'}' does not exist", "train it first")


def test_cuda_requested_on_a_cpu_machine():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cfg = load_config("tiny", {"run.device": "cuda"})
    _one_error(ConfigError, lambda: create_backbone(cfg.model, cfg.run.device),
               "run.device='cuda' but CUDA is not available here", "use 'cpu' or 'auto'")


def test_phi_checkpoint_of_the_wrong_width(tmp_path, micro_backbone):
    path = save_phi(Phi(512, 2048, 512), tmp_path / "SEARLE_ViT-B32.pt")
    _one_error(ConfigError, lambda: load_phi(path, micro_backbone), f"{path} maps 512 -> 512",
               f"backbone test-micro-vit has image features of {micro_backbone.feature_dim}",
               "use the phi trained for this backbone")


def test_file_that_is_not_a_phi_checkpoint(tmp_path):
    path = tmp_path / "clip.pt"
    torch.save({"visual.proj": torch.zeros(2, 2)}, path)
    _one_error(ConfigError, lambda: load_phi(path), f"{path} is not a phi checkpoint", "layers.0/3/6")


def test_phi_checkpoint_carrying_code_is_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "phi.pt"
    torch.save({"Phi": {"layers.0.weight": torch.zeros(1)}, "extra": _Evil(marker)}, path)
    _one_error(ConfigError, lambda: load_phi(path), f"{path} holds Python objects other than tensors",
               "weights_only=True", "plain {'Phi': state_dict} checkpoint")
    assert not marker.exists()


def test_truncated_phi_checkpoint(tmp_path):
    path = save_phi(Phi(32, 128, 32), tmp_path / "phi.pt")
    path.write_bytes(path.read_bytes()[:500])
    _one_error(ConfigError, lambda: load_phi(path), f"{path} is not a readable PyTorch checkpoint",
               "truncated: download or train it again")


def test_phi_batch_larger_than_the_training_set(micro_backbone):
    b = micro_backbone
    _one_error(ConfigError, lambda: train_phi(b, torch.randn(5, b.feature_dim), torch.randn(5, b.token_dim), None,
                                              None, PhiConfig(batch_size=8, epochs=1), progress=False),
               "phi.batch_size=8 is larger than the 5 training images", "lower phi.batch_size")


# ------------------------------------------------------------------------------- tokens, concepts and captions
def _cirr_val(root: Path):
    return load_split("cirr", root, "val")


def test_oti_token_file_for_other_images(roots, micro_backbone):
    sp = _cirr_val(roots["cirr"])
    refs = {q.reference_id: torch.zeros(micro_backbone.feature_dim) for q in sp.queries}
    tokens = {"dev-9-9-img0": torch.zeros(micro_backbone.token_dim)}  # computed for another split
    ctx = QueryContext(micro_backbone, refs, tokens)
    _one_error(ConfigError, lambda: query_features("searle-oti", ctx, sp), "no pseudo-token for reference image(s)",
               sp.queries[0].reference_id, "rerun OTI on this split's references")


def test_concept_file_for_other_images_keeps_finished_chunks(micro_backbone, tmp_path):
    ids = [f"img{i}" for i in range(6)]
    feats = torch.randn(6, micro_backbone.feature_dim, generator=torch.Generator().manual_seed(0))
    phrases = {"dog": ["a photo of dog that runs", "a photo of dog that sits"]}
    concepts = {i: ["dog"] for i in ids[:4]}  # the CSV of another image set: img4 and img5 are missing
    cfg = OTIConfig(steps=2, batch_size=2, chunk_images=2)
    run = lambda c: run_oti(micro_backbone, ids, feats, c, phrases, TEMPLATES, cfg,  # noqa: E731
                            out_dir=tmp_path / "oti", config_hash="h", progress=False)
    _one_error(KeyError, lambda: run(concepts), "no concepts for image 'img4'", "concept file belongs to other images",
               "rerun concept association")
    chunks = tmp_path / "oti" / "chunks"
    assert (chunks / "chunk_00000.safetensors").is_file() and (chunks / "chunk_00001.safetensors").is_file()
    before = (chunks / "chunk_00001.safetensors").stat().st_mtime_ns
    run({i: ["dog"] for i in ids})
    assert (chunks / "chunk_00001.safetensors").stat().st_mtime_ns == before  # finished work was kept


def test_caption_longer_than_the_context(roots, micro_backbone):
    sp = _cirr_val(roots["cirr"])
    q = sp.queries[0]
    long = CIRQuery("100", q.reference_id, ("with a dog " * 40,), q.target_id)
    sp = type(sp)(**{**sp.__dict__, "queries": (long,)})
    ctx = QueryContext(micro_backbone, {q.reference_id: torch.zeros(micro_backbone.feature_dim)})
    _one_error(CaptionTooLongError, lambda: query_features("text", ctx, sp), "query 100: the text 'with a dog",
               "more than the text encoder's context of 77", "shorten the caption in the annotation file")


def test_concept_vocabulary_with_blanks(tmp_path):
    path = tmp_path / "oidv7-class-descriptions.csv"
    path.write_text("LabelName,DisplayName\n/m/1,Dog\n/m/2, \n/m/3,Cat\n")
    _one_error(ConfigError, lambda: load_vocabulary(path), f"{path}, line 3: blank concept name",
               "remove the row or fill it in")


def test_concept_holding_the_placeholder(tmp_path):
    path = tmp_path / "concepts.txt"
    path.write_text("dog\nUS $ bill\n")
    _one_error(ConfigError, lambda: load_vocabulary(path), f"{path}, line 2: concept 'US $ bill' contains '$'",
               "rename or remove it")


def test_templates_without_the_concept_slot(tmp_path):
    path = tmp_path / "templates.txt"
    path.write_text("a photo of a {}\na photo of a thing\n")
    _one_error(ConfigError, lambda: load_templates(path), f"{path}: every template needs exactly one '{{}}'",
               "'a photo of a thing'", "PALAVRA templates")


def test_prompt_without_the_placeholder(micro_backbone):
    from searle_lib.text_encoding import encode_with_pseudo
    _one_error(ValueError, lambda: encode_with_pseudo(micro_backbone, ["a photo of $ that is red", "a red dog"],
                                                      torch.zeros(2, micro_backbone.token_dim)),
               "prompt 1 of the batch has no placeholder token", "write ' $ ' where the pseudo-word goes")


# ------------------------------------------------------------------------------------------------------ phrases
def test_phrases_pkl_carrying_code_is_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "concept_to_phrases.pkl"
    path.write_bytes(pickle.dumps({"dog": ["a photo of dog that runs", _Evil(marker)]}))
    _one_error(UnsafePickleError, lambda: load_phrases(path), f"{path}: refusing to unpickle",
               "system", "do not open it with pickle.load")
    assert not marker.exists()


def test_truncated_phrases_pkl(tmp_path):
    path = tmp_path / "concept_to_phrases.pkl"
    path.write_bytes(pickle.dumps({"dog": ["a photo of dog that runs"] * 50})[:-40])
    _one_error(pickle.UnpicklingError, lambda: load_phrases(path), f"{path}: not a readable pickle",
               "may be truncated")


def test_phrases_pkl_of_the_wrong_shape(tmp_path):
    path = tmp_path / "concept_to_phrases.pkl"
    path.write_bytes(pickle.dumps({"dog": "a photo of dog that runs"}))
    _one_error(PhrasesError, lambda: load_phrases(path), f"{path}: expected a dict str -> list[str]",
               "entry 'dog' holds str")


def test_phrase_jsonl_from_other_settings(tmp_path):
    path = generate_phrases(["dog", "cat"], PhrasesConfig(generator="offline", num_phrases=3), tmp_path / "p.jsonl",
                            seed=1, progress=False)
    _one_error(PhrasesError, lambda: generate_phrases(["dog", "cat"], PhrasesConfig(generator="offline",
                                                                                   num_phrases=4),
                                                      path, seed=1, progress=False),
               f"{path} was written with other phrase settings", "num_phrases: file has 3, now 4",
               f"delete {path} or choose another output path")


def test_phrase_file_missing_concepts(tmp_path):
    path = generate_phrases(["dog"], PhrasesConfig(generator="offline", num_phrases=3), tmp_path / "p.jsonl",
                            progress=False)
    cfg = PhrasesConfig(generator="offline", path=str(path))
    _one_error(PhrasesError, lambda: prepare_phrases(["dog", "cat"], cfg, tmp_path / "unused.jsonl"),
               f"{path} has no phrases for 1 concept(s), e.g. ['cat']", "use a file made for this vocabulary")


def test_phrase_prompt_without_the_concept_slot(tmp_path):
    cfg = PhrasesConfig(generator="offline", prompt="a photo of that")
    _one_error(PhrasesError, lambda: generate_phrases(["dog"], cfg, tmp_path / "p.jsonl", progress=False),
               "phrases.prompt='a photo of that' needs exactly one '{}'", "official: 'a photo of {} that'")
    assert not (tmp_path / "p.jsonl").exists()


def test_unknown_phrase_generator(tmp_path):
    _one_error(PhrasesError, lambda: generate_phrases(["dog"], PhrasesConfig(generator="gpt5"), tmp_path / "p.jsonl",
                                                      progress=False),
               "unknown phrases.generator 'gpt5'", "valid generators: hf, offline, none")


# ------------------------------------------------------------------------------------------------------- config
def test_unknown_preset_key():
    _one_error(ConfigError, lambda: load_config("tiny", {"oti.step": 10}), "unknown override key 'oti.step'",
               "Valid keys:", "oti.steps")


def test_unknown_preset_name():
    _one_error(ConfigError, lambda: load_config("paper-vitb16"), "unknown preset 'paper-vitb16'",
               "available presets: ", "paper-vitb32")


def test_wrong_typed_papermill_parameter():
    # papermill -p passes what the command line says: "-p oti__steps '100'" arrives as a string
    _one_error(ConfigError, lambda: load_config("tiny", oti__steps="100"),
               "override oti.steps: expected an integer, got '100' (str)")


def test_preset_file_that_is_not_yaml(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("oti:\n  steps: [10\n")
    _one_error(ConfigError, lambda: load_config(str(path)), f"preset file {path} is not valid YAML")


# -------------------------------------------------------------------------------------------------- submissions
def _circo_test(root: Path):
    sp = load_split("circo", root, "test")
    return sp, {q.query_id: list(sp.gallery.ids) for q in sp.queries}


def test_duplicate_ids_in_a_submission(roots):
    sp, sub = _circo_test(roots["circo"])
    sub["1"][3] = sub["1"][0]
    _one_error(SubmissionError, lambda: validate_circo_submission(sub, sp), "CIRCO submission is not valid",
               f"query 1: duplicate ids ['{sub['1'][0]}']")


def test_circo_submission_missing_ids(roots):
    sp, sub = _circo_test(roots["circo"])
    del sub["2"]
    _one_error(SubmissionError, lambda: validate_circo_submission(sub, sp), "1 query id(s) missing, e.g. ['2']")


def test_cirr_submission_holding_the_reference(roots):
    sp = load_split("cirr", roots["cirr"], "test")
    sub = {"version": "rc2", "metric": "recall"}
    sub.update({q.query_id: [g for g in sp.gallery.ids if g != q.reference_id] for q in sp.queries})
    q = sp.queries[0]
    sub[q.query_id][-1] = q.reference_id
    _one_error(SubmissionError, lambda: validate_cirr_submission(sub, sp, "recall"),
               f"query {q.query_id}: holds its reference image '{q.reference_id}', which must be excluded")


# ------------------------------------------------------------------------------------------- results to resume
def test_oti_chunks_of_another_config(micro_backbone, tmp_path):
    ids, feats = ["a", "b"], torch.randn(2, micro_backbone.feature_dim)
    run = lambda h: run_oti(micro_backbone, ids, feats, None, None, TEMPLATES, OTIConfig(steps=1),  # noqa: E731
                            out_dir=tmp_path, config_hash=h, progress=False)
    run("h1")
    _one_error(ResumeMismatchError, lambda: run("h2"), f"{tmp_path / 'chunks'} holds oti results of another run",
               "config_hash", "--force-restart")


def test_phi_checkpoint_of_another_run(micro_backbone, tmp_path):
    b = micro_backbone
    feats, targets = torch.randn(8, b.feature_dim), torch.randn(8, b.token_dim)
    train_phi(b, feats, targets, None, None, PhiConfig(batch_size=4, epochs=1), out_dir=tmp_path, progress=False)
    _one_error(ResumeMismatchError, lambda: train_phi(b, feats, targets, None, None,
                                                      PhiConfig(batch_size=4, epochs=1, lr=1.0), out_dir=tmp_path,
                                                      progress=False),
               f"{tmp_path / 'checkpoints' / 'phi_last.pt'} belongs to another phi run (differs in: config)",
               "--force-restart")


def test_cli_reports_a_bad_input_as_one_line(tmp_path, capsys):
    from searle_lib.cli import main
    assert main(["eval", "--preset", "tiny", "--dataset", "cirr", "--root", str(tmp_path / "CIRR"), "--split",
                 "val", "--method", "image", "--set", "model.name=test-micro-vit", "--set", "data.unlabeled=imagenet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("searle eval: error: cirr: dataset root") and "Traceback" not in err


# ----------------------------------------------------------------------------------------- safe loading audit
LOADERS = {
    "pickle.load": "official pickles go through safe_pickle.safe_load_pickle",
    "pickle.loads": "official pickles go through safe_pickle.safe_loads",
    "torch.load": "torch.load must pass weights_only=True",
    "yaml.load": "YAML is read with yaml.safe_load",
    "yaml.unsafe_load": "YAML is read with yaml.safe_load",
    "eval": "no eval on data",
    "exec": "no exec on data",
    "marshal.loads": "no marshal",
    "numpy.load": "np.load must not allow pickles",
}


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else \
                f"{f.value.id}.{f.attr}" if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else None
            if name:
                yield name.replace("np.", "numpy."), node


def test_library_loads_no_code_from_data_files():
    """Every pickle/torch/YAML load and any eval/exec in searle_lib, found by parsing the source."""
    bad = []
    for path in sorted((REPO / "searle_lib").rglob("*.py")):
        for name, node in _calls(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            kw = {k.arg: k.value for k in node.keywords}
            if name == "torch.load":
                ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
            elif name == "numpy.load":
                ok = "allow_pickle" not in kw or (isinstance(kw["allow_pickle"], ast.Constant)
                                                   and kw["allow_pickle"].value is False)
            elif name in ("pickle.load", "pickle.loads"):
                ok = path.name == "safe_pickle.py"  # only the restricted unpickler itself
            elif name in LOADERS:
                ok = False
            else:
                continue
            if not ok:
                bad.append(f"{where}: {name} ({LOADERS[name]})")
    assert not bad, "\n".join(bad)


def test_phi_resume_checkpoint_loads_with_weights_only(micro_backbone, tmp_path):
    b = micro_backbone
    train_phi(b, torch.randn(8, b.feature_dim), torch.randn(8, b.token_dim), None, None,
              PhiConfig(batch_size=4, epochs=1), out_dir=tmp_path, progress=False)
    ck = torch.load(tmp_path / "checkpoints" / "phi_last.pt", weights_only=True)
    assert {"Phi", "optimizer", "rng", "config", "data"} <= set(ck)
    marker = tmp_path / "pwned"  # a resume checkpoint someone slipped code into is refused, not run
    ck["history"] = [_Evil(marker)]
    torch.save(ck, tmp_path / "checkpoints" / "phi_last.pt")
    _one_error(ConfigError, lambda: train_phi(b, torch.randn(8, b.feature_dim), torch.randn(8, b.token_dim), None,
                                              None, PhiConfig(batch_size=4, epochs=1), out_dir=tmp_path,
                                              progress=False),
               "phi_last.pt cannot be read as a phi resume checkpoint", "--force-restart")
    assert not marker.exists()


# ------------------------------------------------------------------------------------------ the catalogue page
def test_every_catalogued_input_has_its_test_here():
    page = (REPO / "book" / "bad_inputs.md").read_text()
    rows = [line for line in page.splitlines() if re.match(r"\|\s*\d+\s*\|", line)]
    names = [re.findall(r"`(test_\w+)`", row) for row in rows]
    assert len(rows) >= 25 and all(len(n) == 1 for n in names), "each row names exactly one test"
    here = {n for n in globals() if n.startswith("test_")}
    missing = sorted({n[0] for n in names} - here)
    assert not missing, f"catalogued without a test in tests/test_bad_inputs.py: {missing}"
    assert [int(r.split("|")[1]) for r in rows] == list(range(1, len(rows) + 1))
