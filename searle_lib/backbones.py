"""Frozen CLIP backbones from open_clip, by architecture name and pretrained tag (SEARLE section 2).

``create_backbone(cfg.model, device)`` is the one way models are made: any open_clip architecture
(``ViT-B-32``, ``ViT-L-14``, ...), with an open_clip pretrained tag (``openai``, LAION tags), a local checkpoint
file, or random init (``pretrained=None``). Tiny ``test-*`` architectures for tests and the embedded world are
registered from ``searle_lib/model_configs``. Offline, absent weights fail at once with a message that says where
they were looked for and how to provide them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import open_clip
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch import nn
from torchvision import transforms

from .chunkstore import atomic_output
from .config import ConfigError, ModelConfig

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)

PLACEHOLDER = "$"  # the pseudo-word written in prompts (official: " $ ")


class MissingWeightsError(FileNotFoundError):
    """Pretrained weights that are not on this machine and cannot be downloaded."""


def resolve_device(device: str = "auto") -> torch.device:
    import re
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", device):
        raise ConfigError(f"run.device={device!r}: expected auto, cpu, cuda, cuda:N or mps")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"run.device={device!r} but CUDA is not available here; use 'cpu' or 'auto'")
    return torch.device(device)


class TargetPad:
    """SEARLE's ``targetpad``: pad (black, symmetric) images whose aspect ratio is >= ``target_ratio`` to that ratio."""

    def __init__(self, target_ratio: float = 1.25):
        self.target_ratio = target_ratio

    def __call__(self, image: Image.Image) -> Image.Image:
        w, h = image.size
        if max(w, h) / min(w, h) < self.target_ratio:
            return image
        scaled = max(w, h) / self.target_ratio
        hp, vp = max(int((scaled - w) / 2), 0), max(int((scaled - h) / 2), 0)
        return TF.pad(image, [hp, vp, hp, vp], 0, "constant")


def _to_rgb(image: Image.Image) -> Image.Image:
    return image.convert("RGB")


def build_preprocess(kind: str, size: int, mean: tuple, std: tuple, target_ratio: float = 1.25) -> Callable:
    """``targetpad`` (official default) or ``clip`` (resize short side, centre crop) preprocessing."""
    steps: list[Callable] = []
    if kind == "targetpad":
        steps.append(TargetPad(target_ratio))
    elif kind != "clip":
        raise ConfigError(f"model.preprocess={kind!r}: expected 'targetpad' or 'clip'")
    steps += [transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
              transforms.CenterCrop(size), _to_rgb, transforms.ToTensor(), transforms.Normalize(mean, std)]
    return transforms.Compose(steps)


@dataclass
class Backbone:
    """A frozen open_clip model with its tokenizer, preprocessing and the placeholder's token id."""

    model: nn.Module
    tokenizer: Callable
    preprocess: Callable
    name: str
    pretrained: str | None
    placeholder_id: int
    device: torch.device

    @property
    def text(self) -> nn.Module:
        """The module holding the text tower's parts (the CLIP itself, or ``model.text`` for custom towers)."""
        return getattr(self.model, "text", self.model)

    @property
    def token_dim(self) -> int:
        return self.text.token_embedding.embedding_dim

    @property
    def context_length(self) -> int:
        return self.text.positional_embedding.shape[0]

    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return size[0] if isinstance(size, (tuple, list)) else int(size)

    @property
    def feature_dim(self) -> int:
        return self.model.visual.output_dim

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts)

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Raw (unnormalised) image features, as phi's input (section 6)."""
        return self.model.encode_image(images.to(self.device)).float()


def placeholder_token_id(tokenizer: Callable, placeholder: str = PLACEHOLDER) -> int:
    """The single token id of ``placeholder`` written between spaces (259 for OpenAI CLIP's BPE)."""
    ids = tokenizer([f" {placeholder} "])[0].tolist()
    special = {getattr(tokenizer, "sot_token_id", None), getattr(tokenizer, "eot_token_id", None), 0}
    body = [i for i in ids if i not in special]
    if len(body) != 1:
        raise ConfigError(f"the tokenizer splits the placeholder {placeholder!r} into {len(body)} tokens {body}; "
                          "SEARLE needs a placeholder that is one token")
    return body[0]


