"""Tiny-CLIP weights shipped with the repository, so a fresh machine need not retrain them.

SEARLE starts from a pretrained CLIP that everyone downloads; the embedded world's tiny CLIPs cannot be downloaded,
and retraining both on 2 CPU cores takes about 25 minutes of the main job. So the repository ships the weights that
``pretrain.pretrain_clip`` wrote, under the same key (architecture, world config, pretraining config, seed, version),
together with the training record. They are used only when everything they depend on matches:

- the key: any change to the model, the world's config or the pretraining config gives another key, and the CLIP
  is trained as before;
- the world's pixels: a digest of the pretraining images' PNG bytes on this machine must equal the one recorded
  (a different image library could render the world differently);
- the bytes: only the token-embedding rows that training changed are stored (the captions use 62 of 49,408 rows;
  the others keep their initial values), which makes the file a quarter of the size. The other rows come from the
  same seeded initialisation on this machine, and the rebuilt checkpoint must have the SHA-256 of the file that
  training wrote, or it is not used.

A mismatch is logged and the CLIP is retrained. ``searle world --set pretrain.shipped=false`` (or deleting the
cached checkpoint and ``weights/``) retrains from scratch; ``scripts/ship_weights.py`` writes a new shipped copy.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import torch

from .backbones import create_backbone
from .chunkstore import atomic_write_text, tmp_path
from .config import StudyConfig
from .datasets.embedded import load_pretrain_pairs

__all__ = ["WEIGHTS_DIR", "SHIPPED_MODELS", "images_digest", "file_digest", "ship", "restore"]

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
SHIPPED_MODELS = ("test-world-vit", "test-world-rn")  # the embedded preset's CLIP; the backbone chapter's second
_ROWS = "token_embedding.rows"
_EMBED = "token_embedding.weight"


def images_digest(world_root: str | Path) -> str:
    """SHA-256 over the pretraining split's PNG files (names and bytes, in the loader's order)."""
    h = hashlib.sha256()
    for p in load_pretrain_pairs(Path(world_root)).paths:
        h.update(p.name.encode())
        h.update(Path(p).read_bytes())
    return h.hexdigest()


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _initial_embedding(cfg: StudyConfig) -> torch.Tensor:
    """The token embedding as ``pretrain_clip`` initialises it (same seed, same construction)."""
    torch.manual_seed(cfg.run.seed)
    model_cfg = dataclasses.replace(cfg.model, pretrained=None, checkpoint=None)
    return create_backbone(model_cfg, "cpu").model.token_embedding.weight.detach().clone()


def _paths(stem: str, weights_dir: Path) -> tuple[Path, Path]:
    return weights_dir / f"{stem}.safetensors", weights_dir / f"{stem}.json"


def ship(cfg: StudyConfig, ckpt: str | Path, weights_dir: str | Path | None = None) -> Path:
    """Write the compact copy of checkpoint ``ckpt`` (trained by ``pretrain_clip`` for ``cfg``) to
    ``weights_dir``; returns the record's path."""
    from safetensors.torch import load_file, save_file
    ckpt, weights_dir = Path(ckpt), Path(weights_dir or WEIGHTS_DIR)
    meta = json.loads(ckpt.with_suffix(".json").read_text())
    state = load_file(str(ckpt))
    embed = state.pop(_EMBED)
    rows = torch.nonzero((embed != _initial_embedding(cfg)).any(1)).flatten()
    state[_ROWS], state[_EMBED] = rows, embed[rows].contiguous()
    out, record = _paths(ckpt.stem, weights_dir)
    weights_dir.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out))
    meta["shipped"] = {"checkpoint_sha256": file_digest(ckpt), "rows_stored": int(rows.numel()),
                       "pretrain_images_sha256": images_digest(cfg.world.root)}
    record.write_text(json.dumps(meta, indent=1) + "\n")
    return record


def restore(cfg: StudyConfig, ckpt: Path, world_root: str | Path, log: Callable[[str], None],
            weights_dir: str | Path | None = None) -> dict[str, Any] | None:
    """Rebuild the shipped copy of checkpoint ``ckpt`` (its file name carries the key) at ``ckpt``, with its
    record beside it, when every check passes; returns the record, or None (after logging why) when the CLIP must
    be trained instead."""
    from safetensors.torch import load_file, save_file
    src, record_path = _paths(ckpt.stem, Path(weights_dir or WEIGHTS_DIR))
    if not (src.is_file() and record_path.is_file()):
        return None
    meta = json.loads(record_path.read_text())
    checks = meta.get("shipped", {})
    if images_digest(world_root) != checks.get("pretrain_images_sha256"):
        log(f"{record_path}: this machine rendered other pretraining images than the shipped CLIP saw; "
            "training instead")
        return None
    state = load_file(str(src))
    embed = _initial_embedding(cfg)
    embed[state.pop(_ROWS)] = state.pop(_EMBED)
    state[_EMBED] = embed
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(ckpt)
    save_file(state, str(tmp))
    if file_digest(tmp) != checks.get("checkpoint_sha256"):
        tmp.unlink()
        log(f"{record_path}: the rebuilt checkpoint differs from the trained one (another torch initialises "
            "differently); training instead")
        return None
    tmp.replace(ckpt)
    meta["source"] = str(src)
    atomic_write_text(ckpt.with_suffix(".json"), json.dumps(meta, indent=1))
    log(f"using the shipped {src.name} (trained in {meta['seconds']['train']:.0f} s on "
        f"{meta.get('torch_threads', '?')} threads; pretrain.shipped=false retrains)")
    return meta
