"""Concept vocabulary, prompt ensembling, top-k association, the official CSV."""
import pytest
import torch

from searle_lib.concepts import (associate, concept_embeddings, fallback_vocabulary, load_templates,
                                 load_vocabulary, read_concepts_csv, top_concepts, write_concepts_csv)
from searle_lib.config import ConfigError
from searle_lib.text_encoding import encode_texts


def test_open_images_vocabulary(shared_data):
    names = load_vocabulary(shared_data / "oidv7-class-descriptions.csv")
    assert len(names) == 20931 and "'Nduja" in names


def test_palavra_templates(shared_data):
    t = load_templates(shared_data / "palavra_templates.txt")
    assert len(t) == 24 and "A photo of a {}" in t and "{}" in t


@pytest.mark.parametrize("content,match", [("LabelName,DisplayName\n/m/1,cat\n/m/2,  \n", "line 3: blank"),
                                           ("LabelName,DisplayName\n/m/1,$ sign\n", r"contains '\$'"),
                                           ("a,b\n1,2\n", "DisplayName")])
def test_bad_vocabularies(tmp_path, content, match):
    p = tmp_path / "v.csv"
    p.write_text(content)
    with pytest.raises(ConfigError, match=match):
        load_vocabulary(p)


def test_missing_files_say_where_to_get_them(tmp_path):
    with pytest.raises(ConfigError, match="openimages"):
        load_vocabulary(tmp_path / "none.csv")
    with pytest.raises(ConfigError, match="PALAVRA"):
        load_templates(tmp_path / "none.txt")


def test_fallback_vocabulary_is_offline():
    assert len(fallback_vocabulary()) > 900


def test_prompt_ensembling_matches_definition(micro_backbone):
    templates = ["a photo of a {}", "{}", "A sketch of a {}"]
    embs = concept_embeddings(micro_backbone, ["dog", "red car"], templates, batch_size=4, progress=False)
    manual = encode_texts(micro_backbone, [t.format(" red car ") for t in templates], normalize=True).mean(0)
    torch.testing.assert_close(embs[1], manual / manual.norm(), rtol=1e-5, atol=1e-6)


def test_association_and_csv_round_trip(tmp_path):
    concepts = ["a", "b, with comma", "c"]
    embs = torch.eye(3)
    img = torch.tensor([[0.1, 0.9, 0.3], [2.0, 0.0, 1.0]])
    top = associate(img, embs, top_k=2)
    assert top.tolist() == [[1, 2], [0, 2]]
    p = write_concepts_csv(tmp_path / "c.csv", ["x.jpg", "y.jpg"], concepts, top)
    assert p.read_text().splitlines()[0] == "Image Name,1,2"
    assert read_concepts_csv(p) == {"x.jpg": ["b, with comma", "c"], "y.jpg": ["a", "c"]}


def test_top_concepts_official_rules():
    ranked = [" cat", "cat", "dog ", "owl"]
    assert top_concepts(ranked, 3, strip_dedup=True) == ["cat", "dog"]
    assert top_concepts(ranked, 3, strip_dedup=False) == [" cat", "cat", "dog "]
