"""Whether a concept of the world's vocabulary (``vocab.concepts``) is true of a scene: the ground truth that lets
the concept-association chapter measure precision@k, which real datasets cannot (reference section 3)."""
from __future__ import annotations

from .scenes import Scene
from .vocab import COLOURS, POSITIONS, SHAPES, SIZES


def parse_concept(concept: str) -> dict[str, str | int]:
    """The attributes a concept names, e.g. "small red circle" -> {size, colour, shape}; "shape" names none."""
    head, _, where = concept.partition(" in the ")
    out: dict[str, str | int] = {}
    if where:
        if where not in POSITIONS:
            raise ValueError(f"concept {concept!r}: unknown position {where!r}")
        out["cell"] = POSITIONS.index(where)
    for word in head.split():
        if word in SIZES:
            out["size"] = word
        elif word in COLOURS:
            out["colour"] = word
        elif word in SHAPES:
            out["shape"] = word
        elif word != "shape":
            raise ValueError(f"concept {concept!r}: unknown word {word!r}")
    return out


def concept_holds(concept: str, scene: Scene) -> bool:
    """True when some object of ``scene`` has every attribute the concept names."""
    want = parse_concept(concept)
    return any(all(getattr(o, k) == v for k, v in want.items()) for o in scene)
