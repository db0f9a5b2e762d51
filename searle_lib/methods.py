"""Zero-shot CIR methods behind one interface: each turns a split's queries into L2-normalised query features.

- ``searle`` / ``searle-oti``: "a photo of $ that {caption}" with the reference's pseudo-token from phi or from OTI
  (SEARLE section 4; official ``validate.py``).
- Baselines (reference section 8): ``image`` (reference image feature), ``text`` (relative caption alone),
  ``image+text`` (sum of the normalised image and text features, normalised).

FashionIQ has two relative captions per query. ``both_orders`` is SEARLE's composition ("... {c1} and {c2}" and
"... {c2} and {c1}", features normalised, averaged, normalised); ``one_order`` and ``pic2word`` ("a photo of $ ,
{c2} and {c1}", Pic2Word's code) are the variants found in the literature, kept as options.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .backbones import Backbone
from .config import ConfigError
from .datasets.base import CIRQuery, CIRSplit
from .text_encoding import encode_texts, encode_tokens

COMPOSITIONS = ("both_orders", "one_order", "pic2word")


class CaptionTooLongError(ValueError):
    """A query text longer than the text encoder's context (the official code would crash on it)."""


@dataclass
class QueryContext:
    """What methods need: the backbone, reference features and (for SEARLE) pseudo-tokens by image id."""

    backbone: Backbone
    reference_features: dict[str, torch.Tensor]  # raw CLIP image features by image id
    tokens: dict[str, torch.Tensor] | None = None  # pseudo-token by reference image id
    composition: str = "both_orders"
    batch_size: int = 256


_METHODS: dict[str, Callable[[QueryContext, CIRSplit], torch.Tensor]] = {}
NEEDS_TOKENS = {"searle": "phi", "searle-oti": "oti"}


def register_method(name: str) -> Callable:
    def deco(fn):
        _METHODS[name] = fn
        return fn
    return deco


def list_methods() -> list[str]:
    return sorted(_METHODS)


def query_features(method: str, ctx: QueryContext, split: CIRSplit) -> torch.Tensor:
    """L2-normalised query features [Q, d] of ``method`` for every query of ``split``."""
    if method not in _METHODS:
        raise ConfigError(f"unknown method {method!r}; available: {', '.join(list_methods())}")
    if ctx.composition not in COMPOSITIONS:
        raise ConfigError(f"eval.fashioniq_composition={ctx.composition!r}; expected one of {COMPOSITIONS}")
    return F.normalize(_METHODS[method](ctx, split).float(), dim=-1)


def clean_caption(c: str) -> str:
    """FashionIQ captions: strip '.', '?', ',' and spaces from both ends (official code)."""
    return c.strip(".?, ")


def query_texts(q: CIRQuery, composition: str, prefix: str) -> list[str]:
    """The text(s) of one query; ``prefix`` is "a photo of $ that " for SEARLE and "" for text-only."""
    if len(q.captions) == 1:
        return [prefix + q.captions[0]]
    c1, c2 = (clean_caption(c) for c in q.captions[:2])
    if composition == "both_orders":
        return [f"{prefix}{c1} and {c2}", f"{prefix}{c2} and {c1}"]
    if composition == "one_order":
        return [f"{prefix}{c1} and {c2}"]
    pic2word_prefix = "a photo of $ , " if prefix else ""
    return [f"{pic2word_prefix}{c2} and {c1}"]


def check_lengths(backbone: Backbone, texts: Sequence[str], names: Sequence[str]) -> None:
    encode = getattr(backbone.tokenizer, "encode", None)
    if encode is None:
        return
    for text, name in zip(texts, names):
        n = len(encode(text)) + 2
        if n > backbone.context_length:
            raise CaptionTooLongError(
                f"query {name}: the text {text[:80]!r}... has {n} tokens, more than the text encoder's context of "
                f"{backbone.context_length}; shorten the caption in the annotation file")


def _encode_queries(ctx: QueryContext, split: CIRSplit, prefix: str, with_tokens: bool) -> torch.Tensor:
    """Encode every query's text(s), average per query in normalised space (FashionIQ), one row per query."""
    texts, owner, names = [], [], []
    for n, q in enumerate(split.queries):
        for t in query_texts(q, ctx.composition, prefix):
            texts.append(t)
            owner.append(n)
            names.append(q.query_id)
    check_lengths(ctx.backbone, texts, names)
    if with_tokens:
        if ctx.tokens is None:
            raise ConfigError("this method needs pseudo-tokens (phi or OTI) for the reference images")
        missing = [split.queries[o].reference_id for o in owner
                   if split.queries[o].reference_id not in ctx.tokens]
        if missing:
            raise ConfigError(f"no pseudo-token for reference image(s) {missing[:5]} ({len(missing)} in all): the "
                              "token file was computed for other images; rerun OTI on this split's references")
        tokens_all = ctx.backbone.tokenize(texts)
        pseudo = torch.stack([ctx.tokens[split.queries[o].reference_id] for o in owner])
        with torch.no_grad():
            feats = torch.cat([F.normalize(encode_tokens(ctx.backbone, tokens_all[i:i + ctx.batch_size],
                                                         pseudo[i:i + ctx.batch_size]).float().cpu(), dim=-1)
                               for i in range(0, len(texts), ctx.batch_size)])
    else:
        feats = encode_texts(ctx.backbone, texts, batch_size=ctx.batch_size, normalize=True)
    out = torch.zeros(len(split.queries), feats.shape[1])
    out.index_add_(0, torch.tensor(owner), feats)
    return out


def _reference_features(ctx: QueryContext, split: CIRSplit) -> torch.Tensor:
    return torch.stack([ctx.reference_features[q.reference_id] for q in split.queries]).float()


@register_method("image")
def image_only(ctx: QueryContext, split: CIRSplit) -> torch.Tensor:
    return _reference_features(ctx, split)


@register_method("text")
def text_only(ctx: QueryContext, split: CIRSplit) -> torch.Tensor:
    return _encode_queries(ctx, split, "", with_tokens=False)


@register_method("image+text")
def image_plus_text(ctx: QueryContext, split: CIRSplit) -> torch.Tensor:
    return F.normalize(_reference_features(ctx, split), dim=-1) + F.normalize(text_only(ctx, split), dim=-1)


@register_method("searle")
def searle(ctx: QueryContext, split: CIRSplit) -> torch.Tensor:
    return _encode_queries(ctx, split, "a photo of $ that ", with_tokens=True)


register_method("searle-oti")(searle)  # same query; the context carries OTI tokens instead of phi's
