"""The official scoring protocols of the three benchmarks (reference section 7; SEARLE ``src/validate.py``,
CIRCO ``src/evaluation.py``), in percent, with snake_case keys.

- ``recall_at_K``: the single designated target is in the top K (FashionIQ R@10/50; CIRR R@1/5/10/50 after the
  reference is removed from the ranking; CIRCO's server reports it against ``target_img_id``).
- ``recall_subset_at_K`` (CIRR): the ranking restricted to the query's ``img_set.members`` with the reference removed
  (five images left), target in its top K.
- ``map_at_K`` (CIRCO): AP@K = (1 / min(#GT, K)) * sum over i <= K of P@i * rel_i, averaged over queries.
- FashionIQ: each category against its own gallery; the paper's "average" is the arithmetic mean of the three
  categories' numbers (``average_scores``).

``score_split`` scores a whole ``CIRSplit`` from features; the per-query functions below are what it is built from
and what the hand-computed tests check.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from .datasets.base import CIRSplit
from .retrieval import sort_by_score, topk_cosine

_METRIC = re.compile(r"^(recall|recall_subset|map)_at_(\d+)$")


@dataclass
class SplitScores:
    """What scoring a split gives: metrics (percent), per-group metrics, and ranked gallery ids per query."""

    dataset: str
    split: str
    num_queries: int
    metrics: dict[str, float] = field(default_factory=dict)  # {} when the split has no ground truth
    groups: dict[str, dict[str, float]] = field(default_factory=dict)  # group (category, aspect) -> metrics
    rankings: dict[str, list[str]] = field(default_factory=dict)  # query id -> top rank_k gallery ids
    subset_rankings: dict[str, list[str]] = field(default_factory=dict)  # CIRR: query id -> ranked group members

    def to_dict(self, rankings: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"dataset": self.dataset, "split": self.split, "num_queries": self.num_queries,
                               "metrics": self.metrics, "groups": self.groups}
        if rankings:
            out["rankings"], out["subset_rankings"] = self.rankings, self.subset_rankings
        return out


def parse_metric(key: str) -> tuple[str, int]:
    """``"map_at_25"`` -> ``("map", 25)``; ValueError for anything else."""
    m = _METRIC.match(key)
    if not m or int(m.group(2)) < 1:
        raise ValueError(f"unknown metric {key!r}: expected recall_at_K, recall_subset_at_K or map_at_K (K >= 1)")
    return m.group(1), int(m.group(2))


def recall_at_k(ranked: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
    """Per query, 1.0 when ``target`` is among the first ``k`` of ``ranked`` (``[Q, K]`` gallery indices), else 0.0.

    A target of -1 (not in the gallery) is never found, as in the official code.
    """
    hit = (ranked[:, :k] == target[:, None]) & (target[:, None] >= 0)
    return hit.any(dim=1).double()


def average_precision_at_k(relevant: torch.Tensor, num_positives: torch.Tensor, k: int) -> torch.Tensor:
    """Per-query AP@k (CIRCO): ``relevant`` ``[Q, K]`` marks ranked positions holding a ground truth.

    AP@k = sum_{i<=k} P@i * rel_i / min(#GT, k), with P@i = (#GT in the top i) / i.
    """
    rel = relevant[:, :k].double()  # float64: averaged over thousands of queries, reported to 2 decimals
    ranks = torch.arange(1, rel.shape[1] + 1, dtype=torch.float64)
    precision = rel.cumsum(dim=1) / ranks * rel  # precision at the positions of ground truths only
    denom = num_positives.double().clamp(max=k).clamp(min=1)
    return precision.sum(dim=1) / denom


def relevance(ranked: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """``[Q, K]`` bool: ranked index in the query's positives (``[Q, P]`` gallery indices, -1 padded)."""
    return (ranked[:, :, None] == positives[:, None, :]).any(-1) & (ranked >= 0)


def subset_ranking(query_feats: torch.Tensor, gallery_feats: torch.Tensor, members: torch.Tensor,
                   reference: torch.Tensor) -> torch.Tensor:
    """CIRR's subset ranking: each query's group members (``[Q, m]`` gallery indices, -1 padded) ranked by
    similarity, the reference removed; returns ``[Q, m]`` indices, removed and pad slots as -1 at the end."""
    feats = gallery_feats[members.clamp(min=0)]  # [Q, m, d]
    sims = torch.einsum("qd,qmd->qm", query_feats.to(feats.dtype), feats).float()
    invalid = (members < 0) | (members == reference[:, None])
    return sort_by_score(sims.masked_fill(invalid, float("-inf")).cpu(), members.cpu())[1]


def _pad(rows: Sequence[Sequence[int]]) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0) or 1
    return torch.tensor([list(r) + [-1] * (width - len(r)) for r in rows], dtype=torch.long)


def _check_normalized(name: str, feats: torch.Tensor) -> None:
    norms = feats.float().norm(dim=-1)
    if norms.numel() and (norms - 1).abs().max() > 1e-2:
        raise ValueError(f"{name} are not L2-normalised (norms from {norms.min():.3f} to {norms.max():.3f}); "
                         "apply torch.nn.functional.normalize(x, dim=-1) first")


