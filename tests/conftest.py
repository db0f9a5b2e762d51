"""Shared test set-up: CPU only, offline, seeded tiny random-init CLIP models."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``: the Open Images concept list and the 24 templates (never committed here)."""
    if not (SHARED_DATA / "palavra_templates.txt").is_file():
        pytest.skip(f"reference data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def micro_backbone():
    """A random-init ``test-micro-vit`` CLIP (seed 0) with the real CLIP BPE tokenizer."""
    from searle_lib.backbones import create_backbone
    from searle_lib.config import ModelConfig
    torch.manual_seed(0)
    return create_backbone(ModelConfig(name="test-micro-vit", pretrained=None), "cpu")
