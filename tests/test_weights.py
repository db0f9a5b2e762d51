"""Shipped tiny-CLIP weights: stored compactly, rebuilt bit for bit, used only when the world and bytes match."""
from __future__ import annotations

import json
import os

import pytest
from PIL import Image

from searle_lib import weights
from searle_lib.config import apply_overrides, load_config
from searle_lib.datasets.embedded import load_pretrain_pairs
from searle_lib.pretrain import checkpoint_paths, pretrain_clip
from test_pretrain import tiny_cfg


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("weights")
    cfg = tiny_cfg(tmp, **{"pretrain.epochs": 1})
    ckpt = pretrain_clip(cfg, progress=False)
    record = weights.ship(cfg, ckpt, tmp / "shipped")
    return tmp, cfg, ckpt, record


def test_ship_stores_only_the_trained_rows(shipped):
    _, _, ckpt, record = shipped
    meta = json.loads(record.read_text())
    assert 0 < meta["shipped"]["rows_stored"] < 1000  # of 49,408: the captions' tokens only
    assert record.with_suffix(".safetensors").stat().st_size < ckpt.stat().st_size / 2
    assert meta["shipped"]["checkpoint_sha256"] == weights.file_digest(ckpt)
    assert meta["key"] == json.loads(ckpt.with_suffix(".json").read_text())["key"]


def test_a_fresh_machine_rebuilds_the_same_bytes_without_training(shipped, monkeypatch):
    tmp, cfg, ckpt, record = shipped
    monkeypatch.setattr(weights, "WEIGHTS_DIR", record.parent)
    fresh = tiny_cfg(tmp, **{"pretrain.epochs": 1, "pretrain.out_dir": str(tmp / "fresh")})
    messages: list[str] = []
    new = pretrain_clip(fresh, progress=False, log=messages.append)
    assert new == checkpoint_paths(fresh)[0] and new.parent == tmp / "fresh"
    assert weights.file_digest(new) == weights.file_digest(ckpt)
    assert json.loads(new.with_suffix(".json").read_text())["source"].endswith(new.name)
    assert any("using the shipped" in m for m in messages), messages
    # pretrain.shipped=false trains instead (its record has no source)
    off = tiny_cfg(tmp, **{"pretrain.epochs": 1, "pretrain.out_dir": str(tmp / "off"), "pretrain.shipped": False})
    trained = pretrain_clip(off, progress=False)
    assert "source" not in json.loads(trained.with_suffix(".json").read_text())


def test_mismatches_are_refused_with_the_reason(shipped, tmp_path):
    tmp, cfg, ckpt, record = shipped
    target = tmp_path / ckpt.name
    messages: list[str] = []
    # bytes that do not rebuild the trained checkpoint (e.g. another torch's initialisation)
    meta = json.loads(record.read_text())
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / record.with_suffix(".safetensors").name).write_bytes(record.with_suffix(".safetensors").read_bytes())
    (bad / record.name).write_text(json.dumps({**meta, "shipped": {**meta["shipped"], "checkpoint_sha256": "0"}}))
    assert weights.restore(cfg, target, cfg.world.root, messages.append, bad) is None
    assert "rebuilt checkpoint differs" in messages[-1] and not target.exists() and not list(tmp_path.glob("*.tmp"))
    # a world rendered differently: one pretraining image changed
    png = load_pretrain_pairs(cfg.world.root).paths[0]
    original = png.read_bytes()
    try:
        Image.new("RGB", (32, 32)).save(png)
        assert weights.restore(cfg, target, cfg.world.root, messages.append, record.parent) is None
        assert "other pretraining images" in messages[-1] and str(record) in messages[-1]
    finally:
        png.write_bytes(original)
    assert weights.restore(cfg, target, cfg.world.root, messages.append, record.parent) is not None
    assert weights.file_digest(target) == weights.file_digest(ckpt)


def test_the_shipped_weights_match_the_embedded_preset():
    """Every file in weights/ belongs to the embedded preset's current config (else it is dead weight or stale)."""
    expected = {checkpoint_paths(apply_overrides(load_config("embedded"), {"model.name": n}))[0].stem
                for n in weights.SHIPPED_MODELS}
    present = {p.stem for p in weights.WEIGHTS_DIR.glob("*.json")}
    assert present == expected, "rerun: python scripts/ship_weights.py"
    for stem in present:
        assert (weights.WEIGHTS_DIR / f"{stem}.safetensors").is_file()
        assert os.path.getsize(weights.WEIGHTS_DIR / f"{stem}.safetensors") < 10_000_000
