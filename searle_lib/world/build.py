"""Build the embedded world on disk: scenes, captions, queries with exact ground truth, rendered images.

``build_world(cfg.world, root)`` plans every split from ``cfg.seed`` (pure Python, fast), renders all images in
parallel (each image from its own seed, so the bytes do not depend on the number of workers), writes the JSON files
of ``layout.py`` and finally ``manifest.json`` holding the config hash. A later call with the same config and world
version returns at once; with another config it deletes the folder (only if it is a world folder) and rebuilds.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..config import WorldConfig
from . import layout
from .captions import captions
from .queries import near_misses, sample_query
from .render import check_domains, render_jobs
from .scenes import Scene, one_edit, parse_pairs, sample_scene

WORLD_VERSION = 2  # bump when rendering, captions or query generation change: old worlds are rebuilt
_UNHASHED = ("root", "workers")  # config fields that do not change the world's content


def world_hash(cfg: WorldConfig) -> str:
    """Content hash of the world: every config field that changes a byte, plus ``WORLD_VERSION``."""
    d = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _UNHASHED}
    d["version"] = WORLD_VERSION
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def image_seed(seed: int, image_id: str) -> int:
    """The render seed of one image: stable across runs, processes and platforms."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{image_id}".encode()).digest()[:8], "little")


class _Images:
    """Allocates image ids within one (domain, split) and remembers their scenes."""

    def __init__(self, domain: str, split: str):
        self.prefix, self.scenes = f"{domain}-{split}-", {}

    def add(self, scene: Scene) -> str:
        image_id = f"{self.prefix}{len(self.scenes):06d}"
        self.scenes[image_id] = scene
        return image_id


def _plan_query_split(cfg: WorldConfig, domain: str, split: str, n_queries: int,
                      heldout: set[tuple[str, str]]) -> tuple[dict, dict[str, Scene]]:
    rng = random.Random(f"{cfg.seed}/{domain}/{split}")
    forbidden = set() if split == "heldout" else heldout
    images, queries = _Images(domain, split), []

    def reference(r: random.Random, n: int) -> Scene:
        return sample_scene(r, n, forbidden)

    for qi in range(n_queries):
        q = sample_query(rng, reference, forbidden)
        while split == "heldout" and not ((q.reference.pairs() | q.target.pairs()) & heldout):
            q = sample_query(rng, reference, forbidden)
        ref_id = images.add(q.reference)
        target_ids = [images.add(q.target) for _ in range(cfg.gt_per_query)]
        group = [ref_id, target_ids[0], images.add(q.reference)]
        group += [images.add(s) for s in near_misses(rng, q, cfg.group_size - 3, forbidden)]
        rng.shuffle(group)  # the order of a group must not give its target away
        queries.append({"query_id": f"{domain}-{split}-q{qi:05d}", "kind": q.kind, "attribute": q.attribute,
                        "caption": q.caption, "reference": ref_id, "target": target_ids[0], "gt": [],
                        "group": group, "reference_scene": q.reference.to_json(),
                        "target_scene": q.target.to_json()})
    for _ in range(cfg.n_distractors):
        images.add(sample_scene(rng, None, forbidden))
    # Ground truth by exact scene equality over the whole gallery, not by construction.
    by_scene: dict[Scene, list[str]] = defaultdict(list)
    for image_id, scene in images.scenes.items():
        by_scene[scene].append(image_id)
    for q in queries:
        q["gt"] = sorted(by_scene[Scene.from_json(q["target_scene"])])
        in_group = [i for i in q["group"] if i in set(q["gt"])]
        assert in_group == [q["target"]], f"group of {q['query_id']} holds positives {in_group}"
    return {"queries": queries, "gallery": sorted(images.scenes)}, images.scenes


FAMILY_PREFER = ""  # edit that family variants favour ("" = uniform over the edits of scenes.one_edit)


def _family(rng: random.Random, size: int, forbidden: set[tuple[str, str]]) -> list[Scene]:
    """A random scene and up to ``size - 1`` distinct variants one edit away from it (hard negatives for each other
    when they share a pretraining batch)."""
    base = sample_scene(rng, None, forbidden)
    members = [base]
    for _ in range(20 * size):
        if len(members) >= size:
            break
        v = one_edit(rng, base, forbidden, FAMILY_PREFER)
        if v is not None and v not in members:
            members.append(v)
    return members


