"""Fixtures for the phrase tests: captions of a toy shapes world and a tiny GPT-2 trained on them (once per session).

Import the fixtures into a test module with ``from _lm_fixtures import tiny_lm_dir, tiny_lm  # noqa: F401``.
"""
from __future__ import annotations

import random
from pathlib import Path

import pytest

SHAPES = ("circle", "square", "triangle", "star", "heart")
COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "white", "black")
RELATIONS = ("next to", "above", "below", "left of", "right of")


def toy_captions(n: int = 2000, seed: int = 0) -> list[str]:
    """Captions in the official phrase form, "a photo of <object> that ...", about coloured shapes."""
    rng = random.Random(seed)

    def obj() -> str:
        return f"a {rng.choice(COLOURS)} {rng.choice(SHAPES)}"

    forms = (
        lambda: f"a photo of {obj()} that is {rng.choice(RELATIONS)} {obj()}.",
        lambda: f"a photo of {obj()} that sits in the {rng.choice(('top', 'bottom', 'middle'))} of the image.",
        lambda: f"a photo of {obj()} that is {rng.choice(('small', 'large'))} and {rng.choice(COLOURS)}.",
    )
    return [rng.choice(forms)() for _ in range(n)]


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory) -> Path:
    """A tiny GPT-2 + BPE tokenizer folder (about 5 s to train on 2 cores)."""
    from searle_lib.tiny_lm import train_tiny_lm
    return train_tiny_lm(toy_captions(), tmp_path_factory.mktemp("lm") / "tiny-gpt2", steps=150, progress=False)


@pytest.fixture(scope="session")
def tiny_lm(tiny_lm_dir):
    """``(model, tokenizer)`` loaded once through the library's loader (fp32 on CPU, pad = EOS, left padding)."""
    from searle_lib.phrases import load_lm
    return load_lm(str(tiny_lm_dir), "cpu")
