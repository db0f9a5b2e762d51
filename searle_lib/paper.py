"""The numbers reported in the SEARLE paper (Baldrati et al., ICCV 2023), as data (style guide rule 17).

This module is the only place the paper's numbers live. They come from ``../shared/searle_reference.md``
section 9, which copied them from two secondary sources that reproduce the paper's tables:

- ``T1``: the awesome-list README ``fuxianghuang1/Multimodal-Composite-Editing-and-Retrieval`` (FashionIQ, CIRR);
- ``T2``: a summary of the AutoCIR paper whose Tables 1 and 2 copy SEARLE's (CIRCO, CIRR, FashionIQ).

The paper text itself was not read, so the paper's own table numbers are not known here: each row names the
benchmark table it belongs to ("FashionIQ val", "CIRR test", "CIRCO test") and the sources it came from. Where the
copies disagree or one is garbled, ``note`` says which value was kept and why.

Metric keys match ours: ``recall_at_10``, ``recall_subset_at_1``, ``map_at_5`` and, for FashionIQ, per category
``dress_recall_at_10`` etc., with ``recall_at_10`` / ``recall_at_50`` the mean over the three categories.
All values are percentages. Method keys match ``EvalConfig.methods`` (``image``, ``text``, ``image+text``,
``searle-oti``, ``searle``) plus ``palavra`` and ``pic2word``; backbones are open_clip names.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

B32, L14 = "ViT-B-32", "ViT-L-14"
FASHIONIQ_CATEGORIES = ("dress", "shirt", "toptee")
SOURCES = {
    "T1": "awesome-list README fuxianghuang1/Multimodal-Composite-Editing-and-Retrieval (copy of SEARLE's tables)",
    "T2": "summary of the AutoCIR paper; its Tables 1-2 copy SEARLE's tables",
}
# What each of the paper's tables covers: dataset, split, the metrics in column order.
TABLES = {
    "fashioniq": ("val", [f"{c}_recall_at_{k}" for c in ("shirt", "dress", "toptee") for k in (10, 50)]
                  + ["recall_at_10", "recall_at_50"]),
    "cirr": ("test", ["recall_at_1", "recall_at_5", "recall_at_10", "recall_at_50",
                      "recall_subset_at_1", "recall_subset_at_2", "recall_subset_at_3"]),
    "circo": ("test", ["map_at_5", "map_at_10", "map_at_25", "map_at_50"]),
}
TABLE_TITLES = {"fashioniq": "FashionIQ val (R@10 / R@50, %)", "cirr": "CIRR test (Recall@K, Recall_subset@K, %)",
                "circo": "CIRCO test (mAP@K, %)"}
METHOD_NAMES = {"image": "Image-only", "text": "Text-only", "image+text": "Image+Text", "palavra": "PALAVRA",
                "pic2word": "Pic2Word", "searle-oti": "SEARLE-OTI", "searle": "SEARLE"}

# What a run needs before a paper number can be compared with ours (shown on the status page).
REQUIREMENTS = {
    "fashioniq": "the FashionIQ val images and annotations (data.root), OpenAI CLIP weights in the hub cache, "
                 "and a GPU for OTI/phi at the official sizes",
    "cirr": "the CIRR test1 images and annotations (data.root), OpenAI CLIP weights, a GPU, and an upload of the "
            "submission to the CIRR evaluation server (test labels are not public)",
    "circo": "the CIRCO test annotations and the COCO 2017 unlabeled gallery (data.root), OpenAI CLIP weights, "
             "a GPU, and an upload to the CIRCO evaluation server (test labels are not public)",
}

# Rows of the paper for methods this study does not implement: why no run of ours can stand beside them.
NOT_IMPLEMENTED = {
    "palavra": "PALAVRA (a personalised-concept inversion baseline) is not implemented in this study",
    "pic2word": "Pic2Word (a mapping network trained on 3M CC3M images) is not implemented in this study",
}


@dataclass(frozen=True)
class PaperRow:
    """One method's row of one of the paper's tables."""

    dataset: str
    method: str  # method key (see module docstring)
    backbone: str  # open_clip name of the CLIP backbone
    values: tuple[float | None, ...]  # in the column order of TABLES[dataset]; None = not reported
    sources: tuple[str, ...]
    note: str = ""
    decimals: int = 2  # precision the numbers were published with (Pic2Word's own numbers have 1)
    metrics: dict[str, float | None] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        keys = TABLES[self.dataset][1]
        if len(self.values) != len(keys):
            raise ValueError(f"{self.dataset} {self.method}: {len(self.values)} values for {len(keys)} columns")
        object.__setattr__(self, "metrics", dict(zip(keys, self.values)))

    @property
    def name(self) -> str:
        """The paper's name for the row: SEARLE on ViT-L/14 is SEARLE-XL."""
        if self.backbone == L14 and self.method.startswith("searle"):
            return self.method.replace("searle", "SEARLE-XL").replace("-oti", "-OTI")
        return METHOD_NAMES[self.method]


