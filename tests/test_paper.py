"""The paper's numbers (searle_lib/paper.py): internal consistency, keys that match ours, and the side-by-side."""
from __future__ import annotations

import itertools

import pandas as pd
import pytest

from searle_lib import paper
from searle_lib.metrics import parse_metric


def test_every_table_has_the_nine_rows_of_the_paper() -> None:
    for dataset in paper.TABLES:
        rows = [r for r in paper.ROWS if r.dataset == dataset]
        assert len(rows) == 9, dataset
        assert len({(r.method, r.backbone) for r in rows}) == 9, f"{dataset}: a (method, backbone) appears twice"
        assert [r.name for r in rows] == ["Image-only", "Text-only", "Image+Text", "PALAVRA", "SEARLE-OTI", "SEARLE",
                                          "Pic2Word", "SEARLE-XL-OTI", "SEARLE-XL"]
        for r in rows:
            assert set(r.sources) <= set(paper.SOURCES), r
            assert r.backbone == (paper.L14 if r.method == "pic2word" or "XL" in r.name else paper.B32), r


def test_metric_keys_are_the_ones_our_metrics_code_writes() -> None:
    for dataset, (_, keys) in paper.TABLES.items():
        for key in keys:
            core = key.split("_", 1)[1] if key.split("_", 1)[0] in paper.FASHIONIQ_CATEGORIES else key
            parse_metric(core)  # raises on a key searle_lib.metrics does not know


def test_fashioniq_average_is_the_mean_of_the_three_categories() -> None:
    """Within rounding, except where a row's note records that the source's average is not the mean."""
    inconsistent = []
    for r in (r for r in paper.ROWS if r.dataset == "fashioniq"):
        # the categories and the average are each rounded to r.decimals: half a unit each way, one unit in all
        unit = 10.0 ** -r.decimals
        for k in (10, 50):
            mean = sum(r.metrics[f"{c}_recall_at_{k}"] for c in paper.FASHIONIQ_CATEGORIES) / 3
            if abs(mean - r.metrics[f"recall_at_{k}"]) > unit + 1e-9:
                inconsistent.append((r.name, k))
                assert "not the category mean" in r.note, f"{r.name} R@{k}: average is not the mean ({mean:.3f})"
    # the documented exception must really be one (so the note cannot go stale)
    assert inconsistent == [("Image-only", 50)]


def test_fashioniq_overall_matches_the_independent_leaderboard_figures() -> None:
    # (R@10 + R@50) / 2 of the averages, as listed by papers-with-code (reference section 0): an independent copy
    expected = {("searle", paper.B32): 32.71, ("searle-oti", paper.B32): 32.39,
                ("searle", paper.L14): 35.90, ("searle-oti", paper.L14): 37.76}
    for r in paper.ROWS:
        if r.dataset == "fashioniq" and (r.method, r.backbone) in expected:
            overall = (r.metrics["recall_at_10"] + r.metrics["recall_at_50"]) / 2
            assert overall == pytest.approx(expected[(r.method, r.backbone)], abs=0.0051), r.name


def test_recalls_grow_with_k_and_all_values_are_percentages() -> None:
    for r in paper.ROWS:
        values = [v for v in r.metrics.values() if v is not None]
        assert all(0 <= v <= 100 for v in values), r
        for family in ("recall_at_", "recall_subset_at_"):
            for prefix in ("",) + tuple(f"{c}_" for c in paper.FASHIONIQ_CATEGORIES):
                series = sorted((int(k.rsplit("_", 1)[1]), v) for k, v in r.metrics.items()
                                if k.startswith(prefix + family) and v is not None)
                for (k1, v1), (k2, v2) in itertools.pairwise(series):
                    assert v1 <= v2, f"{r.name} {r.dataset}: {prefix}{family}{k1}={v1} > @{k2}={v2}"


