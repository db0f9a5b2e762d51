"""Which captions are true of which images, as tensors: ``captions.holds`` vectorised for a pretraining batch.

A scene is encoded as up to three object slots of (shape, colour, size, cell) indices (-9 pads empty slots) plus
its object count and domain; a caption meaning likewise, with -1 for an attribute the caption does not state and a
count of -1 for "no caption". A caption holds for a scene when the counts agree, the domain agrees (or is not
stated) and some permutation of the scene's slots matches every stated attribute.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence

import torch

from .captions import Meaning
from .scenes import Scene
from .vocab import COLOURS, MAX_OBJECTS, SHAPES, SIZES

_PERMS = torch.tensor(list(itertools.permutations(range(MAX_OBJECTS))))  # [6, 3]
_PAD, _ANY = -9, -1


@dataclass
class Encoded:
    slots: torch.Tensor  # [N, 3, 4] long
    count: torch.Tensor  # [N] long (-1: matches nothing)
    domain: torch.Tensor  # [N] long (-1: any domain, for captions)

    def __getitem__(self, idx) -> "Encoded":
        return Encoded(self.slots[idx], self.count[idx], self.domain[idx])


def _obj(shape: str, colour: str, size: str | None, cell: int | None) -> list[int]:
    return [SHAPES.index(shape), COLOURS.index(colour), _ANY if size is None else SIZES.index(size),
            _ANY if cell is None else int(cell)]


def encode_scenes(scenes: Sequence[Scene], domains: Sequence[str], domain_names: Sequence[str]) -> Encoded:
    slots = torch.full((len(scenes), MAX_OBJECTS, 4), _PAD, dtype=torch.long)
    for i, s in enumerate(scenes):
        for j, o in enumerate(s):
            slots[i, j] = torch.tensor(_obj(o.shape, o.colour, o.size, o.cell))
    return Encoded(slots, torch.tensor([len(s) for s in scenes]),
                   torch.tensor([list(domain_names).index(d) for d in domains]))


def encode_meanings(meanings: Sequence[Meaning | None], domain_names: Sequence[str]) -> Encoded:
    slots = torch.full((len(meanings), MAX_OBJECTS, 4), _PAD, dtype=torch.long)
    count = torch.full((len(meanings),), -1, dtype=torch.long)
    domain = torch.full((len(meanings),), _ANY, dtype=torch.long)
    for i, m in enumerate(meanings):
        if m is None:
            continue
        for j, o in enumerate(m.objects):
            slots[i, j] = torch.tensor(_obj(*o))
        count[i] = len(m.objects)
        if m.domain is not None:
            domain[i] = list(domain_names).index(m.domain) if m.domain in domain_names else -2
    return Encoded(slots, count, domain)


def truth(scenes: Encoded, captions: Encoded) -> torch.Tensor:
    """[N_scenes, N_captions] bool: caption j is true of image i."""
    s = scenes.slots[:, _PERMS]  # [N, 6, 3, 4]
    c = captions.slots
    ok = (c[None, :, None] == _ANY) | (c[None, :, None] == s[:, None])  # [N, M, 6, 3, 4]
    present = torch.arange(MAX_OBJECTS)[None, :] < captions.count[:, None]  # [M, 3]
    slot_ok = ok.all(-1) | ~present[None, :, None, :]
    match = slot_ok.all(-1).any(-1)  # [N, M]
    same_count = scenes.count[:, None] == captions.count[None, :]
    same_domain = (captions.domain[None, :] == _ANY) | (captions.domain[None, :] == scenes.domain[:, None])
    return match & same_count & same_domain