_T12 = ("T1", "T2")
ROWS: tuple[PaperRow, ...] = (
    # FashionIQ val: shirt R@10, R@50, dress R@10, R@50, toptee R@10, R@50, average R@10, R@50.
    PaperRow("fashioniq", "image", B32, (6.92, 14.23, 4.46, 12.19, 6.32, 13.77, 5.90, 13.37), ("T2",),
             note="average R@50 13.37 is not the category mean (13.40); copied as the source prints it"),
    PaperRow("fashioniq", "text", B32, (19.87, 34.99, 15.42, 35.05, 20.81, 40.49, 18.70, 36.84), ("T2",)),
    PaperRow("fashioniq", "image+text", B32, (13.44, 26.25, 13.83, 30.88, 17.08, 31.67, 14.78, 29.60), ("T2",)),
    PaperRow("fashioniq", "palavra", B32, (21.49, 37.05, 17.25, 35.94, 20.55, 38.76, 19.76, 37.25), _T12),
    PaperRow("fashioniq", "searle-oti", B32, (25.37, 41.32, 17.85, 39.91, 24.12, 45.79, 22.44, 42.34), ("T1",),
             note="T2's row is garbled; T1's row fits the 22.44 / 42.34 average"),
    PaperRow("fashioniq", "searle", B32, (24.44, 41.61, 18.54, 39.51, 25.70, 46.46, 22.89, 42.53), _T12),
    PaperRow("fashioniq", "pic2word", L14, (26.20, 43.60, 20.00, 40.20, 27.90, 47.40, 24.70, 43.70), _T12,
             decimals=1),
    PaperRow("fashioniq", "searle-oti", L14, (30.37, 47.49, 21.57, 44.47, 30.90, 51.76, 27.61, 47.90), _T12),
    PaperRow("fashioniq", "searle", L14, (26.89, 45.58, 20.48, 43.13, 29.32, 49.97, 25.56, 46.23), _T12),
    # CIRR test: R@1, R@5, R@10, R@50, Rs@1, Rs@2, Rs@3.
    PaperRow("cirr", "image", B32, (6.89, 22.99, 33.68, 59.23, 21.04, 41.04, 60.31), ("T2",)),
    PaperRow("cirr", "text", B32, (21.81, 45.22, 57.42, 81.01, 62.24, 81.13, 90.70), ("T2",),
             note="SEARLE issue #15: a re-run of text-only got R@1 = 19.8 (B/32)"),
    PaperRow("cirr", "image+text", B32, (11.71, 35.06, 48.94, 77.49, 32.77, 56.89, 74.96), ("T2",)),
    PaperRow("cirr", "palavra", B32, (16.62, 43.49, 58.51, 83.95, 41.61, 65.30, 80.94), _T12),
    PaperRow("cirr", "searle-oti", B32, (24.27, 53.25, 66.10, 88.84, 54.10, 75.81, 87.33), _T12),
    PaperRow("cirr", "searle", B32, (24.00, 53.42, 66.82, 89.78, 54.89, 76.60, 88.19), _T12),
    PaperRow("cirr", "pic2word", L14, (23.90, 51.70, 65.30, 87.80, None, None, None), _T12,
             note="Pic2Word does not report Recall_subset", decimals=1),
    PaperRow("cirr", "searle-oti", L14, (24.87, 52.31, 66.29, 88.58, 53.80, 74.31, 86.94), _T12),
    PaperRow("cirr", "searle", L14, (24.24, 52.48, 66.29, 88.84, 53.76, 75.01, 88.19), _T12),
    # CIRCO test: mAP@5, @10, @25, @50.
    PaperRow("circo", "image", B32, (1.34, 1.60, 2.12, 2.41), ("T2",)),
    PaperRow("circo", "text", B32, (2.56, 2.67, 2.98, 3.18), ("T2",)),
    PaperRow("circo", "image+text", B32, (2.65, 3.25, 4.14, 4.54), ("T2",)),
    PaperRow("circo", "palavra", B32, (4.61, 5.32, 6.33, 6.80), ("T2",)),
    PaperRow("circo", "searle-oti", B32, (7.14, 7.83, 8.99, 9.60), ("T2",)),
    PaperRow("circo", "searle", B32, (9.35, 9.94, 11.13, 11.84), ("T2",)),
    PaperRow("circo", "pic2word", L14, (8.72, 9.51, 10.64, 11.29), _T12,
             note="mAP@25 is 10.64 in one copy and 10.46 in another; 10.64 kept (computed by SEARLE's authors)"),
    PaperRow("circo", "searle-oti", L14, (10.18, 11.03, 12.72, 13.67), _T12),
    PaperRow("circo", "searle", L14, (11.68, 12.73, 14.33, 15.12), _T12),
)

