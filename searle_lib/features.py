"""CLIP image features for an ``ImageSet``, encoded once and cached on disk (reference sections 6-7: SEARLE
pre-extracts raw image features once, batch 32, targetpad preprocessing, no augmentation).

The cache is a safetensors file plus a small JSON manifest, written atomically (features first, manifest last, so a
killed run leaves no entry that looks complete). An entry is used only when its key matches exactly:

- the backbone name and its weights: the open_clip tag, the sha256 of a weights file (memoised by path, size and
  mtime), or for random init the hash of the state dict itself (two random models never share features);
- the preprocessing (a stable description of ``backbone.preprocess``, or a key the caller passes) and image size;
- the exact image list: ids, paths, file sizes and modification times.

When the image list changes, the new entry replaces the stale one of the same image set and model.

Extraction itself resumes (issue 7): images are encoded in chunks of ``chunk_images`` (a multiple of the batch
size, so the batches are the same whether or not a run was interrupted), each written atomically to a
``<prefix>partial-<ids hash>/`` folder (``chunkstore``) with a fingerprint of its own image files. A killed run
redoes at most the chunk it was in; a chunk whose image files changed since is recomputed, the others are reused.
The partial folder is deleted once the complete entry is written. Under ``torch.distributed`` chunk k goes to
rank k mod world size and every rank returns the merged result.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import re
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from .backbones import Backbone
from .chunkstore import ChunkStore, atomic_write_text, dist_info, list_hash, save_tensors_atomic
from .datasets.base import ImageSet
from .images import ImageDataset, collate_images

CACHE_FORMAT = 1
CHUNK_IMAGES = 4096  # images per resumable chunk of an extraction (rounded up to a multiple of the batch size)
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
    base.parent.mkdir(parents=True, exist_ok=True)
    manifest = {"key": key, "ids": fs.ids, "skipped": fs.skipped, "feature_dim": int(fs.features.shape[1]),
                "seconds": round(seconds, 3), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    save_tensors_atomic(_with(base, ".safetensors"), {"features": fs.features})
    atomic_write_text(_with(base, ".json"), json.dumps(manifest))
    for old in base.parent.glob(prefix + "*"):  # stale entries of this image set and model
        if old.stem != base.name and old.suffix in (".json", ".safetensors"):
            old.unlink(missing_ok=True)


@torch.no_grad()
def _encode(backbone: Backbone, images: ImageSet, batch_size: int, num_workers: int, skip_bad: bool,
            progress: bool, store: ChunkStore | None = None, chunks: Sequence[int] | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Features ``[N, d]`` and a read-ok mask ``[N]`` of ``images`` (all of them, or only ``chunks`` of ``store``,
    each chunk written as soon as it is complete)."""
    n = len(images)
    positions = list(range(n)) if store is None else \
        [i for k in chunks for i in range(k * store.chunk_size, min((k + 1) * store.chunk_size, n))]
    loader = DataLoader(Subset(ImageDataset(images, backbone.preprocess, skip_bad=skip_bad), positions),
                        batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate_images,
                        pin_memory=backbone.device.type == "cuda")
    features = torch.zeros(n, backbone.feature_dim, dtype=torch.float32)
    done = torch.zeros(n, dtype=torch.bool)
    pending = list(chunks or [])
    seen = 0
    for index, batch in tqdm(loader, desc=f"encoding {images.name or 'images'}", unit="batch", disable=not progress):
        if index.numel():
            features[index] = backbone.encode_image(batch).float().cpu()
            done[index] = True
        seen = min(seen + batch_size, len(positions))  # batches are consecutive slices of ``positions``
        while store is not None and pending and (seen == len(positions) or positions[seen] >= (pending[0] + 1)
                                                 * store.chunk_size):
            k = pending.pop(0)
            rows = slice(k * store.chunk_size, min((k + 1) * store.chunk_size, n))
            store.write(k, {"features": features[rows], "ok": done[rows]},
                        {"files": image_list_fingerprint(_chunk(images, store, k)),
                         "skipped": int((~done[rows]).sum())})
    return features, done