def test_searle_beats_the_baselines_in_every_table() -> None:
    # the paper's claim, as a check that rows and columns were not swapped when they were copied
    for dataset in paper.TABLES:
        t = paper.paper_results(dataset)
        head = t[t["metric"] == paper.HEADLINE[dataset]].set_index(["method", "backbone"])["value"]
        for baseline in ("image", "text", "image+text", "palavra"):
            assert head[("searle", paper.B32)] > head[(baseline, paper.B32)], (dataset, baseline)


def test_paper_table_has_the_papers_shape_and_labels() -> None:
    t = paper.paper_table("cirr", labels=True)
    assert list(t.columns) == ["R@1", "R@5", "R@10", "R@50", "Rs@1", "Rs@2", "Rs@3"]
    assert t.loc[("SEARLE-XL", paper.L14), "R@1"] == 24.24
    assert pd.isna(t.loc[("Pic2Word", paper.L14), "Rs@1"])
    assert paper.paper_table("fashioniq").shape == (9, 8)
    with pytest.raises(ValueError, match="fashioniq, cirr, circo"):
        paper.paper_results("imagenet")


def _ours(value: float, finished: str, method: str = "searle", slug: str = "cirr") -> dict:
    return {"dataset": "cirr", "split": "test", "method": method, "backbone": paper.B32, "metric": "recall_at_1",
            "value": value, "preset": "paper-vitb32", "slug": slug, "finished": finished}


def test_side_by_side_pairs_ours_with_the_paper_and_keeps_the_latest_run() -> None:
    ours = pd.DataFrame([_ours(23.0, "2026-01-02", slug="new"), _ours(20.0, "2026-01-01", slug="old"),
                         {**_ours(50.0, "2026-01-01"), "split": "val"}])  # val is not the paper's split
    side = paper.side_by_side(ours, "cirr")
    row = side[(side["method"] == "searle") & (side["backbone"] == paper.B32) & (side["metric"] == "recall_at_1")]
    assert len(row) == 1
    assert row["ours"].item() == 23.0 and row["diff"].item() == pytest.approx(23.0 - 24.00)
    assert row["status"].item() == "measured" and row["run"].item() == "paper-vitb32/new"
    rest = side.drop(row.index)
    assert rest["ours"].isna().all() and (rest["status"] == "not run here").all()
    assert rest.loc[rest["method"] == "pic2word", "needs"].str.contains("not implemented").all()
    assert rest.loc[rest["method"] == "text", "needs"].str.contains("CIRR evaluation server").all()


def test_status_summary_counts_measured_numbers() -> None:
    side = paper.side_by_side(pd.DataFrame([_ours(23.0, "2026-01-02")]))
    summary = paper.status_summary(side).set_index(["dataset", "name"])
    assert summary.loc[("cirr", "SEARLE"), ["paper_numbers", "measured"]].tolist() == [7, 1]
    assert summary.loc[("cirr", "SEARLE"), "status"] == "partly measured"
    assert summary.loc[("circo", "SEARLE"), "status"] == "not run here"
    assert summary.loc[("circo", "PALAVRA"), "status"] == "not implemented"
    assert summary["paper_numbers"].sum() == len(paper.paper_results())
    matrix = paper.status_matrix(paper.status_summary(side))
    assert matrix.loc[("SEARLE", paper.B32), "cirr"] == "partly measured (1 of 7)"


def test_side_by_side_rejects_a_frame_without_the_key_columns() -> None:
    with pytest.raises(ValueError, match="collect_metrics"):
        paper.side_by_side(pd.DataFrame({"metric": ["recall_at_1"], "value": [1.0]}))


def test_metric_pattern_tells_retrieval_metrics_from_run_facts() -> None:
    import re
    keys = set(paper.paper_results()["metric"])
    assert all(re.match(paper.METRIC_PATTERN, k) for k in keys)
    assert not any(re.match(paper.METRIC_PATTERN, k) for k in ("paper_numbers", "runs", "recall_at_", "map_at_x"))