KEY = ["dataset", "split", "method", "backbone"]
# A retrieval metric key, optionally with a FashionIQ category (as opposed to counts and other run facts).
METRIC_PATTERN = r"^(?:(?:dress|shirt|toptee)_)?(?:recall|recall_subset|map)_at_\d+$"


def paper_results(dataset: str | None = None) -> pd.DataFrame:
    """The paper's numbers in long form: one row per (dataset, method, backbone, metric); ``None`` rows omitted."""
    if dataset is not None and dataset not in TABLES:
        raise ValueError(f"no paper table for dataset {dataset!r}; the paper reports {', '.join(TABLES)}")
    rows = []
    for r in ROWS:
        if dataset is not None and r.dataset != dataset:
            continue
        for metric, value in r.metrics.items():
            if value is not None:
                rows.append({"dataset": r.dataset, "split": TABLES[r.dataset][0], "method": r.method,
                             "backbone": r.backbone, "name": r.name, "metric": metric, "value": value,
                             "table": TABLE_TITLES[r.dataset], "sources": "+".join(r.sources), "note": r.note})
    return pd.DataFrame(rows)


def paper_table(dataset: str, labels: bool = False) -> pd.DataFrame:
    """The paper's table for ``dataset`` as printed: one row per method, metrics as columns (paper's order).

    ``labels=True`` gives display labels (``R@10``, ``dress R@10``) instead of snake_case keys.
    """
    long = paper_results(dataset)
    wide = long.pivot_table(index=["name", "backbone"], columns="metric", values="value", sort=False)
    order = [f"{r.name}|{r.backbone}" for r in ROWS if r.dataset == dataset]
    wide = wide.loc[[tuple(o.split("|")) for o in order], TABLES[dataset][1]]
    wide.columns.name = None
    if labels:
        from .plots import metric_label
        wide = wide.rename(columns=metric_label)
        wide.index.names = ["method", "backbone"]
    return wide


