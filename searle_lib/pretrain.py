"""Contrastive pretraining of a tiny open_clip CLIP on the embedded world (CLIP, Radford et al., ICML 2021).

SEARLE starts from a pretrained CLIP. Offline no weights can be downloaded, so the embedded default trains its own
small one on the world's (image, caption) pairs: symmetric InfoNCE with a learnable logit scale (clamped at 100),
AdamW (no weight decay on gains, biases and the logit scale, as open_clip's trainer), linear warmup then cosine
decay. Two details differ from plain CLIP training, both for speed or correctness at this scale:

- the text tower runs only up to the longest caption of the batch: it is causal and pools at end-of-text, so this
  is exact (``encode_text`` below equals ``model.encode_text``) and several times cheaper than 77 tokens;
- a caption is a positive of every image of the batch it is true of (its meaning is stored with it, so this is
  exact), not only of its own image: the world repeats scenes and short captions fit many images, and calling them
  negatives would teach noise;
- hard negatives (NegCLIP-style): each caption brings a caption of a scene one edit away as an extra candidate, and
  batches keep families (a scene and its one-edit variants) together. Without them the model learns colours and
  little else in the few minutes it has (measured: see ``benchmarks/world.py`` and the book).

The checkpoint is cached in ``cfg.pretrain.out_dir`` under a hash of the model name and architecture, the world's
content hash, the pretraining config and the seed, with a JSON beside it; it is reused until one of them changes.
On a fresh machine the copy shipped in the repository's ``weights/`` for the same hash is used when it matches
this machine's world bit for bit (``weights.py``; ``pretrain.shipped=false`` trains instead).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from .backbones import Backbone, create_backbone, save_clip_checkpoint
from .chunkstore import atomic_write_text
from .config import StudyConfig
from .datasets.embedded import load_pretrain_pairs, load_scenes
from .world import build_world, world_hash
from .world.quality import clip_quality
from .world.truth import Encoded, encode_meanings, encode_scenes, truth

PRETRAIN_VERSION = 1  # bump when the training procedure changes: cached checkpoints are retrained
_UNHASHED = ("out_dir", "eval_size", "shipped")

__all__ = ["pretrain_clip", "pretrain_key", "checkpoint_paths", "encode_text", "load_images", "clip_quality"]


def pretrain_key(cfg: StudyConfig) -> str:
    """Hash of everything the trained weights depend on: architecture, world content, training config, seed."""
    arch = open_clip.get_model_config(cfg.model.name)
    d = {"model": cfg.model.name, "arch": arch, "world": world_hash(cfg.world),
         "pretrain": {k: v for k, v in dataclasses.asdict(cfg.pretrain).items() if k not in _UNHASHED},
         "seed": cfg.run.seed, "version": PRETRAIN_VERSION}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def checkpoint_paths(cfg: StudyConfig, out_dir: str | Path | None = None) -> tuple[Path, Path]:
    """(checkpoint, its JSON record) for ``cfg``; the file names carry the key, so configs never collide."""
    out = Path(out_dir if out_dir is not None else cfg.pretrain.out_dir)
    stem = f"{cfg.model.name}-{pretrain_key(cfg)}"
    return out / f"{stem}.safetensors", out / f"{stem}.json"


def encode_text(model: torch.nn.Module, tokens: torch.Tensor, chunks: int = 1) -> torch.Tensor:
    """``model.encode_text`` (unnormalised) computed only up to the last non-pad token (exact: causal mask, argmax
    pooling at end-of-text). With ``chunks`` > 1 the texts are sorted by length and encoded in that many groups,
    each cut to its own longest text, which costs about the mean length instead of the maximum."""
    if chunks > 1 and tokens.shape[0] > chunks:
        lengths = (tokens != 0).sum(1)
        order = torch.argsort(lengths)
        parts = [encode_text(model, tokens[o]) for o in torch.chunk(order, chunks)]
        out = torch.empty(tokens.shape[0], parts[0].shape[1], dtype=parts[0].dtype)
        out[order] = torch.cat(parts)
        return out
    length = int((tokens != 0).long().cumsum(1).argmax(1).max()) + 1
    tokens = tokens[:, :length]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:length].to(cast)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)]
    return model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) \
        else x @ model.text_projection


def load_images(paths: tuple[Path, ...] | list[Path], size: int) -> torch.Tensor:
    """Decode PNGs into one uint8 tensor [N, 3, size, size] (bicubic resize only when the sizes differ)."""
    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    for i, p in enumerate(tqdm(paths, desc="load images", leave=False, mininterval=2)):
        with Image.open(p) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BICUBIC)
            out[i] = torch.from_numpy(np.array(im)).permute(2, 0, 1)
    return out


def _lr_at(step: int, total: int, cfg) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """open_clip's rule: no decay on gains, biases, norms and the logit scale (ndim < 2). The token embedding is
    left out: it is trained by a lazy sparse Adam (see ``_optimizers``)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad or p is model.token_embedding.weight:
            continue
        (no_decay if p.ndim < 2 or "bias" in name or "logit_scale" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _optimizers(model: torch.nn.Module, pc) -> list[torch.optim.Optimizer]:
    """AdamW for the model, and a lazy Adam (``SparseAdam``, no weight decay) for the token embedding: the captions
    use ~150 of the 49,408 rows, and a dense AdamW step over all rows would cost a quarter of the training time."""
    model.token_embedding.sparse = True
    return [torch.optim.AdamW(_param_groups(model, pc.weight_decay), lr=pc.lr, betas=(0.9, 0.98), eps=1e-6),
            torch.optim.SparseAdam([model.token_embedding.weight], lr=pc.lr, betas=(0.9, 0.98), eps=1e-6)]


@dataclass
class PretrainData:
    """Everything training reads, in memory: uint8 images, caption tokens and what the captions mean."""

    images: torch.Tensor  # [N, 3, S, S] uint8
    tokens: torch.Tensor  # [N, k, L] caption tokens
    negatives: torch.Tensor  # [N, k, L] hard-negative tokens
    scenes: Encoded  # the N images' scenes
    meanings: Encoded  # N * k caption meanings, row i * k + j
    negative_meanings: Encoded  # N * k hard-negative meanings (count -1 where there is none)
    families: torch.Tensor  # [N] family id


def prepare_data(backbone: Backbone, root: Path, domains: list[str]) -> PretrainData:
    """Load the pretraining split of every domain: decode images, tokenize captions, encode meanings."""
    pairs = load_pretrain_pairs(root)
    images = load_images(pairs.paths, backbone.image_size)
    k = min(len(c) for c in pairs.captions)
    n = len(pairs.ids)
    tokens = backbone.tokenize([c[j] for c in pairs.captions for j in range(k)]).view(n, k, -1)
    negatives = backbone.tokenize([c[j] for c in pairs.negatives for j in range(k)]).view(n, k, -1)
    scenes: dict = {}
    for d in domains:
        scenes.update(load_scenes(root, d))
    return PretrainData(
        images, tokens, negatives,
        encode_scenes([scenes[i] for i in pairs.ids], pairs.domains, domains),
        encode_meanings([m[j] for m in pairs.meanings for j in range(k)], domains),
        encode_meanings([m[j] for m in pairs.negative_meanings for j in range(k)], domains),
        torch.tensor(pairs.families))


def _epoch_order(families: torch.Tensor, gen: torch.Generator, keep_families: bool) -> torch.Tensor:
    """A random order of the images; with ``keep_families`` the members of a family stay next to each other, so
    that they share a batch and serve as each other's hard negatives."""
    n = families.shape[0]
    if not keep_families:
        return torch.randperm(n, generator=gen)
    jitter = torch.rand(n, generator=gen)
    fam_rank = torch.randperm(int(families.max()) + 1, generator=gen)[families]
    return torch.argsort(fam_rank.double() + 0.5 * jitter.double())


def contrastive_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE with several positives: ``target[i, j]`` says caption j is true of image i.

    Images -> texts: cross-entropy against the uniform distribution over an image's true captions (every image has
    at least its own). Texts -> images: the same for every text true of at least one image of the batch; hard
    negatives true of no image only take part as candidates of the image -> text direction.
    """
    t = target.float()
    i2t = -(t / t.sum(1, keepdim=True) * logits.log_softmax(1)).nan_to_num().sum(1).mean()
    cols = t.sum(0) > 0
    tc, lc = t[:, cols], logits[:, cols]
    t2i = -(tc / tc.sum(0, keepdim=True) * lc.log_softmax(0)).sum(0).mean()
    return 0.5 * (i2t + t2i)


def batch_loss(model: torch.nn.Module, data: PretrainData, idx: torch.Tensor, which: torch.Tensor,
               hard_negatives: bool, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """The contrastive loss of images ``idx`` with their captions number ``which`` (plus hard negatives)."""
    k = data.tokens.shape[1]
    rows = idx * k + which
    tok, target = data.tokens[idx, which], truth(data.scenes[idx], data.meanings[rows])
    if hard_negatives:
        tok = torch.cat([tok, data.negatives[idx, which]])
        target = torch.cat([target, truth(data.scenes[idx], data.negative_meanings[rows])], 1)
    img = F.normalize(model.encode_image((data.images[idx].float() - mean) / std), dim=-1)
    txt = F.normalize(encode_text(model, tok, chunks=4), dim=-1)
    logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T
    if hard_negatives:  # an image without a hard negative has an empty text: no candidate
        missing = torch.cat([torch.zeros(len(idx), dtype=torch.bool), data.negative_meanings.count[rows] < 0])
        logits = logits.masked_fill(missing[None, :], float("-inf"))
    return contrastive_loss(logits, target)


def _norm_stats(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP mean / std for uint8 images, shaped for [B, 3, H, W]."""
    mean = torch.tensor(model.visual.preprocess_cfg["mean"]).view(1, 3, 1, 1) * 255
    std = torch.tensor(model.visual.preprocess_cfg["std"]).view(1, 3, 1, 1) * 255
    return mean, std


