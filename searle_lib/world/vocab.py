"""The embedded world's language: attribute values, their words, concept vocabulary and prompt templates.

Everything the world renders, describes or asks about is named here, so captions (pretraining), relative captions
(queries), the concept vocabulary (SEARLE section 3, the analogue of the 20,931 Open Images names) and the prompt
templates (the analogue of the 24 PALAVRA templates) all speak the same words. Colours are the eight of the CSS
benchmark (Vo et al., CVPR 2019); every colour word starts with a consonant, so the official "a {}" article is right.
"""
from __future__ import annotations

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star", "cross")
PLURALS: dict[str, str] = {"circle": "circles", "square": "squares", "triangle": "triangles",
                           "diamond": "diamonds", "star": "stars", "cross": "crosses"}
COLOURS: tuple[str, ...] = ("gray", "red", "blue", "green", "brown", "purple", "cyan", "yellow")
SIZES: tuple[str, ...] = ("small", "large")
N_CELLS = 9  # a 3 x 3 grid; cell = 3 * row + column, row 0 at the top
POSITIONS: tuple[str, ...] = ("top left", "top center", "top right",
                              "middle left", "center", "middle right",
                              "bottom left", "bottom center", "bottom right")
COUNTS: tuple[str, ...] = ("one", "two", "three")  # COUNTS[n - 1] names n objects
MAX_OBJECTS = 3

# Background words per visual domain, used in some pretraining captions ("... on a dark background").
DOMAIN_WORDS: dict[str, str] = {"flat": "white", "night": "dark", "sketch": "paper"}

# Prompt templates for concept association and OTI's template sampling in this world (section 3 / 5), written in
# the phrasings the tiny CLIP's captions use. "{}" receives the concept, e.g. "red circle".
TEMPLATES: tuple[str, ...] = (
    "a photo of a {}",
    "a rendering of a {}",
    "a picture of a {}",
    "an image of a {}",
    "a drawing of a {}",
    "a photo of a scene with a {}",
    "a scene with a {}",
    "there is a {}",
    "a {}",
    "{}",
    "a photo of one {}",
    "a rendering of a scene with a {}",
)

# Continuations that are natural after "a photo of {concept} that", in the world's own language; an offline phrase
# generator may use them (the role GPT-Neo plays for the real vocabulary, section 4).
CONTINUATIONS: tuple[str, ...] = (
    "is in the {position}",
    "has a {size} {colour} {shape} in the {position}",
    "has a {colour} {shape}",
    "has a {size} {colour} {shape}",
    "is on a {background} background",
    "is {size}",
    "has no {shapes}",
    "has no {colour} shapes",
)


def world_grammar():
    """The offline phrase generator's grammar in the world's language: "a photo of {concept} that" + one of
    ``CONTINUATIONS`` with every slot filled (the role GPT-Neo's phrases play for the real vocabulary)."""
    from ..phrases import Grammar
    return Grammar(name="world", templates=tuple(c + "." for c in CONTINUATIONS),
                   slots={"position": POSITIONS, "size": SIZES, "colour": COLOURS, "shape": SHAPES,
                          "shapes": tuple(PLURALS[s] for s in SHAPES),
                          "background": tuple(DOMAIN_WORDS.values())})


def object_phrase(shape: str, colour: str | None = None, size: str | None = None, position: str | None = None,
                  article: str = "a") -> str:
    """'a small red circle in the top left', omitting the parts given as None."""
    words = [w for w in (article, size, colour, shape) if w]
    phrase = " ".join(words)
    return f"{phrase} in the {position}" if position else phrase


def concepts(compounds: bool = True) -> list[str]:
    """The world's concept vocabulary: single attribute words, then compounds (e.g. "red circle", "small red
    circle"), with no duplicates. The ImageNet/Open Images analogue for concept association (section 3)."""
    out: list[str] = list(SHAPES) + list(COLOURS) + [f"{s} shape" for s in SIZES] + \
        [f"shape in the {p}" for p in POSITIONS] + [f"{c} shape" for c in COLOURS]
    if compounds:
        out += [f"{c} {s}" for c in COLOURS for s in SHAPES]
        out += [f"{z} {s}" for z in SIZES for s in SHAPES]
        out += [f"{z} {c} {s}" for z in SIZES for c in COLOURS for s in SHAPES]
        out += [f"{s} in the {p}" for s in SHAPES for p in POSITIONS]
    seen: set[str] = set()
    return [c for c in out if not (c in seen or seen.add(c))]


def vocabulary_words() -> set[str]:
    """Every attribute word (multi-word positions split), for checks that captions use the query words."""
    words = set(SHAPES) | set(PLURALS.values()) | set(COLOURS) | set(SIZES) | set(COUNTS)
    for p in POSITIONS:
        words |= set(p.split())
    return words
