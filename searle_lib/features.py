"""CLIP image features for an ``ImageSet``, encoded once and cached on disk (reference sections 6-7: SEARLE
pre-extracts raw image features once, batch 32, targetpad preprocessing, no augmentation).

The cache is a safetensors file plus a small JSON manifest, written atomically (features first, manifest last, so a
killed run leaves no entry that looks complete). An entry is used only when its key matches exactly:

- the backbone name and its weights: the open_clip tag, the sha256 of a weights file (memoised by path, size and
  mtime), or for random init the hash of the state dict itself (two random models never share features);
- the preprocessing (a stable description of ``backbone.preprocess``, or a key the caller passes) and image size;
- the exact image list: ids, paths, file sizes and modification times.

When the image list changes, the new entry replaces the stale one of the same image set and model.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .backbones import Backbone
from .datasets.base import ImageSet
from .images import ImageDataset, collate_images

CACHE_FORMAT = 1
_FILE_SHA: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, for this process


@dataclass
class FeatureSet:
    """Raw (unnormalised) float32 image features; row ``i`` belongs to ``ids[i]``; unreadable images in ``skipped``."""

    ids: list[str]
    features: torch.Tensor  # [N, d] float32, on the CPU
    skipped: list[str] = field(default_factory=list)
    from_cache: bool = False

    def __len__(self) -> int:
        return len(self.ids)

    def select(self, ids: Sequence[str]) -> torch.Tensor:
        """Rows for ``ids``, in that order (e.g. ``split.gallery.ids``); KeyError names ids without features."""
        index = {i: n for n, i in enumerate(self.ids)}
        absent = [i for i in ids if i not in index]
        if absent:
            why = " (skipped as unreadable)" if set(absent) & set(self.skipped) else ""
            raise KeyError(f"{len(absent)} id(s) have no features{why}: {absent[:5]}")
        return self.features[torch.tensor([index[i] for i in ids], dtype=torch.long)]

    def normalized(self) -> torch.Tensor:
        return torch.nn.functional.normalize(self.features, dim=-1)


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, memoised by (absolute path, size, mtime) so a large checkpoint is hashed once."""
    path = Path(path).absolute()
    st = path.stat()
    memo = (str(path), st.st_size, st.st_mtime_ns)
    if memo not in _FILE_SHA:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _FILE_SHA[memo] = h.hexdigest()
    return _FILE_SHA[memo]


def weights_fingerprint(backbone: Backbone) -> str:
    """``tag:<tag>``, ``file:<sha256>`` or, for random init, ``state:<sha256 of the state dict>``."""
    weights = backbone.pretrained
    if weights and Path(weights).is_file():
        return f"file:{file_sha256(weights)}"
    if weights:
        return f"tag:{weights}"
    h = hashlib.sha256()
    for name, tensor in backbone.model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return f"state:{h.hexdigest()}"


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def describe_preprocess(transform: Any) -> str:
    """A description of a (composed) transform that is stable across processes (no memory addresses)."""
    inner = getattr(transform, "transforms", None)
    if isinstance(inner, (list, tuple)):
        return f"{type(transform).__name__}(" + ", ".join(describe_preprocess(t) for t in inner) + ")"
    if isinstance(transform, functools.partial):
        return f"partial({describe_preprocess(transform.func)}, {transform.args!r}, {transform.keywords!r})"
    if inspect.isfunction(transform) or inspect.isbuiltin(transform):
        return f"{transform.__module__}.{transform.__qualname__}"
    text = repr(transform)
    if _ADDRESS.search(text) and hasattr(transform, "__dict__"):  # default object repr: describe its state
        state = ", ".join(f"{k}={v!r}" for k, v in sorted(vars(transform).items()))
        text = f"{type(transform).__module__}.{type(transform).__qualname__}({state})"
    return _ADDRESS.sub("", text)


def image_list_fingerprint(images: ImageSet) -> str:
    """sha256 over every (id, path, size, mtime); any added, removed, renamed or rewritten image changes it."""
    h = hashlib.sha256()
    for image_id, path in zip(images.ids, images.paths):
        try:
            st = os.stat(path)
            stamp = f"{st.st_size}\t{st.st_mtime_ns}"
        except OSError:
            stamp = "absent"
        h.update(f"{image_id}\t{Path(path).absolute()}\t{stamp}\n".encode())
    return h.hexdigest()


def cache_key(backbone: Backbone, images: ImageSet, preprocess_key: str | None = None) -> dict[str, Any]:
    """Everything a cached feature file depends on."""
    return {"format": CACHE_FORMAT, "backbone": backbone.name, "weights": weights_fingerprint(backbone),
            "preprocess": preprocess_key or describe_preprocess(backbone.preprocess),
            "image_size": backbone.image_size, "image_set": images.name, "n_images": len(images),
            "images": image_list_fingerprint(images)}


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "images"  # no dots: suffixes stay unambiguous


