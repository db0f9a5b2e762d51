"""Pretraining the tiny CLIP: exact truncated text encoding, the loss goes down, the checkpoint cache."""
from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch

from searle_lib.backbones import create_backbone
from searle_lib.config import load_config
from searle_lib.pretrain import checkpoint_paths, encode_text, pretrain_clip, pretrain_key
from searle_lib.world.quality import clip_quality


def tiny_cfg(tmp_path, **overrides):
    """The tiny preset on ``test-micro-vit`` (32 px), a small 32 px world, checkpoints under ``tmp_path``."""
    base = {"model.name": "test-micro-vit", "world.root": str(tmp_path / "world"), "world.image_size": 32,
            "world.n_pretrain": 512, "world.n_unlabeled": 8, "world.n_val_queries": 4, "world.n_test_queries": 40,
            "world.n_heldout_queries": 4, "world.n_distractors": 20, "world.workers": 1,
            "pretrain.epochs": 6, "pretrain.batch_size": 32, "pretrain.warmup_steps": 10, "pretrain.lr": 3e-3,
            "pretrain.out_dir": str(tmp_path / "ckpt")}
    base.update(overrides)
    return load_config("tiny", base)


def test_truncated_text_encoding_is_exact(micro_backbone):
    texts = ["a photo of a red circle", "a rendering of a small blue square in the top left and a large green star",
             "x"]
    tokens = micro_backbone.tokenize(texts)
    with torch.no_grad():
        full = micro_backbone.model.encode_text(tokens)
        short = encode_text(micro_backbone.model, tokens)
    torch.testing.assert_close(short, full, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pretrain")
    cfg = tiny_cfg(tmp)
    ckpt = pretrain_clip(cfg, progress=False)
    return tmp, cfg, ckpt


def test_pretraining_lowers_the_loss(trained):
    _, cfg, ckpt = trained
    meta = json.loads(ckpt.with_suffix(".json").read_text())
    assert meta["key"] == pretrain_key(cfg) and meta["pairs"] == 512
    assert meta["steps"] == 6 * (512 // 32)
    # the same fixed batch, before and after: the loss must fall clearly, not by noise
    fixed = meta["fixed_batch_loss"]
    assert fixed["after"] < fixed["before"] - 0.3, fixed
    assert meta["loss_last"] < meta["loss_first"], meta["loss_curve"]


def test_checkpoint_loads_and_differs_from_init(trained):
    _, cfg, ckpt = trained
    torch.manual_seed(cfg.run.seed)
    init = create_backbone(dataclasses.replace(cfg.model, checkpoint=None), "cpu")
    bb = create_backbone(dataclasses.replace(cfg.model, checkpoint=str(ckpt)), "cpu")
    w0, w1 = init.model.state_dict(), bb.model.state_dict()
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)


def test_cache_is_reused_and_invalidated(trained):
    tmp, cfg, ckpt = trained
    mtime = os.path.getmtime(ckpt)
    assert pretrain_clip(cfg, progress=False) == ckpt and os.path.getmtime(ckpt) == mtime  # reused, not retrained
    # the cache key follows the pretraining config, the world, the architecture and the seed, nothing else
    same = tiny_cfg(tmp, **{"pretrain.eval_size": 7, "world.workers": 2, "world.root": str(tmp / "elsewhere")})
    assert checkpoint_paths(same)[0] == ckpt
    for change in ({"pretrain.lr": 1e-3}, {"world.seed": 1}, {"run.seed": 1}, {"model.name": "test-tiny-vit"},
                   {"world.n_pretrain": 256}):
        assert checkpoint_paths(tiny_cfg(tmp, **change))[0] != ckpt, change
    # a changed config trains a new checkpoint beside the old one
    other = tiny_cfg(tmp, **{"pretrain.epochs": 1})
    new = pretrain_clip(other, progress=False)
    assert new != ckpt and new.is_file() and ckpt.is_file()
    # a record that does not match (e.g. edited by hand) forces retraining
    meta = ckpt.with_suffix(".json")
    record = json.loads(meta.read_text())
    meta.write_text(json.dumps({**record, "key": "stale"}))
    assert pretrain_clip(cfg, progress=False) == ckpt
    assert os.path.getmtime(ckpt) > mtime and json.loads(meta.read_text())["key"] == pretrain_key(cfg)


def test_quality_report(trained):
    tmp, cfg, ckpt = trained
    bb = create_backbone(dataclasses.replace(cfg.model, checkpoint=str(ckpt)), "cpu")
    q = clip_quality(bb, cfg.world.root, domain="flat", split="test", n=50)
    assert q["n_images"] > 20 and q["domain"] == "flat"
    for key in ("image_to_caption_at_1", "caption_to_image_at_5", "probe_colour", "probe_shape", "probe_size",
                "probe_position", "probe_count"):
        assert 0.0 <= q[key] <= 1.0
    assert q["image_to_caption_at_5"] >= q["image_to_caption_at_1"]
    assert 0.1 < q["chance_colour"] < 0.2 and q["chance_size"] == 0.5
