"""Pretraining captions written from a scene, in several phrasings (the embedded world's "alt text").

Captions describe one image only; no caption relates two scenes, so no composed-query triplet or relative caption
ever reaches pretraining (SEARLE stays zero-shot). Because SEARLE retrieves with "a photo of $ that {relative
caption}", some phrasings have that shape ("a photo of a red circle that has a small blue square in the top left"),
so that the tiny CLIP's text encoder knows the construction. Phrasings:

- lists, with and without sizes and positions, behind prefixes such as "a photo of" or "a rendering of";
- counts ("three shapes: ...");
- "a photo of <object> that <is in the ...| has <other objects> | is the only shape>";
- true negations ("... and no stars", "... with no blue shapes"), from attributes absent in the scene;
- the background of the visual domain ("... on a dark background").

Every caption lists all objects of its scene, each with its shape and colour and, depending on the phrasing, its
size and position. So each caption carries an exact *meaning* (``Meaning``: the partial objects it names, plus the
background domain when it names one), and ``holds(meaning, scene, domain)`` says exactly which images it is true
of. Pretraining uses this to treat a caption as a positive of every image in the batch it describes.

Each stored caption also comes with a hard negative: the same phrasing of a scene one edit away (another colour,
shape, size or position of one object, or one object more or less). It is a caption of a *different* image, never
a relative caption; pretraining uses it only as an extra candidate text.
"""
from __future__ import annotations

import itertools
import random
from typing import NamedTuple

from .scenes import Obj, Scene, one_edit
from .vocab import COLOURS, COUNTS, DOMAIN_WORDS, PLURALS, POSITIONS, SHAPES, object_phrase

P_SIZE, P_POSITION = 0.6, 0.6  # how often a listing states sizes / positions

PREFIXES: tuple[str, ...] = ("a photo of ", "a rendering of ", "a picture of ", "an image of ", "a drawing of ",
                             "a scene with ", "there is ", "")


class Meaning(NamedTuple):
    """What a caption asserts: exactly these objects (size / cell None where the caption does not say), and the
    background domain (None where it does not say)."""

    objects: tuple[tuple[str, str, str | None, int | None], ...]
    domain: str | None = None

    def to_json(self) -> list:
        return [[list(o) for o in self.objects], self.domain]

    @classmethod
    def from_json(cls, data: list) -> "Meaning":
        return cls(tuple((s, c, z, k) for s, c, z, k in data[0]), data[1])


class Caption(NamedTuple):
    text: str
    meaning: Meaning


def holds(meaning: Meaning, scene: Scene, domain: str | None = None) -> bool:
    """True when the caption with ``meaning`` describes ``scene`` rendered in ``domain``."""
    if meaning.domain is not None and meaning.domain != domain:
        return False
    if len(meaning.objects) != len(scene):
        return False
    for perm in itertools.permutations(scene):
        if all(s == o.shape and c == o.colour and z in (None, o.size) and k in (None, o.cell)
               for (s, c, z, k), o in zip(meaning.objects, perm)):
            return True
    return False


def describe(o: Obj, size: bool = True, position: bool = True, article: str = "a") -> str:
    """'a small red circle in the top left' (size and position optional)."""
    return object_phrase(o.shape, o.colour, o.size if size else None, POSITIONS[o.cell] if position else None,
                         article)


def _part(o: Obj, size: bool, position: bool) -> tuple[str, str, str | None, int | None]:
    return (o.shape, o.colour, o.size if size else None, o.cell if position else None)


def join(parts: list[str]) -> str:
    """'x', 'x and y', 'x, y and z'."""
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def full_caption(scene: Scene) -> str:
    """The one canonical, complete description (every attribute, objects in cell order); used by probes."""
    objs = sorted(scene, key=lambda o: o.cell)
    return "a photo of " + join([describe(o) for o in objs])


def _listing(objs: list[Obj], rng: random.Random) -> tuple[str, list]:
    size, position = rng.random() < P_SIZE, rng.random() < P_POSITION
    return join([describe(o, size, position) for o in objs]), [_part(o, size, position) for o in objs]