def side_by_side(ours: pd.DataFrame, dataset: str | None = None) -> pd.DataFrame:
    """Each paper number beside ours (same dataset, split, method, backbone and metric), or "not run here".

    Args:
        ours: long metrics as from ``provenance.collect_metrics`` (columns dataset, split, method, backbone,
            metric, value, preset, slug, finished). When several runs match, the latest ``finished`` is used.
        dataset: restrict to one benchmark.
    Returns:
        Columns ``dataset, split, name, method, backbone, metric, paper, ours, diff, status, needs, run`` where
        ``status`` is "measured" or "not run here", and ``needs`` says what such a run needs (``REQUIREMENTS``).
    """
    paper = paper_results(dataset).rename(columns={"value": "paper"})
    need = ["dataset", "split", "method", "backbone", "metric", "value"]
    missing = [c for c in need if c not in ours.columns]
    if missing:
        raise ValueError(f"'ours' lacks columns {missing}; build it with provenance.collect_metrics")
    mine = ours.copy()
    if "finished" in mine.columns:
        mine = mine.sort_values("finished")
    mine["run"] = (mine["preset"].astype(str) + "/" + mine["slug"].astype(str)) if "slug" in mine.columns else ""
    mine = mine.drop_duplicates(KEY + ["metric"], keep="last")[KEY + ["metric", "value", "run"]]
    out = paper.merge(mine.rename(columns={"value": "ours"}), on=KEY + ["metric"], how="left")
    out["diff"] = out["ours"] - out["paper"]
    measured = out["ours"].notna()
    out["status"] = measured.map({True: "measured", False: "not run here"})
    out["needs"] = ["" if m else NOT_IMPLEMENTED.get(meth, REQUIREMENTS[d])
                    for m, d, meth in zip(measured, out["dataset"], out["method"])]
    out["run"] = out["run"].fillna("")
    return out[["dataset", "split", "name", "method", "backbone", "metric", "paper", "ours", "diff", "status",
                "needs", "run"]]


def status_summary(side: pd.DataFrame) -> pd.DataFrame:
    """One row per paper row of ``side_by_side``: how many of its numbers were measured here, and the status
    ("measured", "partly measured", "not run here" or "not implemented")."""
    g = side.groupby(["dataset", "name", "method", "backbone"], sort=False)
    out = g.agg(paper_numbers=("paper", "size"), measured=("ours", "count"),
                mean_abs_diff=("diff", lambda d: d.abs().mean()), run=("run", "max"))
    implemented = [m not in NOT_IMPLEMENTED for m in out.index.get_level_values("method")]
    out["status"] = ["measured" if m == n else "partly measured" if m else "not run here" if i else "not implemented"
                     for m, n, i in zip(out["measured"], out["paper_numbers"], implemented)]
    return out.reset_index()


def status_matrix(summary: pd.DataFrame) -> pd.DataFrame:
    """``status_summary`` as the paper prints its rows: one row per method and backbone, one column per benchmark,
    cells like "not run here (0 of 8)"."""
    cells = summary.assign(cell=summary["status"] + " (" + summary["measured"].astype(str) + " of "
                           + summary["paper_numbers"].astype(str) + ")")
    rows = list(dict.fromkeys(zip(cells["name"], cells["backbone"])))
    matrix = cells.pivot(index=["name", "backbone"], columns="dataset", values="cell")
    matrix = matrix.loc[rows, [d for d in TABLES if d in matrix.columns]].fillna("not in this table")
    matrix.columns.name = None
    matrix.index.names = ["method", "backbone"]
    return matrix


HEADLINE = {"fashioniq": "recall_at_10", "cirr": "recall_at_1", "circo": "map_at_5"}  # one metric per benchmark


def headline() -> pd.DataFrame:
    """The paper's headline metric of each benchmark (FashionIQ mean R@10, CIRR R@1, CIRCO mAP@5), long form."""
    from .plots import metric_label
    df = paper_results()
    df = df[df["metric"] == df["dataset"].map(HEADLINE)].copy()
    df["panel"] = [f"{TABLE_TITLES[d].split(' (')[0]}: {'mean ' if d == 'fashioniq' else ''}{metric_label(m)}"
                   for d, m in zip(df["dataset"], df["metric"])]
    df["large_backbone"] = df["backbone"] == L14
    return df.reset_index(drop=True)
