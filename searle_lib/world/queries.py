"""Composed queries of the embedded world: a reference scene, a relative caption, and the exact target scene.

Three kinds, each with several phrasings (several of which read naturally after SEARLE's "a photo of $ that"):

- ``change`` one attribute of one object: its colour, shape, size or position ("make the red circle blue");
- ``add`` an object, fully described ("add a small green star in the top right");
- ``remove`` an object ("remove the blue square").

The relative caption names the edited object by the shortest unique description (colour and shape, then size, then
position), and an added object by all four attributes, so the target scene is fully determined by the reference and
the caption. Near misses are scenes one edit away from the target (plus, for ``remove``, the wrong object removed):
hard negatives for the Recall_subset group, as CIRR's image sets.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from .captions import describe
from .scenes import Obj, Scene, one_edit, random_object
from .vocab import COLOURS, MAX_OBJECTS, N_CELLS, POSITIONS, SHAPES, SIZES

KINDS: tuple[str, ...] = ("change", "add", "remove")
KIND_WEIGHTS: tuple[float, ...] = (0.4, 0.3, 0.3)
CHANGE_ATTRIBUTES: tuple[str, ...] = ("colour", "shape", "size", "position")
CHANGE_WEIGHTS: tuple[float, ...] = (0.45, 0.25, 0.15, 0.15)


@dataclass(frozen=True)
class QuerySpec:
    kind: str  # change | add | remove
    attribute: str  # changed attribute (colour | shape | size | position), "" for add / remove
    reference: Scene
    target: Scene
    caption: str  # the relative caption


def refer(scene: Scene, o: Obj) -> str:
    """The shortest unique definite description of ``o`` in ``scene``: 'the red circle', 'the small red circle',
    or 'the red circle in the top left'."""
    others = [p for p in scene if p != o]
    if not any(p.colour == o.colour and p.shape == o.shape for p in others):
        return describe(o, size=False, position=False, article="the")
    if not any(p.colour == o.colour and p.shape == o.shape and p.size == o.size for p in others):
        return describe(o, size=True, position=False, article="the")
    return describe(o, size=False, position=True, article="the")


def _change(rng: random.Random, ref: Scene, forbidden: set) -> QuerySpec | None:
    o = rng.choice(list(ref))
    e = refer(ref, o)
    attr = rng.choices(CHANGE_ATTRIBUTES, weights=CHANGE_WEIGHTS)[0]
    if attr == "colour":
        options = [c for c in COLOURS if c != o.colour and (o.shape, c) not in forbidden]
        if not options:
            return None
        new = o._replace(colour=rng.choice(options))
        c = new.colour
        caption = rng.choice((f"make {e} {c}", f"change {e} to {c}", f"turn {e} {c}",
                              f"has a {c} {o.shape} instead of {e}", f"has {e} in {c}"))
    elif attr == "shape":
        options = [s for s in SHAPES if s != o.shape and (s, o.colour) not in forbidden]
        if not options:
            return None
        new = o._replace(shape=rng.choice(options))
        s = new.shape
        caption = rng.choice((f"make {e} a {s}", f"replace {e} with a {o.colour} {s}",
                              f"has a {o.colour} {s} instead of {e}", f"turn {e} into a {s}",
                              f"change {e} into a {s}"))
    elif attr == "size":
        new = o._replace(size=[z for z in SIZES if z != o.size][0])
        z = new.size
        caption = rng.choice((f"make {e} {z}", f"has a {z} {o.colour} {o.shape} instead of {e}",
                              f"change {e} to {z}", f"has {e} {z}"))
    else:
        free = ref.free_cells()
        if not free:
            return None
        new = o._replace(cell=rng.choice(free))
        p = POSITIONS[new.cell]
        caption = rng.choice((f"move {e} to the {p}", f"has {e} in the {p} instead", f"put {e} in the {p}",
                              f"has {e} moved to the {p}"))
    return QuerySpec("change", attr, ref, ref.replace(o, new), caption)


def _add(rng: random.Random, ref: Scene, forbidden: set) -> QuerySpec | None:
    free = ref.free_cells()
    if len(ref) >= MAX_OBJECTS or not free:
        return None
    new = random_object(rng, rng.choice(free), forbidden)
    d = describe(new)
    extra = f"an extra {new.size} {new.colour} {new.shape} in the {POSITIONS[new.cell]}"
    caption = rng.choice((f"add {d}", f"also has {d}", f"put {d}", f"has {d} too", f"has {extra}"))
    return QuerySpec("add", "", ref, ref.with_(new), caption)


def _remove(rng: random.Random, ref: Scene, forbidden: set) -> QuerySpec | None:
    if len(ref) < 2:
        return None
    o = rng.choice(list(ref))
    e = refer(ref, o)
    caption = rng.choice((f"remove {e}", f"no longer has {e}", f"is without {e}", f"take away {e}",
                          f"has {e} removed"))
    return QuerySpec("remove", "", ref, ref.without(o), caption)


_MAKERS = {"change": _change, "add": _add, "remove": _remove}


def make_query(rng: random.Random, reference: Scene, kind: str,
               forbidden: set[tuple[str, str]] = frozenset()) -> QuerySpec | None:
    """A query of ``kind`` on ``reference`` whose target avoids ``forbidden`` pairs; None if ``kind`` cannot apply."""
    if kind not in _MAKERS:
        raise ValueError(f"unknown query kind {kind!r}; expected one of {KINDS}")
    return _MAKERS[kind](rng, reference, forbidden)


def near_misses(rng: random.Random, q: QuerySpec, n: int,
                forbidden: set[tuple[str, str]] = frozenset()) -> list[Scene]:
    """``n`` distinct scenes close to the target, none equal to the target or the reference."""
    prefer = q.attribute or q.kind
    out: list[Scene] = []
    if q.kind == "remove" and len(q.reference) > 1:
        # the classic mistake: the wrong object removed
        removed = [o for o in q.reference if o not in q.target]
        wrong = [q.reference.without(o) for o in q.reference if o not in removed]
        rng.shuffle(wrong)
        out += wrong[:1]
    for _ in range(50 * n):
        if len(out) >= n:
            break
        s = one_edit(rng, q.target, forbidden, prefer)
        if s is not None and s != q.target and s != q.reference and s not in out:
            out.append(s)
    if len(out) < n:
        raise RuntimeError(f"could not find {n} near misses for {q}")
    return out[:n]


def sample_query(rng: random.Random, sample_reference, forbidden: set[tuple[str, str]] = frozenset()) -> QuerySpec:
    """Draw a kind, then a reference (``sample_reference(rng, n_objects)``) that suits it, then the query."""
    while True:
        kind = rng.choices(KINDS, weights=KIND_WEIGHTS)[0]
        n = rng.choice({"change": (1, 2, 3), "add": (1, 2), "remove": (2, 3)}[kind])
        q = make_query(rng, sample_reference(rng, n), kind, forbidden)
        if q is not None:
            return q


assert N_CELLS >= MAX_OBJECTS + 1  # an add query always has a free cell


def paraphrase(reference: Scene, target: Scene, kind: str, caption: str, seed: int = 0,
               tries: int = 2000) -> str | None:
    """Another relative caption for the same edit (``reference`` -> ``target``), drawn from the same phrasings
    (rejection sampling; deterministic from ``seed``), or None when no other phrasing turns up. Gives the world's
    queries a second caption, as FashionIQ's two annotators, for the caption-joining audit."""
    rng = random.Random(seed)
    for _ in range(tries):
        q = make_query(rng, reference, kind)
        if q is not None and q.target == target and q.caption != caption:
            return q.caption
    return None