def _entry_paths(cache_dir: Path, key: dict[str, Any]) -> tuple[Path, str]:
    """Base path of the entry for ``key`` and the prefix shared by every entry of the same image set and model."""
    slot = {k: v for k, v in key.items() if k not in ("images", "n_images")}
    prefix = f"{_slug(key['image_set'])}-{_slug(key['backbone'])}-{_digest(slot)[:12]}-"
    return cache_dir / (prefix + _digest(key)[:16]), prefix


def _with(base: Path, suffix: str) -> Path:
    return base.parent / (base.name + suffix)


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _load_entry(base: Path, key: dict[str, Any]) -> FeatureSet | None:
    from safetensors.torch import load_file
    manifest_path, tensor_path = _with(base, ".json"), _with(base, ".safetensors")
    try:
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("key") != key:
            return None
        features = load_file(str(tensor_path))["features"]
    except Exception:  # absent, partial or foreign files (any reader error): the cache is only a shortcut, recompute
        return None
    ids = manifest.get("ids", [])
    if features.ndim != 2 or features.shape[0] != len(ids):
        return None
    return FeatureSet(list(ids), features.float(), list(manifest.get("skipped", [])), from_cache=True)


def _save_entry(base: Path, prefix: str, key: dict[str, Any], fs: FeatureSet, seconds: float) -> None:
    from safetensors.torch import save_file
    base.parent.mkdir(parents=True, exist_ok=True)
    manifest = {"key": key, "ids": fs.ids, "skipped": fs.skipped, "feature_dim": int(fs.features.shape[1]),
                "seconds": round(seconds, 3), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    _atomic_write(_with(base, ".safetensors"),
                  lambda p: save_file({"features": fs.features.contiguous()}, str(p)))
    _atomic_write(_with(base, ".json"), lambda p: p.write_text(json.dumps(manifest)))
    for old in base.parent.glob(prefix + "*"):  # stale entries of this image set and model
        if old.stem != base.name and old.suffix in (".json", ".safetensors"):
            old.unlink(missing_ok=True)


@torch.no_grad()
def _encode(backbone: Backbone, images: ImageSet, batch_size: int, num_workers: int, skip_bad: bool,
            progress: bool) -> FeatureSet:
    loader = DataLoader(ImageDataset(images, backbone.preprocess, skip_bad=skip_bad), batch_size=batch_size,
                        shuffle=False, num_workers=num_workers, collate_fn=collate_images,
                        pin_memory=backbone.device.type == "cuda")
    features = torch.zeros(len(images), backbone.feature_dim, dtype=torch.float32)
    done = torch.zeros(len(images), dtype=torch.bool)
    for index, batch in tqdm(loader, desc=f"encoding {images.name or 'images'}", unit="batch", disable=not progress):
        if index.numel():
            features[index] = backbone.encode_image(batch).float().cpu()
            done[index] = True
    keep = done.nonzero().flatten()
    skipped = [images.ids[i] for i in (~done).nonzero().flatten().tolist()]
    if skipped:
        warnings.warn(f"{len(skipped)} of {len(images)} images of {images.name or 'the set'} could not be read "
                      f"and were skipped (first: {skipped[:3]})", stacklevel=3)
    return FeatureSet([images.ids[i] for i in keep.tolist()], features[keep], skipped)


def extract_features(backbone: Backbone, images: ImageSet, *, batch_size: int = 32,
                     cache_dir: str | Path | None = None, num_workers: int = 0, skip_bad: bool = False,
                     progress: bool = True, preprocess_key: str | None = None) -> FeatureSet:
    """Raw CLIP image features of ``images`` (float32, unnormalised, in ``images.ids`` order minus skipped ones).

    Args:
        backbone: the frozen CLIP; its ``preprocess`` is applied to every image.
        images: the images to encode.
        batch_size: images per forward pass (official: 32).
        cache_dir: folder for the on-disk cache; None disables caching.
        num_workers: data-loader processes decoding images.
        skip_bad: skip unreadable images and list them in ``skipped`` (unlabeled sets, as the official loader);
            False raises ``ImageError`` on the first one (benchmark galleries must be complete).
        progress: show a tqdm bar.
        preprocess_key: identifies the preprocessing in the cache key when ``backbone.preprocess`` is not
            describable stably (e.g. a lambda); by default it is derived from the transform itself.

    Returns:
        A ``FeatureSet``; ``from_cache`` says whether it was read from ``cache_dir``.
    """
    if len(images) == 0:
        raise ValueError(f"image set {images.name!r} is empty: nothing to encode")
    if cache_dir is None:
        return _encode(backbone, images, batch_size, num_workers, skip_bad, progress)
    key = cache_key(backbone, images, preprocess_key)
    base, prefix = _entry_paths(Path(cache_dir), key)
    cached = _load_entry(base, key)
    # an entry that skipped images is valid only for callers who accept skipping; others must see the error
    if cached is not None and (skip_bad or not cached.skipped):
        return cached
    start = time.perf_counter()
    fs = _encode(backbone, images, batch_size, num_workers, skip_bad, progress)
    _save_entry(base, prefix, key, fs, time.perf_counter() - start)
    return fs
