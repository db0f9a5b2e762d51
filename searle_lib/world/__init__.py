"""The embedded world: procedural CSS-like scenes, captions, composed queries with exact ground truth, on disk.

Build it with ``build_world(cfg.world, root)``; load it with ``load_split("embedded", root, split, domain=...)``
and ``load_unlabeled("embedded", root, domain=...)`` (``searle_lib.datasets.embedded``).
"""
from .build import WORLD_VERSION, build_world, plan_world, read_manifest, world_hash
from .captions import caption, captions, full_caption
from .queries import KINDS, QuerySpec, make_query, near_misses
from .render import DOMAINS, render_scene
from .scenes import Obj, Scene, parse_pairs, sample_scene
from .vocab import COLOURS, CONTINUATIONS, POSITIONS, SHAPES, SIZES, TEMPLATES, concepts

__all__ = ["WORLD_VERSION", "build_world", "plan_world", "read_manifest", "world_hash", "caption", "captions",
           "full_caption", "KINDS", "QuerySpec", "make_query", "near_misses", "DOMAINS", "render_scene", "Obj",
           "Scene", "parse_pairs", "sample_scene", "COLOURS", "CONTINUATIONS", "POSITIONS", "SHAPES", "SIZES",
           "TEMPLATES", "concepts"]
