"""Ground truth of world concepts (used for concept-association precision)."""
import pytest

from searle_lib.world.concept_truth import concept_holds, parse_concept
from searle_lib.world.scenes import Obj, Scene
from searle_lib.world.vocab import concepts

SCENE = Scene([Obj("circle", "red", "small", 0), Obj("star", "blue", "large", 4)])


def test_every_vocabulary_concept_parses():
    assert all(parse_concept(c) or c for c in concepts())


@pytest.mark.parametrize("concept,truth", [("red circle", True), ("red star", False), ("small red circle", True),
                                           ("large red circle", False), ("star in the center", True),
                                           ("circle in the center", False), ("shape in the top left", True),
                                           ("blue shape", True), ("green", False), ("large shape", True)])
def test_concept_holds(concept, truth):
    assert concept_holds(concept, SCENE) is truth


def test_unknown_words_are_errors():
    with pytest.raises(ValueError, match="unknown word"):
        parse_concept("red dragon")