def _feature_set(images: ImageSet, features: torch.Tensor, done: torch.Tensor) -> FeatureSet:
    keep = done.nonzero().flatten()
    skipped = [images.ids[i] for i in (~done).nonzero().flatten().tolist()]
    if skipped:
        warnings.warn(f"{len(skipped)} of {len(images)} images of {images.name or 'the set'} could not be read "
                      f"and were skipped (first: {skipped[:3]})", stacklevel=4)
    return FeatureSet([images.ids[i] for i in keep.tolist()], features[keep], skipped)


def _chunk(images: ImageSet, store: ChunkStore, k: int) -> ImageSet:
    rows = slice(k * store.chunk_size, (k + 1) * store.chunk_size)
    return ImageSet(images.ids[rows], images.paths[rows], images.name)


def _encode_resumable(backbone: Backbone, images: ImageSet, batch_size: int, num_workers: int, skip_bad: bool,
                      progress: bool, folder: Path, slot: str, chunk_images: int) -> FeatureSet:
    """``_encode`` through resumable chunks in ``folder`` (see the module docstring)."""
    size = -(-max(1, chunk_images) // batch_size) * batch_size
    store = ChunkStore.open(folder, images.ids, size, slot, "features")
    rank, world = dist_info()
    for k in range(rank, store.n_chunks, world):  # drop chunks whose image files changed, or that skipped an
        if store.done(k):                         # image a strict caller (skip_bad=False) must hear about
            meta = store.meta(k)
            if meta.get("files") != image_list_fingerprint(_chunk(images, store, k)) or \
                    (not skip_bad and meta.get("skipped") != 0):
                store.chunk_path(k).unlink()
    todo = list(store.pending())
    if todo:
        _encode(backbone, images, batch_size, num_workers, skip_bad, progress, store, todo)  # results go to chunks
    if world > 1:
        torch.distributed.barrier()
    merged = store.merge()
    return _feature_set(images, merged["features"], merged["ok"].bool())


def extract_features(backbone: Backbone, images: ImageSet, *, batch_size: int = 32,
                     cache_dir: str | Path | None = None, num_workers: int = 0, skip_bad: bool = False,
                     progress: bool = True, preprocess_key: str | None = None,
                     chunk_images: int = CHUNK_IMAGES) -> FeatureSet:
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
        chunk_images: with ``cache_dir``, images per resumable chunk (a killed run redoes at most one).

    Returns:
        A ``FeatureSet``; ``from_cache`` says whether it was read from ``cache_dir``.
    """
    if len(images) == 0:
        raise ValueError(f"image set {images.name!r} is empty: nothing to encode")
    if cache_dir is None:
        return _feature_set(images, *_encode(backbone, images, batch_size, num_workers, skip_bad, progress))
    key = cache_key(backbone, images, preprocess_key)
    base, prefix = _entry_paths(Path(cache_dir), key)
    cached = _load_entry(base, key)
    # an entry that skipped images is valid only for callers who accept skipping; others must see the error
    if cached is not None and (skip_bad or not cached.skipped):
        return cached
    start = time.perf_counter()
    slot = {k: v for k, v in key.items() if k not in ("images", "n_images")}
    partial = Path(cache_dir) / f"{prefix}partial-{list_hash(images.ids)}"
    fs = _encode_resumable(backbone, images, batch_size, num_workers, skip_bad, progress, partial, _digest(slot),
                           chunk_images)
    rank, world = dist_info()
    if world > 1:
        torch.distributed.barrier()  # every rank has merged before rank 0 removes the chunks
    if rank == 0:
        _save_entry(base, prefix, key, fs, time.perf_counter() - start)
        shutil.rmtree(partial, ignore_errors=True)
    return fs
