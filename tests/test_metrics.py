"""Metrics against hand-computed rankings, and ``score_split`` against a plain re-statement of the official
evaluation code (full argsort, reference removed, numpy AP) on the fixture benchmarks."""
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as Fn

import _official_fixtures as F
from searle_lib.datasets import CIRQuery, CIRSplit, ImageSet, load_split
from searle_lib.datasets.fashioniq import fashioniq_categories
from searle_lib.metrics import (SplitScores, average_precision_at_k, average_scores, parse_metric, recall_at_k,
                                relevance, score_split, subset_ranking)


# ---------------------------------------------------------------- per-query functions, by hand

def test_recall_at_k_by_hand():
    ranked = torch.tensor([[4, 2, 7], [1, 0, 3], [5, 6, 8]])
    target = torch.tensor([2, 3, -1])  # -1: target not in the gallery, never found
    assert recall_at_k(ranked, target, 1).tolist() == [0, 0, 0]
    assert recall_at_k(ranked, target, 2).tolist() == [1, 0, 0]
    assert recall_at_k(ranked, target, 3).tolist() == [1, 1, 0]


def test_average_precision_by_hand():
    # ranking: GT, miss, GT, miss, miss with 3 GTs in all
    rel = torch.tensor([[True, False, True, False, False]])
    ap = lambda k, n: float(average_precision_at_k(rel, torch.tensor([n]), k))  # noqa: E731
    assert ap(5, 3) == pytest.approx((1 / 1 + 2 / 3) / 3)  # 0.5556: normalised by min(3, 5) = 3
    assert ap(2, 3) == pytest.approx(1 / 2)  # only rank 1 counts; normalised by min(3, 2) = 2
    assert ap(5, 2) == pytest.approx((1 + 2 / 3) / 2)
    # one GT found at rank 2 of a single-GT query: AP = P@2 = 1/2
    assert float(average_precision_at_k(torch.tensor([[False, True, False]]), torch.tensor([1]), 50)) == 0.5
    # nothing found
    assert float(average_precision_at_k(torch.zeros(1, 5, dtype=torch.bool), torch.tensor([4]), 5)) == 0.0


def test_relevance_ignores_padding():
    ranked = torch.tensor([[3, 1, -1]])
    positives = torch.tensor([[1, -1]])
    assert relevance(ranked, positives).tolist() == [[False, True, False]]


def test_subset_ranking_removes_reference_and_sorts_by_similarity():
    g = Fn.normalize(torch.tensor([[1.0, 0], [0.9, 0.1], [0, 1.0], [0.6, 0.4], [0.2, 0.8]]), dim=-1)
    q = Fn.normalize(torch.tensor([[1.0, 0.05]]), dim=-1)
    members = torch.tensor([[0, 2, 3, 4, 1]])  # reference is gallery 0, the most similar one
    ranked = subset_ranking(q, g, members, torch.tensor([0]))
    assert ranked.tolist() == [[1, 3, 4, 2, -1]]
    assert recall_at_k(ranked, torch.tensor([3]), 1).item() == 0 and recall_at_k(ranked, torch.tensor([3]), 2) == 1


def test_parse_metric():
    assert parse_metric("recall_subset_at_3") == ("recall_subset", 3) and parse_metric("map_at_25") == ("map", 25)
    for bad in ("recall@10", "map_at_0", "ndcg_at_5"):
        with pytest.raises(ValueError, match="unknown metric"):
            parse_metric(bad)


# ---------------------------------------------------------------- score_split on a hand-built split

def _toy_split(exclude: bool, metrics, has_gt=True) -> CIRSplit:
    ids = tuple(f"g{i}" for i in range(5))
    gallery = ImageSet(ids, tuple(Path(f"/x/{i}.png") for i in ids), "toy")
    queries = (CIRQuery("a", "g0", ("c",), "g2" if has_gt else None, gt_ids=("g2", "g4") if has_gt else (),
                        group_ids=ids),
               CIRQuery("b", "g3", ("c",), "g1" if has_gt else None, group_ids=("g3", "g1", "g4")))
    return CIRSplit("toy", "val", queries, gallery, gallery, exclude_reference=exclude, metrics=metrics,
                    has_ground_truth=has_gt, groups={"first": ("a",), "second": ("b",)})


# gallery on the unit circle at angles 0, 20, 40, 60, 80 degrees; similarities are cosines of angle differences
ANGLES = torch.tensor([0.0, 20, 40, 60, 80]) * torch.pi / 180
GALLERY = torch.stack([ANGLES.cos(), ANGLES.sin()], 1)


def _query(deg: float) -> torch.Tensor:
    a = torch.tensor(deg * torch.pi / 180)
    return torch.stack([a.cos(), a.sin()])


