"""One frozen config: official defaults, presets, overrides, clear errors."""
import dataclasses

import pytest

from searle_lib.config import ConfigError, StudyConfig, list_presets, load_config, valid_keys


def test_official_defaults():
    c = StudyConfig()
    assert (c.oti.steps, c.oti.lr, c.oti.weight_decay, c.oti.batch_size, c.oti.ema_decay) == (350, 2e-2, 0.01, 32, 0.99)
    assert (c.oti.lambda_cos, c.oti.lambda_gpt, c.oti.top_k_concepts, c.oti.init_std) == (1.0, 0.5, 15, 0.02)
    assert (c.phi.lr, c.phi.weight_decay, c.phi.batch_size, c.phi.epochs, c.phi.tau) == (1e-4, 0.01, 256, 100, 0.25)
    assert (c.phi.lambda_distil, c.phi.lambda_gpt, c.phi.top_k_concepts, c.phi.dropout) == (1.0, 0.75, 150, 0.5)
    assert (c.concepts.top_k, c.phrases.num_phrases, c.phrases.temperature, c.phrases.max_length) == (250, 256, 0.5, 35)
    assert c.phrases.lm_name == "EleutherAI/gpt-neo-2.7B" and c.model.preprocess == "targetpad"


@pytest.mark.parametrize("preset", list_presets())
def test_every_preset_loads(preset):
    assert load_config(preset).preset == preset


def test_paper_presets_are_official():
    c = load_config("paper-vitl14")
    assert (c.model.name, c.model.pretrained) == ("ViT-L-14", "openai")
    # only the OTI batch differs: tokens do not depend on it (per-image streams, updates scaled as in a batch of 32)
    assert dataclasses.replace(c.oti, batch_size=32) == StudyConfig().oti and c.oti.loss_batch == 32
    assert c.phi == StudyConfig().phi
    assert load_config("paper-l14") == c and load_config("paper-b32").model.name == "ViT-B-32"  # the issues' names


def test_overrides_dotted_nested_and_keyword():
    c = load_config("tiny", {"oti.steps": 7, "phi": {"lr": 3}}, run__seed=5)
    assert (c.oti.steps, c.phi.lr, c.run.seed) == (7, 3.0, 5)
    assert load_config("tiny", {"oti.steps": None}).oti.steps == load_config("tiny").oti.steps
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.oti.steps = 3


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as e:
        load_config("tiny", {"oti.stepz": 1})
    assert "oti.stepz" in str(e.value) and "oti.steps" in str(e.value)
    assert "oti.steps" in valid_keys() and "preset" not in valid_keys()


@pytest.mark.parametrize("key,value", [("oti.steps", "10"), ("oti.steps", 1.5), ("run.deterministic", "yes"),
                                       ("eval.methods", "searle"), ("model.name", 3)])
def test_wrong_types_are_refused(key, value):
    with pytest.raises(ConfigError, match=key):
        load_config("tiny", {key: value})


def test_unknown_preset_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="available presets"):
        load_config("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("oti: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad))
    bad.write_text("oti:\n  stepz: 3\n")
    with pytest.raises(ConfigError, match="preset bad.yaml"):
        load_config(str(bad))


def test_hash_tracks_sections():
    a, b = load_config("tiny"), load_config("tiny", {"phi.epochs": 9})
    assert a.hash("oti") == b.hash("oti") and a.hash("phi") != b.hash("phi")
