"""Optimization-based Textual Inversion, OTI (SEARLE section 3.1; official ``oti_inversion.py``).

For each image, a pseudo-token v (one row of a ``[B, d]`` parameter, init N(0, 0.02^2)) is optimised for 350
AdamW steps (lr 2e-2, wd 0.01) so that

    L = (l_cos * L_cos + l_gpt * L_gpt) / (l_cos + l_gpt),   l_cos = 1, l_gpt = 0.5
    L_cos = 1 - cos(E_T*(template(" $ "), v), f_I)             template drawn per step from the 24
    L_gpt = 1 - cos(E_T*(phrase with its concept -> " $ ", v), E_T(phrase))   phrase drawn per step

with the phrases pooled from the image's top-15 usable concepts; the CLIP model stays frozen and the EMA of v
(decay 0.99, starting at the initial v) is the output.

Two paths with identical randomness:
- ``reference``: the official loop's cost: strings built and tokenized every step, full 77-token sequences,
  plain-phrase features recomputed every step, fp16 autocast + GradScaler on CUDA, batch 32.
- ``fast``: templates and phrases tokenized once, each batch cut to its longest prompt (exact, see
  ``text_encoding``), each plain phrase encoded once, bf16 autocast on CUDA, large batches, fused AdamW.

Deliberate deviation (documented in the book): every image draws its init, templates and phrases from its own
random stream, seeded by (run seed, image name), instead of one global stream. Then an image's token does not
depend on batch size, sharding or the point a run resumed from, and the two paths can be compared image by image.
Per-image gradients are scaled as in a mean over ``loss_batch`` (32) images, so a batch of any size gives each
image the update it gets in an official batch of 32.
"""
from __future__ import annotations

import hashlib
import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .backbones import Backbone
from .chunkstore import ChunkStore, dist_info, save_tensors_atomic
from .config import OTIConfig
from .text_encoding import encode_texts, encode_tokens

PLACEHOLDER_PROMPT = " $ "