def _weights_locations(name: str, tag: str) -> tuple[dict, list[str]]:
    """open_clip's registry entry for (name, tag) and the local files it would be loaded from."""
    pcfg = open_clip.get_pretrained_cfg(name, tag)
    if not pcfg:
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise ConfigError(f"model.pretrained={tag!r} is neither a file nor a known open_clip tag for {name!r}. "
                          f"Known tags: {tags or 'none (use a checkpoint file or pretrained: null)'}")
    places = []
    if pcfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache
        repo, filename = os.path.split(pcfg["hf_hub"])
        for fn in ([filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]):
            hit = try_to_load_from_cache(repo, fn)
            places.append(hit if isinstance(hit, str) else f"hf-hub cache: {repo}/{fn}")
    if pcfg.get("url"):
        places.append(os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(pcfg["url"])))
    return pcfg, places


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false") or \
        os.environ.get("SEARLE_OFFLINE", "0") not in ("0", "", "false")


def create_backbone(cfg: ModelConfig, device: str | torch.device = "cpu") -> Backbone:
    """Create a frozen open_clip backbone from ``cfg`` (name, pretrained tag/file/None, our checkpoint).

    Raises:
        ConfigError: unknown architecture or tag (the message lists the valid ones).
        MissingWeightsError: offline and the weights are not cached (the message says where to put them).
    """
    device = resolve_device(device) if isinstance(device, str) else device
    if cfg.name not in open_clip.list_models():
        raise ConfigError(f"model.name={cfg.name!r} is not an open_clip architecture. "
                          f"Available: {', '.join(open_clip.list_models())}")
    pretrained, quick_gelu = cfg.pretrained, False
    if cfg.checkpoint:
        pretrained = None
    elif pretrained and not Path(pretrained).is_file():
        if Path(pretrained).suffix in (".pt", ".pth", ".bin", ".safetensors"):
            raise MissingWeightsError(f"model.pretrained={pretrained!r}: no such checkpoint file")
        pcfg, places = _weights_locations(cfg.name, pretrained)
        quick_gelu = bool(pcfg.get("quick_gelu", False))
        local = [p for p in places if os.path.isfile(p)]
        if local:
            pretrained = local[0]
        elif _offline():
            raise MissingWeightsError(
                f"pretrained weights {cfg.name}/{cfg.pretrained} are not on this machine and downloads are off "
                f"(HF_HUB_OFFLINE=1). Looked in:\n  " + "\n  ".join(places) +
                "\nProvide them by running once with network access (open_clip caches them there), or download "
                "the checkpoint yourself and set model.pretrained to its file path.")
    try:
        model, _, _ = open_clip.create_model_and_transforms(cfg.name, pretrained=pretrained,
                                                            force_quick_gelu=quick_gelu, device="cpu")
    except RuntimeError as e:
        raise MissingWeightsError(f"could not load weights {cfg.name}/{cfg.pretrained}: {e}. Download them with "
                                  "network access, or set model.pretrained to a local checkpoint file.") from e
    if cfg.checkpoint:
        load_clip_checkpoint(model, cfg.checkpoint)
    model = model.to(device).eval().requires_grad_(False)  # SEARLE keeps the whole CLIP frozen
    from ._oti_fast import WordMemoTokenizer  # here: _oti_fast imports this module
    tokenizer = WordMemoTokenizer.wrap(open_clip.get_tokenizer(cfg.name))  # open_clip's ids, bit for bit, faster
    pp = model.visual.preprocess_cfg
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    preprocess = build_preprocess(cfg.preprocess, size, tuple(pp["mean"]), tuple(pp["std"]), cfg.target_ratio)
    return Backbone(model, tokenizer, preprocess, cfg.name, cfg.checkpoint or cfg.pretrained,
                    placeholder_token_id(tokenizer), device)


def load_clip_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load a CLIP state dict saved by ``save_clip_checkpoint`` (safetensors) into ``model``."""
    from safetensors.torch import load_file
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"model.checkpoint={str(path)!r} does not exist; train it first "
                                  "(searle pretrain, or the embedded-world notebook) or fix the path")
    state = load_file(str(path))
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # size mismatches
        raise ConfigError(f"checkpoint {path} does not fit this architecture ({str(e).splitlines()[1].strip()} ...); "
                          "check model.name") from e
    if missing or unexpected:
        raise ConfigError(f"checkpoint {path} does not fit this architecture: missing {missing[:5]}, "
                          f"unexpected {unexpected[:5]}; check model.name")


def save_clip_checkpoint(model: nn.Module, path: str | Path) -> None:
    from safetensors.torch import save_file
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
