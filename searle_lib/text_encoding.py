"""CLIP text encoding with a pseudo-word injected (SEARLE section 3.1; official ``encode_with_pseudo_tokens.py``).

The prompt holds the placeholder ``$``; the word embedding at its **first** occurrence is overwritten with the
pseudo-token v, then the standard CLIP text transformer runs, features are pooled at end-of-text and projected.
Outputs are not normalised (callers normalise), as in the official code.

Exact truncation (our speed-up, issue 6): CLIP's text tower is causal and pools at end-of-text, so positions after
the longest end-of-text token of a batch never reach a pooled feature. ``encode_tokens(..., truncate=True)`` runs
only up to that position; the result equals the full 77-token pass up to floating-point summation order.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import Backbone


def _pool_type(text: nn.Module) -> str:
    return getattr(text, "text_pool_type", None) or getattr(text, "pool_type", "argmax")


def supports_truncation(backbone: Backbone) -> bool:
    """True when the text tower is causal and pools at end-of-text (OpenAI-style CLIP)."""
    t = backbone.text
    return getattr(t, "attn_mask", None) is not None and _pool_type(t) in ("argmax", "eos")


def sequence_lengths(tokens: torch.Tensor) -> torch.Tensor:
    """Position of the last non-padding token + 1 for each row (padding id 0, as open_clip's tokenizer)."""
    nonzero = tokens != 0
    idx = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
    return (torch.where(nonzero, idx, -1).max(dim=1).values + 1).clamp(min=1)


def truncate(tokens: torch.Tensor) -> torch.Tensor:
    """Cut a token batch to its longest sequence (exact for causal, end-of-text-pooled towers)."""
    return tokens[:, : int(sequence_lengths(tokens).max())]


def inject(embeddings: torch.Tensor, tokens: torch.Tensor, pseudo_tokens: torch.Tensor,
           placeholder_id: int) -> torch.Tensor:
    """Replace the word embedding at each row's first ``placeholder_id`` with that row's pseudo-token.

    Differentiable in ``pseudo_tokens``; ``pseudo_tokens`` is ``[B, d]`` or ``[1, d]`` (broadcast).
    """
    is_ph = tokens == placeholder_id
    if not bool(is_ph.any(dim=1).all()):
        bad = int((~is_ph.any(dim=1)).nonzero()[0])
        raise ValueError(f"prompt {bad} of the batch has no placeholder token (id {placeholder_id}); write ' $ ' "
                         "where the pseudo-word goes")
    first = F.one_hot(is_ph.int().argmax(dim=1), tokens.shape[1]).bool().unsqueeze(-1)  # [B, L, 1]
    return torch.where(first, pseudo_tokens.to(embeddings.dtype).unsqueeze(1), embeddings)


def encode_tokens(backbone: Backbone, tokens: torch.Tensor, pseudo_tokens: torch.Tensor | None = None,
                  truncate_batch: bool = True) -> torch.Tensor:
    """Text features of ``tokens`` ([B, L] ids), with ``pseudo_tokens`` injected at the placeholder if given.

    Works for open_clip ``CLIP`` and ``CustomTextCLIP`` with a ``TextTransformer`` (no CLS embedding).
    """
    t = backbone.text
    if getattr(t, "cls_emb", None) is not None or not hasattr(t, "token_embedding"):
        raise NotImplementedError(f"{backbone.name}: pseudo-word injection needs an OpenAI-style text tower "
                                  "(token_embedding, positional_embedding, transformer, ln_final)")
    tokens = tokens.to(backbone.device)
    if truncate_batch and supports_truncation(backbone):
        tokens = truncate(tokens)
    L = tokens.shape[1]
    cast = t.transformer.get_cast_dtype() if hasattr(t.transformer, "get_cast_dtype") else torch.float32
    x = t.token_embedding(tokens).to(cast)
    if pseudo_tokens is not None:
        x = inject(x, tokens, pseudo_tokens.to(backbone.device), backbone.placeholder_id)
    x = x + t.positional_embedding[:L].to(cast)
    mask = getattr(t, "attn_mask", None)
    x = t.transformer(x, attn_mask=None if mask is None else mask[:L, :L])
    x = t.ln_final(x)
    pool = _pool_type(t)
    rows = torch.arange(x.shape[0], device=x.device)
    if pool == "argmax":
        x = x[rows, tokens.argmax(dim=-1)]
    elif pool == "eos":
        x = x[rows, (tokens == getattr(t, "eos_id", getattr(t, "text_eos_id", None))).int().argmax(dim=-1)]
    elif pool == "last":
        x = x[:, -1]
    else:
        x = x[:, 0]
    proj = t.text_projection
    if proj is not None:
        x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
    return x


@torch.no_grad()
def encode_texts(backbone: Backbone, texts: Sequence[str], batch_size: int = 256, normalize: bool = False,
                 progress: bool = False) -> torch.Tensor:
    """Plain CLIP text features of ``texts`` (float32, on CPU), in batches, sorted by length for speed."""
    from tqdm.auto import tqdm
    if not texts:
        return torch.zeros(0, backbone.feature_dim)
    tokens = backbone.tokenize(list(texts))
    lengths = sequence_lengths(tokens)
    order = torch.argsort(lengths, descending=True)
    out = torch.empty(len(texts), backbone.feature_dim)
    for i in tqdm(range(0, len(texts), batch_size), disable=not progress, desc="encode texts"):
        idx = order[i:i + batch_size]
        out[idx] = encode_tokens(backbone, tokens[idx]).float().cpu()
    return F.normalize(out, dim=-1) if normalize else out


def encode_with_pseudo(backbone: Backbone, texts: Sequence[str], pseudo_tokens: torch.Tensor,
                       batch_size: int = 256) -> torch.Tensor:
    """Features of prompts holding ``$`` with row i's pseudo-token injected (grad flows to ``pseudo_tokens``)."""
    tokens = backbone.tokenize(list(texts))
    chunks = [encode_tokens(backbone, tokens[i:i + batch_size], pseudo_tokens[i:i + batch_size])
              for i in range(0, len(texts), batch_size)]
    return torch.cat(chunks) if chunks else torch.zeros(0, backbone.feature_dim)
