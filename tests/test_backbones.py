"""Backbones by open_clip name/tag, offline weight errors, preprocessing."""
import pytest
import torch
from PIL import Image

from searle_lib.backbones import (MissingWeightsError, TargetPad, build_preprocess, create_backbone,
                                  save_clip_checkpoint)
from searle_lib.config import ConfigError, ModelConfig


def test_unknown_architecture_lists_available():
    with pytest.raises(ConfigError, match="ViT-B-32"):
        create_backbone(ModelConfig(name="ViT-Q-99", pretrained=None))


def test_unknown_tag_lists_known_tags():
    with pytest.raises(ConfigError, match="laion2b_s34b_b79k"):
        create_backbone(ModelConfig(name="ViT-B-32", pretrained="not-a-tag"))


def test_absent_weights_offline_say_where_and_how(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingWeightsError) as e:
        create_backbone(ModelConfig(name="ViT-B-32", pretrained="openai"))
    msg = str(e.value)
    assert "ViT-B-32/openai" in msg and "Looked in" in msg and "file path" in msg


def test_missing_checkpoint_file():
    with pytest.raises(MissingWeightsError, match="no such checkpoint"):
        create_backbone(ModelConfig(name="test-micro-vit", pretrained="/nowhere/clip.pt"))


def test_checkpoint_round_trip(micro_backbone, tmp_path):
    path = tmp_path / "clip.safetensors"
    save_clip_checkpoint(micro_backbone.model, path)
    other = create_backbone(ModelConfig(name="test-micro-vit", pretrained=None, checkpoint=str(path)))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(other.encode_image(x), micro_backbone.encode_image(x))
    with pytest.raises(ConfigError, match="does not fit"):
        create_backbone(ModelConfig(name="test-tiny-vit", pretrained=None, checkpoint=str(path)))


def test_targetpad_pads_wide_images_to_ratio():
    img = Image.new("RGB", (300, 100), (255, 255, 255))
    out = TargetPad(1.25)(img)
    assert out.size == (300, 2 * int((300 / 1.25 - 100) / 2) + 100)
    assert out.getpixel((0, 0)) == (0, 0, 0) and out.getpixel((150, out.size[1] // 2)) == (255, 255, 255)
    square = Image.new("RGB", (110, 100))
    assert TargetPad(1.25)(square) is square


@pytest.mark.parametrize("kind", ["targetpad", "clip"])
def test_preprocess_kinds(kind):
    t = build_preprocess(kind, 32, (0.5,) * 3, (0.5,) * 3)
    assert t(Image.new("L", (64, 20))).shape == (3, 32, 32)
    with pytest.raises(ConfigError):
        build_preprocess("squash", 32, (0.5,) * 3, (0.5,) * 3)


def test_backbone_properties(micro_backbone):
    b = micro_backbone
    assert (b.feature_dim, b.token_dim, b.context_length, b.image_size) == (32, 32, 77, 32)
    assert not any(p.requires_grad for p in b.model.parameters())
