"""Resumable, atomic per-chunk result files with a manifest (issue 7: a killed run loses at most one chunk).

A long per-image job (OTI, concept association, feature extraction) splits its image list into fixed chunks.
Each finished chunk is written to ``chunk_<k>.safetensors`` through a temporary file and ``os.replace``, so a
chunk file on disk is always complete. ``manifest.json`` records what the results belong to (a config hash and a
hash of the exact image list); a restarted job reuses finished chunks only when both match, and otherwise stops
with an error that says how to start over. Each chunk also carries its image ids and the config hash, so a chunk
copied in from another run is refused, and a damaged chunk file (never written by us: writes are atomic) is
recomputed with a warning instead of being trusted. Chunks can be shared across ``torch.distributed`` ranks
(chunk k goes to rank k mod world size) and merge to the same files as a single process.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import ConfigError


class ResumeMismatchError(ConfigError, RuntimeError):
    """Existing results in a folder belong to another config or image list (a ``ConfigError``, so the CLI reports
    it as one line; still a ``RuntimeError`` for older callers)."""


def list_hash(ids: Sequence[str]) -> str:
    h = hashlib.sha256()
    for i in ids:
        h.update(i.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def fsync_file(path: Path) -> None:
    """Flush ``path`` to disk before it is renamed into place (a power cut then leaves the old file or the new)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tmp_path(path: Path) -> Path:
    """A per-process name to write ``path`` under before renaming it into place: two processes writing the same
    file at once (two runs sharing a cache) never rename each other's half-written file."""
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Write ``path`` all at once: yields the temporary name (``tmp_path``) to write; when the block ends without
    an error the file is flushed to disk and renamed into place, so a reader, or a run killed midway, sees the old
    file or the new, never half of one. On an error the temporary file is removed (a killed process leaves it;
    nothing reads ``*.tmp``)."""
    path = Path(path)
    tmp = tmp_path(path)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    except Exception:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def save_tensors_atomic(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    with atomic_output(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def dist_info() -> tuple[int, int]:
    """(rank, world size) of the current ``torch.distributed`` group, or (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


@dataclass
class ChunkStore:
    """Chunked results for ``ids`` under ``folder``; see the module docstring."""

    folder: Path
    ids: tuple[str, ...]
    chunk_size: int
    config_hash: str
    kind: str

    @classmethod
    def open(cls, folder: str | Path, ids: Sequence[str], chunk_size: int, config_hash: str, kind: str,
             force_restart: bool = False) -> "ChunkStore":
        folder = Path(folder)
        store = cls(folder, tuple(ids), int(chunk_size), config_hash, kind)
        rank, _ = dist_info()
        manifest = folder / "manifest.json"
        expected = store.manifest()
        if rank == 0:
            if force_restart and folder.exists():
                shutil.rmtree(folder)
            folder.mkdir(parents=True, exist_ok=True)
            if manifest.is_file():
                found = json.loads(manifest.read_text())
                diff = [k for k in expected if found.get(k) != expected[k]]
                if diff:
                    raise ResumeMismatchError(
                        f"{folder} holds {found.get('kind')} results of another run (differs in: {', '.join(diff)}). "
                        "Nothing was changed. Use another output folder, or pass force_restart=True "
                        "(CLI: --force-restart) to delete them and start over.")
            else:
                atomic_write_text(manifest, json.dumps(expected, indent=1))
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
        return store

    def manifest(self) -> dict:
        return {"kind": self.kind, "config_hash": self.config_hash, "images_hash": list_hash(self.ids),
                "n_images": len(self.ids), "chunk_size": self.chunk_size}

    @property
    def n_chunks(self) -> int:
        return (len(self.ids) + self.chunk_size - 1) // self.chunk_size

    def chunk_path(self, k: int) -> Path:
        return self.folder / f"chunk_{k:05d}.safetensors"

    def chunk_ids(self, k: int) -> tuple[str, ...]:
        return self.ids[k * self.chunk_size:(k + 1) * self.chunk_size]

    def done(self, k: int) -> bool:
        """Chunk ``k`` is on disk and belongs to this run; a damaged file is deleted (and so recomputed)."""
        path = self.chunk_path(k)
        if not path.is_file():
            return False
        try:
            self.meta(k)
        except ResumeMismatchError:
            raise
        except Exception as e:  # unreadable header: not a file we wrote completely
            warnings.warn(f"{path} is damaged ({type(e).__name__}: {e}); it is deleted and recomputed", stacklevel=2)
            path.unlink(missing_ok=True)
            return False
        return True

    def meta(self, k: int) -> dict:
        """Metadata of chunk ``k`` (its ids checked against the manifest, and the config hash if recorded)."""
        path = self.chunk_path(k)
        with safe_open(str(path), "pt") as f:
            raw = dict(f.metadata() or {})
        meta = json.loads(raw["chunk"]) if "chunk" in raw else {"ids": json.loads(raw["ids"])}
        if meta["ids"] != list(self.chunk_ids(k)) or meta.get("config_hash", self.config_hash) != self.config_hash:
            raise ResumeMismatchError(f"{path} holds results of other images or another config than "
                                      f"{self.folder / 'manifest.json'} says (copied in from another run?). "
                                      "Delete the folder or use --force-restart")
        return meta

    def pending(self) -> Iterator[int]:
        """Chunks this rank still has to compute."""
        rank, world = dist_info()
        return (k for k in range(self.n_chunks) if k % world == rank and not self.done(k))

    def write(self, k: int, tensors: dict[str, torch.Tensor], meta: dict | None = None) -> None:
        """Write chunk ``k`` atomically; ``meta`` adds JSON metadata (e.g. a fingerprint of its input files).

        The metadata is one JSON string under the key ``chunk``: safetensors writes several metadata keys in a
        per-process hash order, and one key keeps the file byte-identical between runs."""
        ids = self.chunk_ids(k)
        for name, t in tensors.items():
            if t.shape[0] != len(ids):
                raise ValueError(f"chunk {k}: tensor {name} has {t.shape[0]} rows for {len(ids)} images")
        meta = {**(meta or {}), "ids": list(ids), "config_hash": self.config_hash}
        save_tensors_atomic(self.chunk_path(k), tensors, {"chunk": json.dumps(meta, sort_keys=True)})

    def read(self, k: int) -> dict[str, torch.Tensor]:
        self.meta(k)
        with safe_open(str(self.chunk_path(k)), "pt") as f:
            return {name: f.get_tensor(name) for name in f.keys()}

    def merge(self) -> dict[str, torch.Tensor]:
        """All chunks concatenated in image order (every chunk must be done)."""
        missing = [k for k in range(self.n_chunks) if not self.done(k)]
        if missing:
            raise RuntimeError(f"{self.folder}: chunks {missing[:5]} are not finished; rerun to complete them")
        parts = [self.read(k) for k in range(self.n_chunks)]
        return {name: torch.cat([p[name] for p in parts]) for name in parts[0]} if parts else {}
