"""OTI (SEARLE section 3.1): loss goes down, EMA follows its rule, fast == reference, resume, official layout."""
import pytest
import torch

from searle_lib.chunkstore import ResumeMismatchError
from searle_lib.config import OTIConfig
from searle_lib.oti import (export_official_oti, image_generator, invert_batch, load_oti, load_official_oti,
                            phrase_pool, plan_image, replace_concept, run_oti)

TEMPLATES = ["a photo of a {}", "{}", "a sketch of a {}", "We see a {} in this image"]
PHRASES = {"red circle": ["a photo of red circle that is big", "a photo of red circle that shines"],
           "blue square": ["a photo of blue square that is small", "a photo of blue square that sits"]}
IDS = [f"img{i}" for i in range(6)]
CONCEPTS = {i: ["red circle", " blue square", "red circle", "unknown thing"] for i in IDS}


@pytest.fixture(scope="module")
def feats(micro_backbone):
    return torch.randn(len(IDS), micro_backbone.feature_dim, generator=torch.Generator().manual_seed(1))


def test_replace_concept_first_vs_all():
    assert replace_concept("a cat that sees a cat", "cat") == "a  $  that sees a cat"
    assert replace_concept("a cat that sees a cat", "cat", "all") == "a  $  that sees a  $ "


def test_phrase_pool_keeps_usable_concepts_in_order():
    pool = phrase_pool(["blue square", "nope", "red circle"], PHRASES)
    assert [c for _, c in pool] == ["blue square"] * 2 + ["red circle"] * 2


def test_per_image_stream_is_reproducible_and_distinct():
    a = torch.randn(3, generator=image_generator(42, "x"))
    assert torch.equal(a, torch.randn(3, generator=image_generator(42, "x")))
    assert not torch.equal(a, torch.randn(3, generator=image_generator(42, "y")))


def test_loss_decreases_and_ema_follows_rule(micro_backbone, feats):
    b = micro_backbone
    cfg = OTIConfig(steps=1, lambda_gpt=0.0)
    plans = [plan_image(i, 0, b.token_dim, len(TEMPLATES), [], OTIConfig(steps=60)) for i in IDS[:2]]
    # EMA rule after one step: ema = 0.99 * v0 + 0.01 * v1
    out = invert_batch(b, feats[:2], plans, TEMPLATES, cfg)
    v0 = torch.stack([p.init for p in plans])
    torch.testing.assert_close(out["ema_tokens"], 0.99 * v0 + 0.01 * out["tokens"])
    # the cosine loss with a fixed template goes down over the steps
    fixed = [plan_image(i, 0, b.token_dim, 1, [], OTIConfig(steps=60)) for i in IDS[:2]]
    first = invert_batch(b, feats[:2], fixed, TEMPLATES[:1], OTIConfig(steps=1, lambda_gpt=0.0))["loss"]
    later = invert_batch(b, feats[:2], fixed, TEMPLATES[:1], OTIConfig(steps=60, lambda_gpt=0.0))["loss"]
    assert (later < first - 0.05).all(), (first, later)


def test_fast_equals_reference_and_is_batch_size_invariant(micro_backbone, feats):
    b = micro_backbone
    runs = {}
    for mode, bs in [("fast", 6), ("reference", 3), ("fast", 2)]:
        cfg = OTIConfig(steps=12, batch_size=bs, mode=mode)
        runs[(mode, bs)] = run_oti(b, IDS, feats, CONCEPTS, PHRASES, TEMPLATES, cfg, seed=3, progress=False)
    ref = runs[("reference", 3)].ema_tokens
    for key in [("fast", 6), ("fast", 2)]:
        torch.testing.assert_close(runs[key].ema_tokens, ref, rtol=0, atol=1e-5)
    assert not torch.equal(ref[0], ref[1])  # images really got different tokens


def test_chunked_run_resumes_and_refuses_other_config(micro_backbone, feats, tmp_path):
    b = micro_backbone
    cfg = OTIConfig(steps=5, batch_size=2, chunk_images=2)
    full = run_oti(b, IDS, feats, CONCEPTS, PHRASES, TEMPLATES, cfg, progress=False)
    out = tmp_path / "oti"
    run_oti(b, IDS[:4], feats[:4], CONCEPTS, PHRASES, TEMPLATES, cfg, out_dir=out / "a", config_hash="h",
            progress=False)
    # pretend the run died after chunk 0: delete chunk 1 and rerun on the same images
    (out / "a" / "chunks" / "chunk_00001.safetensors").unlink()
    resumed = run_oti(b, IDS[:4], feats[:4], CONCEPTS, PHRASES, TEMPLATES, cfg, out_dir=out / "a",
                      config_hash="h", progress=False)
    assert torch.equal(resumed.ema_tokens, full.ema_tokens[:4])  # bit for bit: nothing depends on the history
    with pytest.raises(ResumeMismatchError, match="force-restart"):
        run_oti(b, IDS[:4], feats[:4], CONCEPTS, PHRASES, TEMPLATES, cfg, out_dir=out / "a",
                config_hash="other", progress=False)
    loaded = load_oti(out / "a" / "oti_tokens.safetensors")
    assert loaded.ids == IDS[:4] and torch.equal(loaded.ema_tokens, resumed.ema_tokens)


def test_official_layout_round_trip(micro_backbone, feats, tmp_path):
    cfg = OTIConfig(steps=2, batch_size=6)
    res = run_oti(micro_backbone, IDS, feats, None, None, TEMPLATES, cfg, progress=False)
    folder = export_official_oti(res, tmp_path / "official")
    assert {p.name for p in folder.iterdir()} == {"image_names.pkl", "oti_pseudo_tokens.pt",
                                                   "ema_oti_pseudo_tokens.pt"}
    back = load_official_oti(folder)
    assert back.ids == IDS and torch.equal(back.ema_tokens, res.ema_tokens)


def test_missing_concepts_for_an_image_is_a_clear_error(micro_backbone, feats):
    with pytest.raises(KeyError, match="concept file belongs to other images"):
        run_oti(micro_backbone, IDS, feats, {}, PHRASES, TEMPLATES, OTIConfig(steps=1), progress=False)
