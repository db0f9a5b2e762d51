"""How well a CLIP knows the embedded world: caption retrieval and per-attribute zero-shot probes.

Evaluated on images of a query split's gallery (never used for pretraining), one image per distinct scene:

- ``image_to_caption_at_1/5`` and ``caption_to_image_at_1/5``: retrieval between the images and the canonical full
  captions of their scenes (every object with size, colour, shape and position);
- ``probe_<attribute>``: for one random object of each image, the true full caption against the captions of the
  same scene with that object's colour (8 choices), shape (6), size (2) or position (free cells) changed: does the
  model bind the attribute to the right object? ``probe_count``: "a photo of {one|two|three} shapes".

Chance levels are returned beside each probe (``chance_<attribute>``).
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from ..backbones import Backbone
from .captions import full_caption
from .scenes import Scene
from .vocab import COLOURS, COUNTS, SHAPES, SIZES


@torch.no_grad()
def _image_features(backbone: Backbone, paths: list[Path], batch: int = 256) -> torch.Tensor:
    feats = []
    for i in range(0, len(paths), batch):
        ims = []
        for p in paths[i:i + batch]:
            with Image.open(p) as im:
                ims.append(backbone.preprocess(im.convert("RGB")))
        feats.append(backbone.encode_image(torch.stack(ims)))
    return F.normalize(torch.cat(feats), dim=-1).cpu()


@torch.no_grad()
def text_features(backbone: Backbone, texts: list[str], batch: int = 512) -> torch.Tensor:
    """Normalised CLIP text features of ``texts``."""
    out = []
    for i in range(0, len(texts), batch):
        tok = backbone.tokenize(texts[i:i + batch]).to(backbone.device)
        out.append(backbone.model.encode_text(tok).float())
    return F.normalize(torch.cat(out), dim=-1).cpu()


def _variants(scene: Scene, attribute: str, rng: random.Random) -> tuple[list[Scene], int]:
    """Scenes equal to ``scene`` but for one attribute of one random object; index 0 is ``scene`` itself."""
    o = rng.choice(list(scene))
    if attribute == "colour":
        news = [o._replace(colour=c) for c in COLOURS if c != o.colour]
    elif attribute == "shape":
        news = [o._replace(shape=s) for s in SHAPES if s != o.shape]
    elif attribute == "size":
        news = [o._replace(size=z) for z in SIZES if z != o.size]
    else:
        news = [o._replace(cell=c) for c in scene.free_cells()]
    return [scene] + [scene.replace(o, n) for n in news], 1 + len(news)


def _recall(sim: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    ranks = (sim > sim.diag()[:, None]).sum(1)  # 0 when the matching item is ranked first
    return {k: float((ranks < k).float().mean()) for k in ks}


def clip_quality(backbone: Backbone, root: str | Path, domain: str | None = None, split: str = "test",
                 n: int = 500, seed: int = 0) -> dict[str, Any]:
    """The quality report of ``backbone`` on up to ``n`` distinct scenes of ``split``'s gallery in ``domain``.

    Returns:
        A flat dict of accuracies in [0, 1] (see the module docstring), plus ``n_images`` and ``domain``.
    """
    from ..datasets.embedded import load_embedded, load_scenes
    data = load_embedded(root, split, domain=domain)
    scenes = load_scenes(root, data.gallery.name.split("/")[1])
    rng = random.Random(seed)
    seen: dict[Scene, int] = {}
    for i, image_id in enumerate(data.gallery.ids):
        seen.setdefault(scenes[image_id], i)
    chosen = sorted(seen.items(), key=lambda kv: kv[1])
    rng.shuffle(chosen)
    chosen = chosen[:n]
    paths = [data.gallery.paths[i] for _, i in chosen]
    img = _image_features(backbone, paths)
    caps = text_features(backbone, [full_caption(s) for s, _ in chosen])
    sim = img @ caps.T
    out: dict[str, Any] = {"domain": data.gallery.name.split("/")[1], "split": split, "n_images": len(chosen)}
    for k, v in _recall(sim).items():
        out[f"image_to_caption_at_{k}"] = v
    for k, v in _recall(sim.T).items():
        out[f"caption_to_image_at_{k}"] = v
    for attribute in ("colour", "shape", "size", "position"):
        variants = [_variants(scene, attribute, rng)[0] for scene, _ in chosen]
        t = text_features(backbone, [full_caption(v) for vs in variants for v in vs])  # one batched pass
        correct, start = 0, 0
        for j, vs in enumerate(variants):
            correct += int((t[start:start + len(vs)] @ img[j]).argmax() == 0)
            start += len(vs)
        out[f"probe_{attribute}"] = correct / len(chosen)
        out[f"chance_{attribute}"] = sum(1 / len(vs) for vs in variants) / len(chosen)
    counts = text_features(backbone, [f"a photo of {c} {'shape' if c == 'one' else 'shapes'}" for c in COUNTS])
    pred = (img @ counts.T).argmax(1)
    truth = torch.tensor([len(s) - 1 for s, _ in chosen])
    out["probe_count"] = float((pred == truth).float().mean())
    out["chance_count"] = 1 / len(COUNTS)
    return out
