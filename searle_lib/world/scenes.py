"""Scene descriptions of the embedded world: what an image shows, exactly, independent of how it is rendered.

A scene is a set of 1-3 objects, each a (shape, colour, size, cell) with at most one object per cell of the 3x3
grid. **Two images match when their scenes are equal**: the same set of (shape, colour, size, cell) objects. Order
does not matter (``Scene`` keeps its objects sorted) and rendering jitter, texture, noise and the visual domain are
not part of the scene, so the test "same scene" is exact and can be checked from the stored JSON alone.
"""
from __future__ import annotations

import random
from typing import Iterable, NamedTuple

from .vocab import COLOURS, MAX_OBJECTS, N_CELLS, SHAPES, SIZES


class Obj(NamedTuple):
    shape: str
    colour: str
    size: str
    cell: int  # 0..8, 3 * row + column, row 0 at the top

    @property
    def pair(self) -> tuple[str, str]:
        """The (shape, colour) combination, the unit held out from pretraining."""
        return (self.shape, self.colour)


class Scene(tuple):
    """An immutable, canonically ordered tuple of ``Obj``; equal scenes compare and hash equal."""

    def __new__(cls, objects: Iterable[Obj]) -> "Scene":
        objs = sorted(Obj(*o) for o in objects)
        cells = [o.cell for o in objs]
        if len(set(cells)) != len(cells):
            raise ValueError(f"two objects share a cell: {objs}")
        for o in objs:
            if o.shape not in SHAPES or o.colour not in COLOURS or o.size not in SIZES or not 0 <= o.cell < N_CELLS:
                raise ValueError(f"invalid object {o}")
        return super().__new__(cls, objs)

    @property
    def cells(self) -> set[int]:
        return {o.cell for o in self}

    def free_cells(self) -> list[int]:
        return [c for c in range(N_CELLS) if c not in self.cells]

    def pairs(self) -> set[tuple[str, str]]:
        return {o.pair for o in self}

    def replace(self, old: Obj, new: Obj) -> "Scene":
        return Scene([new if o == old else o for o in self])

    def without(self, old: Obj) -> "Scene":
        return Scene([o for o in self if o != old])

    def with_(self, new: Obj) -> "Scene":
        return Scene(list(self) + [new])

    def to_json(self) -> list[list]:
        return [[o.shape, o.colour, o.size, o.cell] for o in self]

    @classmethod
    def from_json(cls, data: list[list]) -> "Scene":
        return cls(Obj(str(s), str(c), str(z), int(k)) for s, c, z, k in data)

    def __repr__(self) -> str:
        return "Scene(" + ", ".join(f"{o.size} {o.colour} {o.shape}@{o.cell}" for o in self) + ")"


def parse_pairs(pairs: Iterable[str]) -> set[tuple[str, str]]:
    """``"red star"`` strings (colour then shape) -> {(shape, colour)}; unknown words raise ``ValueError``."""
    out = set()
    for p in pairs:
        words = p.split()
        if len(words) != 2 or words[0] not in COLOURS or words[1] not in SHAPES:
            raise ValueError(f"held-out pair {p!r} must be '<colour> <shape>' with colour in {COLOURS} "
                             f"and shape in {SHAPES}")
        out.add((words[1], words[0]))
    return out


def random_object(rng: random.Random, cell: int, forbidden: set[tuple[str, str]] = frozenset()) -> Obj:
    """A uniformly drawn object in ``cell`` whose (shape, colour) is not in ``forbidden``."""
    while True:
        o = Obj(rng.choice(SHAPES), rng.choice(COLOURS), rng.choice(SIZES), cell)
        if o.pair not in forbidden:
            return o


def sample_scene(rng: random.Random, n_objects: int | None = None,
                 forbidden: set[tuple[str, str]] = frozenset(),
                 count_weights: tuple[float, ...] = (0.25, 0.4, 0.35)) -> Scene:
    """A random scene of ``n_objects`` (drawn with ``count_weights`` when None) avoiding ``forbidden`` pairs."""
    if n_objects is None:
        n_objects = rng.choices(range(1, MAX_OBJECTS + 1), weights=count_weights)[0]
    cells = rng.sample(range(N_CELLS), n_objects)
    return Scene(random_object(rng, c, forbidden) for c in cells)


def one_edit(rng: random.Random, scene: Scene, forbidden: set[tuple[str, str]] = frozenset(),
             prefer: str = "") -> Scene | None:
    """``scene`` with one random edit (an attribute of one object, a move, an addition or a removal)."""
    ops = ["colour", "shape", "size", "position", "add", "remove"]
    op = prefer if prefer and rng.random() < 0.5 else rng.choice(ops)
    o = rng.choice(list(scene))
    if op == "colour":
        new = o._replace(colour=rng.choice([c for c in COLOURS if c != o.colour]))
    elif op == "shape":
        new = o._replace(shape=rng.choice([s for s in SHAPES if s != o.shape]))
    elif op == "size":
        new = o._replace(size=[z for z in SIZES if z != o.size][0])
    elif op == "position":
        free = scene.free_cells()
        if not free:
            return None
        new = o._replace(cell=rng.choice(free))
    elif op == "add":
        free = scene.free_cells()
        if len(scene) >= MAX_OBJECTS or not free:
            return None
        return scene.with_(random_object(rng, rng.choice(free), forbidden))
    else:
        return scene.without(o) if len(scene) > 1 else None
    return None if new.pair in forbidden else scene.replace(o, new)