def caption(scene: Scene, rng: random.Random, domain: str | None = None) -> Caption:
    """One caption of ``scene`` (rendered in ``domain``) in a randomly chosen phrasing, with its meaning."""
    objs = list(scene)
    rng.shuffle(objs)
    n = len(objs)
    form = rng.choices(("list", "count", "that", "negation", "background"), weights=(4, 1.5, 3, 1.2, 1))[0]
    says_domain = None
    if form == "list":
        listing, parts = _listing(objs, rng)
        text = rng.choice(PREFIXES) + listing
    elif form == "count":
        noun = "shape" if n == 1 else "shapes"
        listing, parts = _listing(objs, rng)
        text = f"{rng.choice(PREFIXES[:5])}{COUNTS[n - 1]} {noun}: {listing}"
    elif form == "that":
        o, has_size = objs[0], rng.random() < 0.6
        head = describe(o, size=has_size, position=False)
        prefix = rng.choice(("a photo of ", "a rendering of ", "a picture of "))
        if n == 1:
            tail, has_size, has_pos = rng.choice(((f"is in the {POSITIONS[o.cell]}", has_size, True),
                                                  ("is the only shape", has_size, False),
                                                  (f"is {o.size} and in the {POSITIONS[o.cell]}", True, True)))
            parts = [_part(o, has_size, has_pos)]
        else:
            listing, rest = _listing(objs[1:], rng)
            if rng.random() < 0.3:
                tail = f"is in the {POSITIONS[o.cell]} and has {listing}"
                parts = [_part(o, has_size, True)] + rest
            else:
                tail = f"{rng.choice(('has', 'also has'))} {listing}"
                parts = [_part(o, has_size, False)] + rest
        text = f"{prefix}{head} that {tail}"
    elif form == "negation":
        absent_shapes = [s for s in SHAPES if s not in {o.shape for o in objs}]
        absent_colours = [c for c in COLOURS if c not in {o.colour for o in objs}]
        if rng.random() < 0.5:
            neg = f"no {PLURALS[rng.choice(absent_shapes)]}"
        else:
            neg = f"no {rng.choice(absent_colours)} shapes"
        listing, parts = _listing(objs, rng)  # a complete listing already implies the negation
        text = f"{rng.choice(PREFIXES[:6])}{listing} {rng.choice(('and', 'with'))} {neg}"
    else:
        listing, parts = _listing(objs, rng)
        says_domain = domain if domain in DOMAIN_WORDS else None
        text = f"{rng.choice(PREFIXES[:6])}{listing} on a {DOMAIN_WORDS.get(domain or '', 'plain')} background"
    return Caption(text, Meaning(tuple(parts), says_domain))


def hard_negative(scene: Scene, seed: int, rng: random.Random, domain: str | None = None,
                  forbidden: set[tuple[str, str]] = frozenset()) -> Caption | None:
    """A caption of a scene one edit away from ``scene``, in the same phrasing as ``caption(scene,
    random.Random(seed))`` and false of ``scene`` (None when no edit shows in that phrasing). Used as an extra
    candidate text in pretraining (as NegCLIP, Yuksekgonul et al., ICLR 2023), it makes the model bind attributes."""
    for _ in range(12):
        edited = one_edit(rng, scene, forbidden)
        if edited is not None:
            negative = caption(edited, random.Random(seed), domain)
            if not holds(negative.meaning, scene, domain):
                return negative
    return None


def captions(scene: Scene, rng: random.Random, k: int, domain: str | None = None,
             forbidden: set[tuple[str, str]] = frozenset()) -> tuple[list[Caption], list[Caption | None]]:
    """``k`` captions of ``scene`` (distinct texts where the phrasings allow) and, aligned, a hard negative each."""
    out: list[Caption] = []
    negatives: list[Caption | None] = []
    for _ in range(8 * k):
        seed = rng.getrandbits(32)
        c = caption(scene, random.Random(seed), domain)
        if c.text not in {x.text for x in out}:
            out.append(c)
            negatives.append(hard_negative(scene, seed, rng, domain, forbidden))
        if len(out) == k:
            break
    return out, negatives