@torch.no_grad()
def evaluate_loss(backbone: Backbone, data: PretrainData, cfg: StudyConfig, n: int = 256) -> float:
    """The contrastive loss of ``backbone`` on a fixed batch (the first ``n`` images in family order, first
    caption each): comparable before and after training."""
    idx = torch.arange(min(n, data.images.shape[0]))
    mean, std = _norm_stats(backbone.model)
    return float(batch_loss(backbone.model, data, idx, torch.zeros_like(idx), cfg.pretrain.hard_negatives,
                            mean, std))


def train_clip(backbone: Backbone, data: PretrainData, cfg: StudyConfig, progress: bool = True,
               callback: Callable[[int, float], None] | None = None, callback_every: int = 100) -> dict[str, Any]:
    """Train ``backbone.model`` in place on ``data`` (one of each image's k captions drawn per epoch).
    ``callback(step, loss)`` runs every ``callback_every`` steps (e.g. to probe the model while it learns).

    Returns:
        A record: losses per step, steps, seconds.
    """
    pc = cfg.pretrain
    model = backbone.model.requires_grad_(True).train()
    with torch.no_grad():
        model.logit_scale.fill_(pc.logit_scale_init)
    mean, std = _norm_stats(model)
    gen = torch.Generator().manual_seed(cfg.run.seed)
    n, k = data.tokens.shape[:2]
    steps_per_epoch = n // pc.batch_size
    total = steps_per_epoch * pc.epochs
    opts = _optimizers(model, pc)
    losses: list[float] = []
    t0 = time.time()
    bar = tqdm(total=total, desc="pretrain CLIP", disable=not progress, mininterval=2)
    for epoch in range(pc.epochs):
        order = _epoch_order(data.families, gen, pc.family_batches)
        which = torch.randint(0, k, (n,), generator=gen)
        for s in range(steps_per_epoch):
            idx = order[s * pc.batch_size:(s + 1) * pc.batch_size]
            step = epoch * steps_per_epoch + s
            for opt in opts:
                for g in opt.param_groups:
                    g["lr"] = _lr_at(step, total, pc)
            loss = batch_loss(model, data, idx, which[idx], pc.hard_negatives, mean, std)
            for opt in opts:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            for opt in opts:
                opt.step()
            losses.append(loss.item())
            bar.update(1)
            if callback is not None and (step + 1) % callback_every == 0:
                callback(step + 1, float(np.mean(losses[-callback_every:])))
            if s % 10 == 0:
                bar.set_postfix(epoch=epoch, loss=f"{np.mean(losses[-20:]):.3f}",
                                scale=f"{model.logit_scale.detach().exp().item():.1f}")
    bar.close()
    model.token_embedding.sparse = False
    model.eval().requires_grad_(False)
    return {"losses": losses, "steps": total, "seconds": time.time() - t0}


