"""What every dataset gives the rest of the library: composed queries, a gallery, and unlabeled image sets.

Each benchmark (FashionIQ, CIRR, CIRCO, the embedded world) is loaded into a ``CIRSplit``; each unlabeled set
(ImageNet1K test, the embedded world's unlabeled split) into an ``ImageSet``. Loaders are registered by name with
``@register_dataset`` / ``@register_unlabeled`` and looked up with ``load_split`` / ``load_unlabeled``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


class DatasetError(FileNotFoundError):
    """A dataset folder, file or record that is missing or malformed; the message names it, the layout and the fix."""


@dataclass(frozen=True)
class ImageSet:
    """Named images on disk. ``ids[i]`` is stored at ``paths[i]``; ids are the names SEARLE's files use."""

    ids: tuple[str, ...]
    paths: tuple[Path, ...]
    name: str = ""  # e.g. "imagenet/test", "embedded/unlabeled"

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.paths):
            raise ValueError("ImageSet ids and paths differ in length")

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, ids: list[str] | tuple[str, ...]) -> "ImageSet":
        index = {i: p for i, p in zip(self.ids, self.paths)}
        return ImageSet(tuple(ids), tuple(index[i] for i in ids), self.name)


@dataclass(frozen=True)
class CIRQuery:
    """One composed query: a reference image and relative caption(s), with whatever ground truth the split has."""

    query_id: str  # CIRR pairid, CIRCO id, FashionIQ "<category>-<index>", embedded query id
    reference_id: str
    captions: tuple[str, ...]  # one caption (CIRR, CIRCO, embedded) or two (FashionIQ)
    target_id: str | None = None  # the designated target (None on test splits without GT)
    gt_ids: tuple[str, ...] = ()  # every correct gallery image (CIRCO, embedded); () means (target_id,)
    group_ids: tuple[str, ...] = ()  # CIRR img_set members / embedded near-miss group, for Recall_subset
    category: str = ""  # FashionIQ category; embedded query kind; "" otherwise

    @property
    def positives(self) -> tuple[str, ...]:
        if self.gt_ids:
            return self.gt_ids
        return (self.target_id,) if self.target_id is not None else ()


@dataclass(frozen=True)
class CIRSplit:
    """A composed-retrieval split: queries, the gallery they rank, and the protocol to score them."""

    dataset: str  # "fashioniq" | "cirr" | "circo" | "embedded"
    split: str  # "val" | "test" | "test1" | ...
    queries: tuple[CIRQuery, ...]
    gallery: ImageSet  # the images ranked
    images: ImageSet  # every image a query refers to (references too); a superset of the gallery
    exclude_reference: bool = False  # remove the reference from each ranking (CIRR protocol)
    metrics: tuple[str, ...] = ()  # metric keys to report, e.g. ("recall_at_10", "map_at_5", "recall_subset_at_1")
    has_ground_truth: bool = True
    root: Path | None = None  # dataset root, for provenance
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)  # query subsets reported separately


_DATASETS: dict[str, Callable[..., CIRSplit]] = {}
_UNLABELED: dict[str, Callable[..., ImageSet]] = {}


def register_dataset(name: str) -> Callable:
    def deco(fn: Callable[..., CIRSplit]) -> Callable[..., CIRSplit]:
        _DATASETS[name] = fn
        return fn
    return deco


def register_unlabeled(name: str) -> Callable:
    def deco(fn: Callable[..., ImageSet]) -> Callable[..., ImageSet]:
        _UNLABELED[name] = fn
        return fn
    return deco


def list_datasets() -> list[str]:
    return sorted(_DATASETS)


def load_split(name: str, root: str | Path | None, split: str, **kw) -> CIRSplit:
    """Load ``split`` of benchmark ``name`` from ``root`` (loader keyword arguments pass through)."""
    if name not in _DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; available: {', '.join(list_datasets())}")
    return _DATASETS[name](root, split, **kw)


def load_unlabeled(name: str, root: str | Path | None, **kw) -> ImageSet:
    if name not in _UNLABELED:
        raise DatasetError(f"unknown unlabeled image set {name!r}; available: {', '.join(sorted(_UNLABELED))}")
    return _UNLABELED[name](root, **kw)
