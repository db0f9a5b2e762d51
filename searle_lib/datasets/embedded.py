"""Loaders for the embedded world (``searle_lib.world``), behind the same interface as the real benchmarks.

``load_split("embedded", root, split, domain=...)`` gives a ``CIRSplit`` for ``val``, ``test`` or ``heldout``:
every query's positives are all gallery images of the target scene (mAP@K, as CIRCO), its ``target_id`` the
designated one (Recall@K, as CIRR) and its ``group_ids`` the near-miss group (Recall_subset@K, as CIRR's img_set).
The reference image is in the gallery and never a positive, so ``exclude_reference=True``. ``groups`` holds the
query ids of each kind (change / add / remove). ``load_unlabeled("embedded", root, domain=...)`` gives the
unlabeled images (the ImageNet analogue). The file layout is documented in ``searle_lib/world/layout.py``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..world import layout
from ..world.captions import Meaning
from ..world.queries import paraphrase
from ..world.scenes import Scene
from .base import CIRQuery, CIRSplit, DatasetError, ImageSet, register_dataset, register_unlabeled

DEFAULT_ROOT = "data/embedded"  # WorldConfig.root's default, used when root is None


def _root(root: str | Path | None) -> Path:
    return Path(root if root is not None else DEFAULT_ROOT)


def read_world_manifest(root: str | Path | None) -> dict[str, Any]:
    """The world's manifest; a clear error when the folder holds no (complete) world."""
    path = _root(root) / layout.MANIFEST
    if not path.is_file():
        raise DatasetError(f"no embedded world at {_root(root)} ({path} is missing). Build it first: "
                           "searle_lib.world.build_world(cfg.world, root), or set data.root / world.root.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path} is not valid JSON ({e}); rebuild the world with build_world(..., force=True)")


def _domain(root: str | Path | None, domain: str | None) -> tuple[Path, str]:
    manifest = read_world_manifest(root)
    domain = domain or manifest["domains"][0]
    if domain not in manifest["domains"]:
        raise DatasetError(f"the embedded world at {_root(root)} has no domain {domain!r}; it has "
                           f"{', '.join(manifest['domains'])} (world.domains)")
    return _root(root), domain


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise DatasetError(f"{path} is missing from the embedded world; rebuild it with build_world(..., force=True)")
    return json.loads(path.read_text())


def load_scenes(root: str | Path | None, domain: str | None = None) -> dict[str, Scene]:
    """{image id: Scene} for every image of ``domain``."""
    root, domain = _domain(root, domain)
    return {k: Scene.from_json(v) for k, v in _read_json(root / domain / "scenes.json").items()}


@dataclass(frozen=True)
class PretrainPairs:
    """(image, captions) pairs for pretraining the tiny CLIP, with what each caption means (exact truth)."""

    ids: tuple[str, ...]
    paths: tuple[Path, ...]
    domains: tuple[str, ...]
    families: tuple[int, ...]  # images of one family: a scene and variants one edit away (unique over domains)
    captions: tuple[tuple[str, ...], ...]  # several captions per image
    meanings: tuple[tuple[Meaning, ...], ...]  # what each caption asserts
    negatives: tuple[tuple[str, ...], ...]  # captions[i][j]'s hard negative ("" when none)
    negative_meanings: tuple[tuple[Meaning | None, ...], ...]


def load_pretrain_pairs(root: str | Path | None, domains: tuple[str, ...] | None = None) -> PretrainPairs:
    """The pretraining split of the given domains (all of the world's domains when None), in file order."""
    manifest = read_world_manifest(root)
    cols: dict[str, list] = {k: [] for k in ("ids", "paths", "domains", "families", "captions", "meanings",
                                             "negatives", "negative_meanings")}
    offset = 0
    for domain in domains or manifest["domains"]:
        root_, domain = _domain(root, domain)
        path = root_ / domain / "pretrain.jsonl"
        if not path.is_file():
            raise DatasetError(f"{path} is missing from the embedded world; rebuild it")
        top = 0
        for line in path.read_text().splitlines():
            item = json.loads(line)
            cols["ids"].append(item["image"])
            cols["paths"].append(layout.image_path(root_, domain, item["image"]))
            cols["domains"].append(domain)
            cols["families"].append(offset + item["family"])
            top = max(top, item["family"] + 1)
            cols["captions"].append(tuple(item["captions"]))
            cols["meanings"].append(tuple(Meaning.from_json(m) for m in item["meanings"]))
            cols["negatives"].append(tuple(item["negatives"]))
            cols["negative_meanings"].append(tuple(Meaning.from_json(m) if m else None
                                                   for m in item["negative_meanings"]))
        offset += top
    return PretrainPairs(**{k: tuple(v) for k, v in cols.items()})


@register_dataset("embedded")
def load_embedded(root: str | Path | None, split: str, domain: str | None = None,
                  second_caption: bool = False) -> CIRSplit:
    """A query split (``val``, ``test`` or ``heldout``) of one visual domain (default: the world's first).

    ``second_caption``: give each query a second caption, another phrasing of the same edit
    (``world.queries.paraphrase``), as FashionIQ's two annotators; queries with no other phrasing are left out.
    """
    if split not in layout.QUERY_SPLITS:
        raise DatasetError(f"embedded split {split!r} does not exist; query splits are "
                           f"{', '.join(layout.QUERY_SPLITS)} (unlabeled images: load_unlabeled('embedded', ...))")
    root, domain = _domain(root, domain)
    data = _read_json(root / domain / f"{split}.json")
    gallery_ids = tuple(data["gallery"])
    gallery = ImageSet(gallery_ids, tuple(layout.image_path(root, domain, i) for i in gallery_ids),
                       name=f"embedded/{domain}/{split}")
    queries, groups = [], {}
    for k, q in enumerate(data["queries"]):
        captions = (q["caption"],)
        if second_caption:
            other = paraphrase(Scene.from_json(q["reference_scene"]), Scene.from_json(q["target_scene"]), q["kind"],
                               q["caption"], seed=k)
            if other is None:
                continue
            captions += (other,)
        queries.append(CIRQuery(query_id=q["query_id"], reference_id=q["reference"], captions=captions,
                                target_id=q["target"], gt_ids=tuple(q["gt"]), group_ids=tuple(q["group"]),
                                category=q["kind"]))
        groups.setdefault(q["kind"], []).append(q["query_id"])
    return CIRSplit(dataset="embedded", split=split, queries=tuple(queries), gallery=gallery, images=gallery,
                    exclude_reference=True, metrics=layout.METRICS, has_ground_truth=True, root=root,
                    groups={k: tuple(v) for k, v in sorted(groups.items())})


@register_unlabeled("embedded")
def load_embedded_unlabeled(root: str | Path | None, domain: str | None = None) -> ImageSet:
    """The unlabeled images of one domain (the ImageNet1K-test analogue for OTI and phi)."""
    root, domain = _domain(root, domain)
    ids = tuple(_read_json(root / domain / "unlabeled.json"))
    return ImageSet(ids, tuple(layout.image_path(root, domain, i) for i in ids), name=f"embedded/{domain}/unlabeled")