def test_score_split_by_hand():
    # query a at 5 deg ranks g0, g1, g2, g3, g4; query b at 58 deg ranks g3, g2, g4, g1, g0
    qf = torch.stack([_query(5), _query(58)])
    keys = ("recall_at_1", "recall_at_2", "recall_at_3", "map_at_3", "recall_subset_at_1", "recall_subset_at_2")
    plain = score_split(_toy_split(False, keys), qf, GALLERY, rank_k=4)
    assert plain.rankings == {"a": ["g0", "g1", "g2", "g3"], "b": ["g3", "g2", "g4", "g1"]}
    # a: target g2 at rank 3; b: target g1 at rank 4
    assert plain.metrics["recall_at_2"] == 0 and plain.metrics["recall_at_3"] == 50
    # a: GTs g2, g4 -> P@3 = 1/3 at rank 3 -> AP@3 = (1/3)/2; b: GT g1 not in top 3 -> 0
    assert plain.metrics["map_at_3"] == pytest.approx(100 * (1 / 6) / 2)
    # with the reference removed: a ranks g1, g2, ... (target at 2); b ranks g2, g4, g1, g0 (target at 3)
    excl = score_split(_toy_split(True, keys), qf, GALLERY, rank_k=4)
    assert excl.rankings == {"a": ["g1", "g2", "g3", "g4"], "b": ["g2", "g4", "g1", "g0"]}
    assert excl.metrics["recall_at_1"] == 0 and excl.metrics["recall_at_2"] == 50 and excl.metrics["recall_at_3"] == 100
    # subsets: a's group minus g0 -> g1, g2, g3, g4 (target 2nd); b's group {g1, g4} -> g4, g1 (target 2nd)
    assert excl.subset_rankings == {"a": ["g1", "g2", "g3", "g4"], "b": ["g4", "g1"]}
    assert excl.metrics["recall_subset_at_1"] == 0 and excl.metrics["recall_subset_at_2"] == 100
    assert excl.groups["first"]["recall_at_2"] == 100 and excl.groups["second"]["recall_at_2"] == 0


def test_score_split_without_ground_truth_gives_rankings_only():
    qf = torch.stack([_query(5), _query(58)])
    s = score_split(_toy_split(True, ("recall_at_1",), has_gt=False), qf, GALLERY, rank_k=50)
    assert s.metrics == {} and s.groups == {} and len(s.rankings["a"]) == 4  # 5 images minus the reference


def test_score_split_checks_its_inputs():
    split = _toy_split(False, ("recall_at_1",))
    with pytest.raises(ValueError, match="not L2-normalised"):
        score_split(split, torch.ones(2, 2), GALLERY)
    with pytest.raises(ValueError, match="got 1 query"):
        score_split(split, GALLERY[:1], GALLERY)


def test_average_scores_is_the_mean_of_categories():
    per = {c: SplitScores("fashioniq", "val", 10, {"recall_at_10": v, "recall_at_50": 2 * v}, rankings={c: []})
           for c, v in (("dress", 10.0), ("shirt", 20.0), ("toptee", 60.0))}
    avg = average_scores(per)
    assert avg.metrics == {"recall_at_10": 30.0, "recall_at_50": 60.0} and avg.num_queries == 30
    assert avg.groups["shirt"]["recall_at_10"] == 20.0 and set(avg.rankings) == {"dress", "shirt", "toptee"}


# ---------------------------------------------------------------- vs the official evaluation, on the fixtures

def _official(split: CIRSplit, qf: torch.Tensor, gf: torch.Tensor) -> dict[str, float]:
    """The official computation restated: full argsort, reference removed (CIRR), numpy AP (CIRCO server)."""
    names = np.array(split.gallery.ids)
    order = np.argsort(-(qf @ gf.T).numpy(), axis=1, kind="stable")
    out: dict[str, list[float]] = {m: [] for m in split.metrics}
    for q, row in zip(split.queries, names[order]):
        if split.exclude_reference:
            row = row[row != q.reference_id]
        members = [n for n in row if n in set(q.group_ids)]
        labels = np.isin(row[:50], list(q.positives))
        prec = np.cumsum(labels) * labels / np.arange(1, len(labels) + 1)
        for m in split.metrics:
            kind, k = parse_metric(m)
            if kind == "recall":
                out[m].append(float(q.target_id in row[:k]))
            elif kind == "recall_subset":
                out[m].append(float(q.target_id in members[:k]))
            else:
                out[m].append(float(prec[:k].sum() / min(len(q.positives), k)))
    return {m: 100 * float(np.mean(v)) for m, v in out.items()}


def _random_feats(n, seed, d=16):
    return Fn.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.mark.parametrize("dataset", ["cirr", "circo", "fashioniq"])
def test_score_split_matches_the_official_computation(tmp_path, dataset):
    root = {"cirr": F.write_cirr, "circo": F.write_circo, "fashioniq": F.write_fashioniq}[dataset](tmp_path)
    splits = fashioniq_categories(root, "val") if dataset == "fashioniq" else [load_split(dataset, root, "val")]
    if dataset == "fashioniq":  # a 6-image gallery makes R@10 trivially 100: also check small K
        splits = [replace(s, metrics=s.metrics + ("recall_at_1", "recall_at_2")) for s in splits]
    seen = []
    for seed in range(5):
        per = {}
        for n, split in enumerate(splits):
            gf = _random_feats(len(split.gallery), 100 * seed + n)
            # queries near their targets plus noise, so that the metrics are neither all 0 nor all 100
            tgt = gf[[split.gallery.ids.index(q.target_id) for q in split.queries]]
            qf = Fn.normalize(tgt + 3.0 * _random_feats(len(split.queries), 7 + seed + 10 * n), dim=-1)
            scores = score_split(split, qf, gf)
            expected = _official(split, qf, gf)
            assert scores.metrics == pytest.approx(expected, abs=1e-9)
            seen += list(scores.metrics.values())
            per[split.queries[0].category or dataset] = scores
        if dataset == "fashioniq":
            avg = average_scores(per)
            for key in ("recall_at_10", "recall_at_50"):
                assert avg.metrics[key] == pytest.approx(np.mean([s.metrics[key] for s in per.values()]))
    assert any(0 < v < 100 for v in seen)  # the rankings were informative, not all hits or all misses
