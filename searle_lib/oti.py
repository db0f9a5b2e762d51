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
- ``fast``: the same computation without the waste (``_oti_fast``): every string tokenized once per run and
  every step's rows and truncation length fixed before the loop (no host work per step); each prompt's part
  before the placeholder (which never sees the pseudo-token) computed once, and each step only the positions
  from the placeholder to end-of-text (exact: the text tower is causal, see ``text_encoding``), each step's
  rows packed so that each prompt is computed only to its own end-of-text; in the last
  block only the pooled end-of-text position; each plain phrase encoded once per run; bf16 autocast on
  CUDA, large batches, fused AdamW; ``torch.compile`` behind a flag. Equal to ``reference`` up to rounding
  (``tests/test_oti.py``: 1e-5 after 12 steps; ``benchmarks/oti.py`` reports the difference it measures).

Deliberate deviation (documented in the book): every image draws its init, templates and phrases from its own
random stream, seeded by (run seed, image name), instead of one global stream. Then an image's token does not
depend on batch size, sharding or the point a run resumed from, and the two paths can be compared image by image.
Per-image gradients are scaled as in a mean over ``loss_batch`` (32) images, so a batch of any size gives each
image the update it gets in an official batch of 32.
"""
from __future__ import annotations

import hashlib
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .backbones import Backbone
from .chunkstore import ChunkStore, dist_info, save_tensors_atomic
from .config import OTIConfig
from .distributed import barrier, gather_rows
from ._oti_fast import PARALLEL_FROM, FeatureCache, PhrasePool, StepRows, TokenCache, TokenTable, tower_for
from .text_encoding import encode_tokens

PLACEHOLDER_PROMPT = " $ "
OTI_KEYS = ("tokens", "ema_tokens", "loss")


def image_generator(seed: int, image_id: str) -> torch.Generator:
    """The random stream of one image: seeded from the run seed and the image's name."""
    digest = hashlib.sha256(f"{seed}:{image_id}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def replace_concept(phrase: str, concept: str, mode: str = "first") -> str:
    """Put ``" $ "`` in place of the first (OTI) or every (phi) occurrence of ``concept`` (official code)."""
    return phrase.replace(concept, PLACEHOLDER_PROMPT, 1 if mode == "first" else -1)


def phrase_pool(concepts: Sequence[str], phrases: Mapping[str, Sequence[str]] | None) -> PhrasePool:
    """(phrase, concept) pairs of an image's usable concepts, in concept order (official pooling), as a sequence."""
    return PhrasePool(concepts, phrases)


@dataclass
class ImagePlan:
    """Everything random about one image's inversion, drawn from its own stream."""

    init: torch.Tensor  # [d]
    templates: torch.Tensor  # [steps] template index per step
    phrases: torch.Tensor  # [steps] index into ``pool`` per step (-1 when the pool is empty)
    pool: PhrasePool  # (phrase, concept) pairs; an empty one (or []) means no GPT regularisation


def plan_image(image_id: str, seed: int, dim: int, n_templates: int, pool: PhrasePool,
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


class FastContext:
    """What the fast path keeps for a whole run: the text tower, the template table, token and phrase caches."""

    def __init__(self, backbone: Backbone, templates: Sequence[str], template_tokens: torch.Tensor | None = None,
                 compile: bool | str = False, tokenizer_workers: int = 0, split_prefix: bool = True,
                 pack_rows: bool = True):
        if template_tokens is None:
            template_tokens = backbone.tokenize([t.format(PLACEHOLDER_PROMPT) for t in templates])
        self.backbone = backbone
        self.tower = tower_for(backbone, compile)
        self.split_prefix = split_prefix and self.tower.functional
        self.pack_rows = pack_rows
        self.templates = self.table(template_tokens)
        self.tokens = TokenCache(backbone.tokenizer, workers=tokenizer_workers)
        self.plain = FeatureCache(self.tower, self.tokens)

    def table(self, tokens: torch.Tensor) -> TokenTable:
        """Placeholder prompts, split at the placeholder when the tower allows (prefix computed once)."""
        return TokenTable(self.backbone, tokens, split_prefix=self.split_prefix)

    def close(self) -> None:
        self.tokens.close()


def _phrase_rows(plans: list[ImagePlan]) -> tuple[list[tuple[str, str]], torch.Tensor]:
    """The distinct (phrase, concept) pairs the batch draws, and each image's per-step row among them."""
    slot: dict[tuple[str, str], int] = {}
    rows = []
    for p in plans:
        if not p.pool:
            rows.append(np.zeros(len(p.phrases), dtype=np.int64))
            continue
        uniq, inv = np.unique(p.phrases.numpy(), return_inverse=True)
        ids = np.fromiter((slot.setdefault(pair, len(slot)) for pair in p.pool.pairs(uniq)), np.int64, len(uniq))
        rows.append(ids[inv.reshape(-1)])
    return list(slot), torch.from_numpy(np.stack(rows))


def _phrase_lists(plans: list[ImagePlan]) -> dict[str, Sequence[str]]:
    """Each concept's phrase list among the batch's pools: the groups its plain phrases are encoded in."""
    return {c: ps for p in plans if p.pool for c, ps in zip(p.pool.concepts, p.pool.lists)}


def prepare_fast_batch(ctx: FastContext, plans: list[ImagePlan], t_idx: torch.Tensor, use_gpt: bool,
                       amp: torch.dtype | None, phrase_rows: tuple | None = None
                       ) -> tuple[StepRows, StepRows | None, torch.Tensor | None]:
    """The fast path's per-batch set-up: every step's template rows and, with GPT regularisation, every step's
    placeholder-phrase rows and the plain phrases' features (``[n_keys, d]``; each computed once per run)."""
    t_steps = StepRows(ctx.templates, t_idx, ctx.pack_rows)
    if not use_gpt:
        return t_steps, None, None
    keys, u_idx = phrase_rows or _phrase_rows(plans)
    p_steps = StepRows(ctx.table(ctx.tokens.stack([replace_concept(p, c) for p, c in keys])), u_idx, ctx.pack_rows)
    dev = ctx.backbone.device
    with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
        plain = ctx.plain.get(keys, _phrase_lists(plans))
    return t_steps, p_steps, plain


def invert_batch(backbone: Backbone, image_features: torch.Tensor, plans: list[ImagePlan], templates: list[str],
                 cfg: OTIConfig, template_tokens: torch.Tensor | None = None, progress: bool = False,
                 fast_context: FastContext | None = None,
                 phrase_rows: tuple[list[tuple[str, str]], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Invert one batch of images; returns ``tokens``, ``ema_tokens`` ([B, d], float32, CPU) and ``loss`` ([B]).

    ``fast_context``: the fast path's run-wide state (``run_oti`` passes one; made here when absent).
    ``phrase_rows``: ``_phrase_rows(plans)`` when the caller already has it.
    """
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
    if fast:  # every step's rows and truncation length are known before the loop: no host work per step
        ctx = fast_context or FastContext(backbone, templates, template_tokens)
        t_steps, p_steps, plain = prepare_fast_batch(ctx, plans, t_idx, use_gpt, amp, phrase_rows)
    last = torch.zeros(B, device=dev)
    for step in tqdm(range(cfg.steps), disable=not progress, desc="OTI steps", leave=False):
        with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
            if fast:
                l_cos = _cos_loss(t_steps.features(ctx.tower, step, v), f_img)
            else:  # official cost: build and tokenize the strings every step, full context length
                t_tok = backbone.tokenize([templates[int(j)].format(PLACEHOLDER_PROMPT) for j in t_idx[:, step]])
                l_cos = _cos_loss(encode_tokens(backbone, t_tok, v, truncate_batch=False), f_img)
            loss_rows = cfg.lambda_cos * l_cos
            if use_gpt:
                if fast:
                    l_gpt = _cos_loss(p_steps.features(ctx.tower, step, v), plain[p_steps.rows[step]])
                else:
                    picked = [p.pool[int(p.phrases[step])] if p.pool else _any_phrase(plans)
                              for p in plans]
                    p_tok = backbone.tokenize([replace_concept(p, c) for p, c in picked])
                    with torch.no_grad():
                        target = encode_tokens(backbone, backbone.tokenize([p for p, _ in picked]),
                                               truncate_batch=False)
                    l_gpt = _cos_loss(encode_tokens(backbone, p_tok, v, truncate_batch=False), target)
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
    if fast and fast_context is None:
        ctx.close()
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
            config_hash: str = "", force_restart: bool = False, progress: bool = True,
            compile: bool | str | None = None, tokenizer_workers: int | None = None,
            split_prefix: bool = True, pack_rows: bool = True) -> OTIResult:
    """Invert every image; with ``out_dir``, results go to resumable chunks and merge to ``oti_tokens.safetensors``.

    Under ``torchrun`` (an initialised ``torch.distributed`` group) each process inverts its share of the chunks
    (chunk k on rank k mod world size); every rank returns the merged result, rank 0 writes the merged file.
    Without ``out_dir`` the shares are all-gathered instead of merged through files.

    Args:
        image_features: raw CLIP image features, row i for ``ids[i]``.
        image_concepts: image id -> ranked concept names (top-250 CSV rows); its first ``cfg.top_k_concepts``
            (stripped, deduplicated) are used. ``None``: no GPT regularisation.
        phrases: usable concept -> phrases (the official filtering already applied). ``None``: no regularisation.
        compile: fast path only: ``torch.compile`` the text tower (True, or a mode such as "max-autotune");
            default ``cfg.compile`` when the config has it, else off. Results equal the eager path's to rounding.
        tokenizer_workers: fast path: processes that tokenize new phrases, the next batch's while the current
            one runs; they start in the background at once (default: 0 on CPU, where the cores are busy with the
            model, and for runs too small to use them; up to 8 on CUDA).
        split_prefix: fast path: compute each prompt's part before the placeholder once (``_oti_fast``); off only
            to measure what it saves.
        pack_rows: fast path: each step's rows computed only up to their own end (``StepRows``); off runs
            them all at the step's longest, only to measure what packing saves.
    """
    ids = list(ids)
    templates = list(templates)
    template_tokens = backbone.tokenize([t.format(PLACEHOLDER_PROMPT) for t in templates])
    if compile is None:
        compile = getattr(cfg, "compile", False)
    if tokenizer_workers is None:  # worth their start (seconds) when a batch's strings would go to them
        big = 2 * min(len(ids), cfg.batch_size) * cfg.steps >= PARALLEL_FROM  # per image-step: 2 phrase strings
        tokenizer_workers = min(8, (os.cpu_count() or 1) // 2) if backbone.device.type == "cuda" and big else 0
    ctx = None if cfg.mode != "fast" else FastContext(backbone, templates, template_tokens, compile,
                                                      tokenizer_workers, split_prefix, pack_rows)
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

    memo: dict[tuple[str, ...], tuple] = {}

    def planned(batch: Sequence[str]) -> tuple[list[ImagePlan], tuple | None]:
        """Plans of a batch and, for the fast path, its phrase rows (kept for the batch after the current one)."""
        key = tuple(batch)
        if key not in memo:
            plans = plans_for(batch)
            rows = _phrase_rows(plans) if ctx is not None and cfg.lambda_gpt > 0 and any(p.pool for p in plans) \
                else None
            if len(memo) > 2:
                memo.clear()
            memo[key] = (plans, rows)
        return memo[key]

    def prefetch(batch: Sequence[str]) -> None:
        """Tokenize the next batch's phrases in the worker processes while this batch runs."""
        if ctx is None or ctx.tokens.workers <= 1 or not batch:
            return
        plans, rows = planned(batch)
        if rows is not None:  # the drawn phrases with the placeholder, and the plain groups not encoded yet
            ctx.tokens.prefetch([replace_concept(p, c) for p, c in rows[0]] + ctx.plain.unencoded(_phrase_lists(plans)))

    def invert(chunk_ids: Sequence[str], upcoming: Sequence[str] = ()) -> dict[str, torch.Tensor]:
        parts = []
        for b in range(0, len(chunk_ids), cfg.batch_size):
            batch = chunk_ids[b:b + cfg.batch_size]
            plans, rows = planned(batch)
            prefetch(batch)  # queued before the next batch's (a no-op when the previous batch prefetched it)
            prefetch(chunk_ids[b + cfg.batch_size:b + 2 * cfg.batch_size] or upcoming[:cfg.batch_size])
            parts.append(invert_batch(backbone, torch.stack([feats[i] for i in batch]), plans, templates, cfg,
                                      template_tokens, fast_context=ctx, phrase_rows=rows))
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    try:
        return _run(ids, invert, cfg, out_dir, config_hash, force_restart, progress)
    finally:
        if ctx is not None:
            ctx.close()


def _run(ids: list[str], invert, cfg: OTIConfig, out_dir: str | Path | None, config_hash: str,
         force_restart: bool, progress: bool) -> OTIResult:
    rank, world = dist_info()
    if out_dir is None:  # batch j on rank j mod world, all-gathered
        starts = list(range(0, len(ids), cfg.batch_size))[rank::world]
        mine = [i for b in starts for i in range(b, min(b + cfg.batch_size, len(ids)))]
        parts = []
        bar = tqdm(total=len(mine), disable=not progress, desc="OTI images")
        for j, b in enumerate(starts):
            upcoming = ids[starts[j + 1]:starts[j + 1] + cfg.batch_size] if j + 1 < len(starts) else ()
            parts.append(invert(ids[b:b + cfg.batch_size], upcoming))
            bar.update(len(parts[-1]["loss"]))
        bar.close()
        local = {k: torch.cat([p[k] for p in parts]) if parts else torch.zeros(0) for k in OTI_KEYS}
        full = gather_rows(len(ids), mine, local)
        return OTIResult(ids, *(full[k] for k in OTI_KEYS))

    out_dir = Path(out_dir)
    chunk = max(cfg.chunk_images, cfg.batch_size)
    store = ChunkStore.open(out_dir / "chunks", ids, chunk, config_hash, "oti", force_restart)
    todo = list(store.pending())
    bar = tqdm(total=sum(len(store.chunk_ids(k)) for k in todo), disable=not progress, desc="OTI images")
    for j, k in enumerate(todo):
        store.write(k, invert(store.chunk_ids(k), store.chunk_ids(todo[j + 1]) if j + 1 < len(todo) else ()))
        bar.update(len(store.chunk_ids(k)))
    bar.close()
    barrier()
    merged = store.merge()
    result = OTIResult(ids, *(merged[k] for k in OTI_KEYS))
    if rank == 0:
        save_oti(result, out_dir / "oti_tokens.safetensors")
    barrier()
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