def pretrain_clip(cfg: StudyConfig, out_dir: str | Path | None = None, world_root: str | Path | None = None,
                  force: bool = False, progress: bool = True,
                  log: Callable[[str], None] | None = None) -> Path:
    """Train (or reuse) the tiny CLIP of ``cfg.model.name`` on the embedded world; return the checkpoint path.

    Builds the world first if needed (``build_world`` is idempotent). Random init; ``cfg.model.pretrained`` and
    ``cfg.model.checkpoint`` are ignored. Set ``model.checkpoint`` to the returned path to use the weights.
    """
    log = log or (lambda m: None)
    ckpt, meta_path = checkpoint_paths(cfg, out_dir)
    key = pretrain_key(cfg)
    if not force and ckpt.is_file() and meta_path.is_file():
        try:
            if json.loads(meta_path.read_text()).get("key") == key:
                log(f"reusing {ckpt}")
                return ckpt
        except json.JSONDecodeError:
            pass
    root = Path(world_root if world_root is not None else cfg.world.root)
    t0 = time.time()
    manifest = build_world(cfg.world, root)
    t_world = time.time() - t0
    if cfg.pretrain.shipped and not force:
        from .weights import restore
        if restore(cfg, ckpt, root, log):
            return ckpt
    torch.set_num_threads(2)
    torch.manual_seed(cfg.run.seed)
    backbone = create_backbone(dataclasses.replace(cfg.model, pretrained=None, checkpoint=None), "cpu")
    t1 = time.time()
    data = prepare_data(backbone, root, manifest["domains"])
    t_load = time.time() - t1
    log(f"pretraining {cfg.model.name} on {data.images.shape[0]} images")
    before = evaluate_loss(backbone, data, cfg)
    record = train_clip(backbone, data, cfg, progress)
    after = evaluate_loss(backbone, data, cfg)
    save_clip_checkpoint(backbone.model, ckpt)
    losses = record.pop("losses")
    meta = {"key": key, "checkpoint": ckpt.name, "model": cfg.model.name, "world_hash": manifest["config_hash"],
            "pretrain": dataclasses.asdict(cfg.pretrain), "seed": cfg.run.seed, "pairs": int(data.images.shape[0]),
            "fixed_batch_loss": {"before": round(before, 4), "after": round(after, 4)},
            "loss_first": float(np.mean(losses[:20])), "loss_last": float(np.mean(losses[-20:])),
            "loss_curve": [round(float(np.mean(losses[i:i + 20])), 4) for i in range(0, len(losses), 20)],
            "seconds": {"world": round(t_world, 2), "load": round(t_load, 2),
                        "train": round(record["seconds"], 2)},
            "steps": record["steps"], "torch_threads": torch.get_num_threads()}
    atomic_write_text(meta_path, json.dumps(meta, indent=1))
    log(f"saved {ckpt} (loss {meta['loss_first']:.3f} -> {meta['loss_last']:.3f})")
    return ckpt