def plan_world(cfg: WorldConfig) -> dict[str, Any]:
    """Everything but the pixels: per domain the scenes of all images, pretraining captions, unlabeled ids and
    query splits. Deterministic from ``cfg.seed``."""
    check_domains(cfg.domains)
    if cfg.group_size < 4:
        raise ValueError(f"world.group_size={cfg.group_size}: needs >= 4 (reference, target, re-rendered "
                         "reference and at least one near miss)")
    heldout = parse_pairs(cfg.heldout_pairs)
    n_dom = len(cfg.domains)
    plan: dict[str, Any] = {}
    for di, domain in enumerate(cfg.domains):
        scenes: dict[str, Scene] = {}
        rng = random.Random(f"{cfg.seed}/{domain}/pretrain")
        pre = _Images(domain, "pretrain")
        pretrain: list[dict] = []
        n_here = cfg.n_pretrain // n_dom + (1 if di < cfg.n_pretrain % n_dom else 0)
        family = 0
        while len(pretrain) < n_here:
            for s in _family(rng, cfg.family_size, heldout)[:n_here - len(pretrain)]:
                caps, negs = captions(s, rng, cfg.captions_per_image, domain, heldout)
                pretrain.append({"image": pre.add(s), "family": family, "captions": [c.text for c in caps],
                                 "meanings": [c.meaning.to_json() for c in caps],
                                 "negatives": [n.text if n else "" for n in negs],
                                 "negative_meanings": [n.meaning.to_json() if n else None for n in negs]})
            family += 1
        scenes.update(pre.scenes)
        rng = random.Random(f"{cfg.seed}/{domain}/unlabeled")
        unl = _Images(domain, "unlabeled")
        unlabeled = [unl.add(sample_scene(rng, None, heldout)) for _ in range(cfg.n_unlabeled)]
        scenes.update(unl.scenes)
        splits = {}
        for split, n in (("val", cfg.n_val_queries), ("test", cfg.n_test_queries),
                         ("heldout", cfg.n_heldout_queries)):
            splits[split], split_scenes = _plan_query_split(cfg, domain, split, n, heldout)
            scenes.update(split_scenes)
        plan[domain] = {"scenes": scenes, "pretrain": pretrain, "unlabeled": unlabeled, "splits": splits}
    return plan


def read_manifest(root: str | Path) -> dict[str, Any] | None:
    path = Path(root) / layout.MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, separators=(",", ":")))


def build_world(cfg: WorldConfig, root: str | Path | None = None, force: bool = False) -> dict[str, Any]:
    """Write the world to ``root`` (default ``cfg.root``) unless a world with the same hash is already there.

    Returns:
        The manifest (a dict; ``manifest["built"]`` is False when the existing world was reused).
    """
    root = Path(root if root is not None else cfg.root)
    h = world_hash(cfg)
    old = read_manifest(root)
    if old is not None and old.get("config_hash") == h and not force:
        return {**old, "built": False}
    if root.exists() and any(root.iterdir()) and old is None:
        raise FileExistsError(f"{root} is not empty and holds no embedded world (no {layout.MANIFEST}); "
                              "refusing to overwrite it. Choose another world.root or empty the folder.")
    t0 = time.time()
    plan = plan_world(cfg)
    t_plan = time.time() - t0
    tmp = root.with_name(root.name + ".building")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    jobs = []
    for domain, p in plan.items():
        d = tmp / domain
        (d / "images").mkdir(parents=True)
        _write_json(d / "scenes.json", {k: s.to_json() for k, s in sorted(p["scenes"].items())})
        with open(d / "pretrain.jsonl", "w") as f:
            for item in p["pretrain"]:
                f.write(json.dumps(item) + "\n")
        _write_json(d / "unlabeled.json", p["unlabeled"])
        for split, data in p["splits"].items():
            _write_json(d / f"{split}.json", data)
        jobs += [(str(layout.image_path(tmp, domain, k)), s.to_json(), domain, cfg.image_size,
                  image_seed(cfg.seed, k)) for k, s in sorted(p["scenes"].items())]
    t1 = time.time()
    render_jobs(jobs, cfg.workers, desc="world images")
    t_render = time.time() - t1
    (tmp / "README.md").write_text(layout.README)
    manifest = {
        "version": WORLD_VERSION, "config_hash": h,
        "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _UNHASHED},
        "domains": list(cfg.domains), "heldout_pairs": list(cfg.heldout_pairs), "image_size": cfg.image_size,
        "counts": {d: {"images": len(p["scenes"]), "pretrain": len(p["pretrain"]),
                       "unlabeled": len(p["unlabeled"]),
                       **{f"{s}_queries": len(v["queries"]) for s, v in p["splits"].items()},
                       **{f"{s}_gallery": len(v["gallery"]) for s, v in p["splits"].items()}}
                   for d, p in plan.items()},
        "seconds": {"plan": round(t_plan, 2), "render": round(t_render, 2),
                    "total": round(time.time() - t0, 2)},
        "workers": cfg.workers,
    }
    _write_json(tmp / layout.MANIFEST, manifest)
    if root.exists():  # an old world (checked above): replace it
        shutil.rmtree(root)
    tmp.rename(root)
    return {**manifest, "built": True}