def image_generator(seed: int, image_id: str) -> torch.Generator:
    """The random stream of one image: seeded from the run seed and the image's name."""
    digest = hashlib.sha256(f"{seed}:{image_id}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def replace_concept(phrase: str, concept: str, mode: str = "first") -> str:
    """Put ``" $ "`` in place of the first (OTI) or every (phi) occurrence of ``concept`` (official code)."""
    return phrase.replace(concept, PLACEHOLDER_PROMPT, 1 if mode == "first" else -1)


def phrase_pool(concepts: Sequence[str], phrases: Mapping[str, Sequence[str]] | None) -> list[tuple[str, str]]:
    """(phrase, concept) pairs of an image's usable concepts, in concept order (official pooling)."""
    if not phrases:
        return []
    return [(p, c) for c in concepts if c in phrases for p in phrases[c]]


@dataclass
class ImagePlan:
    """Everything random about one image's inversion, drawn from its own stream."""

    init: torch.Tensor  # [d]
    templates: torch.Tensor  # [steps] template index per step
    phrases: torch.Tensor  # [steps] index into ``pool`` per step (-1 when the pool is empty)
    pool: list[tuple[str, str]]


def plan_image(image_id: str, seed: int, dim: int, n_templates: int, pool: list[tuple[str, str]],
               cfg: OTIConfig) -> ImagePlan:
    g = image_generator(seed, image_id)
    init = torch.randn(dim, generator=g) * cfg.init_std
    templates = torch.randint(n_templates, (cfg.steps,), generator=g)
    phrases = (torch.randint(len(pool), (cfg.steps,), generator=g) if pool
               else torch.full((cfg.steps,), -1, dtype=torch.long))
    return ImagePlan(init, templates, phrases, pool)


def _autocast_dtype(cfg: OTIConfig, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or cfg.precision == "fp32":
        return None
    if cfg.precision == "auto":
        return torch.float16 if cfg.mode == "reference" else torch.bfloat16
    return {"fp16": torch.float16, "bf16": torch.bfloat16}[cfg.precision]


def _cos_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 1 - F.cosine_similarity(a.float(), b.float(), dim=-1)


def invert_batch(backbone: Backbone, image_features: torch.Tensor, plans: list[ImagePlan], templates: list[str],
                 cfg: OTIConfig, template_tokens: torch.Tensor | None = None,
                 progress: bool = False) -> dict[str, torch.Tensor]:
    """Invert one batch of images; returns ``tokens``, ``ema_tokens`` ([B, d], float32, CPU) and ``loss`` ([B])."""
    dev = backbone.device
    fast = cfg.mode == "fast"
    if cfg.mode not in ("fast", "reference"):
        raise ValueError(f"oti.mode={cfg.mode!r}: expected 'fast' or 'reference'")
    B = len(plans)
    use_gpt = cfg.lambda_gpt > 0 and any(p.pool for p in plans)
    f_img = image_features.to(dev).float()
    v = torch.nn.Parameter(torch.stack([p.init for p in plans]).to(dev))
    ema = v.detach().clone()
    opt = torch.optim.AdamW([v], lr=cfg.lr, weight_decay=cfg.weight_decay,
                            fused=fast and dev.type == "cuda")
    amp = _autocast_dtype(cfg, dev)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    t_idx = torch.stack([p.templates for p in plans])  # [B, steps]
    has_phrase = torch.tensor([bool(p.pool) for p in plans], device=dev)
    weight_gpt = cfg.lambda_gpt * has_phrase.float()
    if fast:
        if template_tokens is None:
            template_tokens = backbone.tokenize([t.format(PLACEHOLDER_PROMPT) for t in templates])
        template_tokens = template_tokens.to(dev)
        if use_gpt:  # encode every phrase this batch will ever draw once, instead of every step
            used = {(i, int(j)) for i, p in enumerate(plans) for j in p.phrases.unique() if j >= 0}
            keys = sorted({plans[i].pool[j] for i, j in used})
            slot = {k: n for n, k in enumerate(keys)}
            u_idx = torch.stack([torch.tensor([slot[p.pool[j]] if j >= 0 else 0 for j in p.phrases.tolist()])
                                 for p in plans]).to(dev)
            pseudo_tokens = backbone.tokenize([replace_concept(p, c) for p, c in keys]).to(dev)
            with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
                plain = encode_texts(backbone, [p for p, _ in keys], batch_size=1024).to(dev)
    last = torch.zeros(B, device=dev)
    for step in tqdm(range(cfg.steps), disable=not progress, desc="OTI steps", leave=False):
        with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
            if fast:
                t_tok = template_tokens[t_idx[:, step].to(dev)]
            else:  # official cost: build and tokenize the strings every step, full context length
                t_tok = backbone.tokenize([templates[int(j)].format(PLACEHOLDER_PROMPT) for j in t_idx[:, step]])
            l_cos = _cos_loss(encode_tokens(backbone, t_tok, v, truncate_batch=fast), f_img)
            loss_rows = cfg.lambda_cos * l_cos
            if use_gpt:
                if fast:
                    rows = u_idx[:, step]
                    target, p_tok = plain[rows], pseudo_tokens[rows]
                else:
                    picked = [p.pool[int(p.phrases[step])] if p.pool else _any_phrase(plans)
                              for p in plans]
                    p_tok = backbone.tokenize([replace_concept(p, c) for p, c in picked])
                    with torch.no_grad():
                        target = encode_tokens(backbone, backbone.tokenize([p for p, _ in picked]),
                                               truncate_batch=False)
                l_gpt = _cos_loss(encode_tokens(backbone, p_tok, v, truncate_batch=fast), target)
                loss_rows = loss_rows + weight_gpt * l_gpt
            loss_rows = loss_rows / (cfg.lambda_cos + cfg.lambda_gpt)
            loss = loss_rows.sum() / cfg.loss_batch
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        with torch.no_grad():
            ema.mul_(cfg.ema_decay).add_(v.detach(), alpha=1 - cfg.ema_decay)
        last = loss_rows.detach()
    return {"tokens": v.detach().float().cpu(), "ema_tokens": ema.float().cpu(), "loss": last.float().cpu()}


def _any_phrase(plans: list[ImagePlan]) -> tuple[str, str]:
    """A phrase for an image without phrases in the reference path (its L_gpt term is weighted 0)."""
    return next(p.pool[0] for p in plans if p.pool)


@dataclass
class OTIResult:
    ids: list[str]
    tokens: torch.Tensor  # [N, d] raw OTI tokens
    ema_tokens: torch.Tensor  # [N, d] EMA tokens: the ones SEARLE uses downstream
    loss: torch.Tensor  # [N] last-step loss per image

    def by_id(self, ema: bool = True) -> dict[str, torch.Tensor]:
        t = self.ema_tokens if ema else self.tokens
        return {i: t[n] for n, i in enumerate(self.ids)}


def run_oti(backbone: Backbone, ids: Sequence[str], image_features: torch.Tensor,
            image_concepts: Mapping[str, Sequence[str]] | None, phrases: Mapping[str, Sequence[str]] | None,
            templates: Sequence[str], cfg: OTIConfig, *, seed: int = 42, out_dir: str | Path | None = None,
            config_hash: str = "", force_restart: bool = False, progress: bool = True) -> OTIResult:
    """Invert every image; with ``out_dir``, results go to resumable chunks and merge to ``oti_tokens.safetensors``.

    Args:
        image_features: raw CLIP image features, row i for ``ids[i]``.
        image_concepts: image id -> ranked concept names (top-250 CSV rows); its first ``cfg.top_k_concepts``
            (stripped, deduplicated) are used. ``None``: no GPT regularisation.
        phrases: usable concept -> phrases (the official filtering already applied). ``None``: no regularisation.
    """
    ids = list(ids)
    templates = list(templates)
    template_tokens = backbone.tokenize([t.format(PLACEHOLDER_PROMPT) for t in templates])
    feats = {i: image_features[n] for n, i in enumerate(ids)}

    def plans_for(chunk_ids: Sequence[str]) -> list[ImagePlan]:
        out = []
        for i in chunk_ids:
            concepts = []
            if image_concepts is not None and phrases:
                ranked = image_concepts.get(i)
                if ranked is None:
                    raise KeyError(f"no concepts for image {i!r}: the concept file belongs to other images; "
                                   "rerun concept association for this image set")
                concepts = list(dict.fromkeys(c.strip() for c in ranked[:cfg.top_k_concepts]))
            out.append(plan_image(i, seed, backbone.token_dim, len(templates), phrase_pool(concepts, phrases), cfg))
        return out

    def invert(chunk_ids: Sequence[str]) -> dict[str, torch.Tensor]:
        parts = []
        for b in range(0, len(chunk_ids), cfg.batch_size):
            batch = chunk_ids[b:b + cfg.batch_size]
            parts.append(invert_batch(backbone, torch.stack([feats[i] for i in batch]), plans_for(batch),
                                      templates, cfg, template_tokens))
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    if out_dir is None:
        res = {k: [] for k in ("tokens", "ema_tokens", "loss")}
        bar = tqdm(total=len(ids), disable=not progress, desc="OTI images")
        for b in range(0, len(ids), cfg.batch_size):
            r = invert(ids[b:b + cfg.batch_size])
            for k in res:
                res[k].append(r[k])
            bar.update(len(r["loss"]))
        bar.close()
        return OTIResult(ids, *(torch.cat(res[k]) for k in ("tokens", "ema_tokens", "loss")))

    out_dir = Path(out_dir)
    chunk = max(cfg.chunk_images, cfg.batch_size)
    store = ChunkStore.open(out_dir / "chunks", ids, chunk, config_hash, "oti", force_restart)
    todo = list(store.pending())
    bar = tqdm(total=len(ids), initial=len(ids) - sum(len(store.chunk_ids(k)) for k in todo),
               disable=not progress, desc="OTI images")
    for k in todo:
        store.write(k, invert(store.chunk_ids(k)))
        bar.update(len(store.chunk_ids(k)))
    bar.close()
    rank, world = dist_info()
    if world > 1:
        torch.distributed.barrier()
    merged = store.merge()
    result = OTIResult(ids, merged["tokens"], merged["ema_tokens"], merged["loss"])
    if rank == 0:
        save_oti(result, out_dir / "oti_tokens.safetensors")
    return result


def save_oti(result: OTIResult, path: str | Path) -> Path:
    import json
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_tensors_atomic(path, {"tokens": result.tokens, "ema_tokens": result.ema_tokens, "loss": result.loss},
                        {"ids": json.dumps(result.ids)})
    return path


def load_oti(path: str | Path) -> OTIResult:
    """Load ``oti_tokens.safetensors`` (ours) or an official folder (image_names.pkl + *_pseudo_tokens.pt)."""
    import json
    from safetensors import safe_open
    path = Path(path)
    if path.is_dir() and (path / "image_names.pkl").is_file():
        return load_official_oti(path)
    if not path.is_file():
        raise FileNotFoundError(f"OTI tokens {path} not found; run `searle oti` first or fix the path")
    with safe_open(str(path), "pt") as f:
        ids = json.loads(f.metadata()["ids"])
        t = {k: f.get_tensor(k) for k in f.keys()}
    return OTIResult(ids, t["tokens"], t["ema_tokens"], t.get("loss", torch.full((len(ids),), math.nan)))


def export_official_oti(result: OTIResult, folder: str | Path) -> Path:
    """Write the official layout: ``image_names.pkl``, ``oti_pseudo_tokens.pt``, ``ema_oti_pseudo_tokens.pt``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "image_names.pkl", "wb") as f:
        pickle.dump(list(result.ids), f)
    torch.save(result.tokens.clone(), folder / "oti_pseudo_tokens.pt")
    torch.save(result.ema_tokens.clone(), folder / "ema_oti_pseudo_tokens.pt")
    return folder


def load_official_oti(folder: str | Path) -> OTIResult:
    """Read the official layout safely (restricted unpickler, ``torch.load(weights_only=True)``)."""
    from .safe_pickle import safe_load_pickle
    folder = Path(folder)
    names = safe_load_pickle(folder / "image_names.pkl")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{folder / 'image_names.pkl'}: expected a list of image names")
    tokens = torch.load(folder / "oti_pseudo_tokens.pt", weights_only=True, map_location="cpu")
    ema = torch.load(folder / "ema_oti_pseudo_tokens.pt", weights_only=True, map_location="cpu")
    if tokens.shape[0] != len(names) or ema.shape != tokens.shape:
        raise ValueError(f"{folder}: {len(names)} names but token tensors of shape {tuple(tokens.shape)} / "
                         f"{tuple(ema.shape)}")
    return OTIResult(names, tokens.float(), ema.float(), torch.full((len(names),), math.nan))