def score_split(split: CIRSplit, query_feats: torch.Tensor, gallery_feats: torch.Tensor, *, rank_k: int = 50,
                chunk_size: int = 16384) -> SplitScores:
    """Rank the gallery for every query of ``split`` and score it with ``split.metrics``.

    Args:
        split: the benchmark split (protocol: ``exclude_reference``, ``metrics``, ``groups``, ``has_ground_truth``).
        query_feats: ``[Q, d]`` L2-normalised, in ``split.queries`` order.
        gallery_feats: ``[N, d]`` L2-normalised, in ``split.gallery.ids`` order.
        rank_k: ranked ids kept per query (50 for the CIRR and CIRCO servers).
        chunk_size: gallery block size of the exact chunked top-K.

    Returns:
        ``SplitScores`` with metrics in percent (empty without ground truth), per-group metrics, the top-``rank_k``
        gallery ids per query and, where queries have groups, the ranked group members (CIRR subset protocol).
    """
    queries, gallery_ids = split.queries, split.gallery.ids
    if query_feats.shape[0] != len(queries) or gallery_feats.shape[0] != len(gallery_ids):
        raise ValueError(f"{split.dataset}/{split.split}: got {query_feats.shape[0]} query and "
                         f"{gallery_feats.shape[0]} gallery features for {len(queries)} queries and "
                         f"{len(gallery_ids)} gallery images")
    _check_normalized("query features", query_feats)
    _check_normalized("gallery features", gallery_feats)
    parsed = {key: parse_metric(key) for key in split.metrics} if split.has_ground_truth else {}
    index = {g: i for i, g in enumerate(gallery_ids)}
    reference = torch.tensor([index.get(q.reference_id, -1) for q in queries], dtype=torch.long)
    depth = max([rank_k] + [k for kind, k in parsed.values() if kind != "recall_subset"])
    _, ranked = topk_cosine(query_feats, gallery_feats, depth, chunk_size=chunk_size,
                            exclude=reference if split.exclude_reference else None)
    rankings = {q.query_id: [gallery_ids[i] for i in row[:rank_k].tolist() if i >= 0]
                for q, row in zip(queries, ranked)}

    subset = None
    if any(q.group_ids for q in queries):
        missing = sorted({m for q in queries for m in q.group_ids if m not in index})
        if missing:
            raise ValueError(f"{split.dataset}/{split.split}: group members not in the gallery: {missing[:5]}")
        members = _pad([[index[m] for m in q.group_ids] for q in queries])
        subset = subset_ranking(query_feats, gallery_feats, members, reference)
    subset_rankings = {} if subset is None else {
        q.query_id: [gallery_ids[i] for i in row.tolist() if i >= 0] for q, row in zip(queries, subset)}

    per_query: dict[str, torch.Tensor] = {}
    if parsed:
        target = torch.tensor([index.get(q.target_id, -1) if q.target_id else -1 for q in queries])
        positives = _pad([[index[p] for p in q.positives if p in index] for q in queries])
        n_pos = torch.tensor([len(q.positives) for q in queries])  # absent positives still count, as on the server
        for key, (kind, k) in parsed.items():
            if kind == "recall":
                per_query[key] = recall_at_k(ranked, target, k)
            elif kind == "map":
                per_query[key] = average_precision_at_k(relevance(ranked, positives), n_pos, k)
            else:
                if subset is None:
                    raise ValueError(f"{key} needs group_ids on the queries of {split.dataset}/{split.split}")
                per_query[key] = recall_at_k(subset, target, k)

    def mean(rows: torch.Tensor | None) -> dict[str, float]:
        return {key: float(v.mean() * 100) if rows is None else float(v[rows].mean() * 100)
                for key, v in per_query.items()}

    position = {q.query_id: n for n, q in enumerate(queries)}
    groups = {}
    for name, ids in split.groups.items():
        rows = torch.tensor([position[i] for i in ids if i in position], dtype=torch.long)
        if per_query and rows.numel():
            groups[name] = mean(rows)
    return SplitScores(split.dataset, split.split, len(queries), mean(None) if per_query else {}, groups,
                       rankings, subset_rankings)


def average_scores(per_split: Mapping[str, SplitScores]) -> SplitScores:
    """FashionIQ's reported numbers: each metric averaged over the per-category scores (``groups`` keeps each)."""
    if not per_split:
        raise ValueError("average_scores needs at least one SplitScores")
    first = next(iter(per_split.values()))
    common = [k for k in first.metrics if all(k in s.metrics for s in per_split.values())]
    metrics = {k: sum(s.metrics[k] for s in per_split.values()) / len(per_split) for k in common}
    merged = SplitScores(first.dataset, first.split, sum(s.num_queries for s in per_split.values()), metrics,
                         {name: dict(s.metrics) for name, s in per_split.items()})
    for s in per_split.values():
        merged.rankings.update(s.rankings)
        merged.subset_rankings.update(s.subset_rankings)
    return merged
