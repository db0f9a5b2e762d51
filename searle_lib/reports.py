"""Tables the notebooks show: method x metric tables, official-benchmark runs or "what to provide", and the labels
the book uses. Plots live in ``plots.py``; numbers come from runs (``pipeline`` / ``evaluate``) or ``paper.py``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import pandas as pd

from .config import StudyConfig
from .datasets.base import DatasetError
from .plots import metric_label

METHOD_LABELS = {"image": "Image-only", "text": "Text-only", "image+text": "Image + Text",
                 "searle-oti": "SEARLE-OTI", "searle": "SEARLE"}

HEADLINE = {"fashioniq": ["recall_at_10", "recall_at_50"],
            "cirr": ["recall_at_1", "recall_at_5", "recall_at_10", "recall_at_50", "recall_subset_at_1",
                     "recall_subset_at_2", "recall_subset_at_3"],
            "circo": ["map_at_5", "map_at_10", "map_at_25", "map_at_50"],
            "embedded": ["map_at_5", "map_at_10", "map_at_25", "map_at_50", "recall_at_1", "recall_at_5",
                         "recall_at_10", "recall_at_50", "recall_subset_at_1", "recall_subset_at_2",
                         "recall_subset_at_3"]}

EVAL_SPLIT = {"fashioniq": "val", "cirr": "test", "circo": "test"}


def metrics_table(metrics: Mapping[str, Mapping[str, float]], keys: Sequence[str] | None = None,
                  labels: bool = True) -> pd.DataFrame:
    """Rows: methods (in the given order); columns: metrics (``keys`` order, default all), in percent."""
    df = pd.DataFrame({m: dict(v) for m, v in metrics.items()}).T
    if keys is not None:
        df = df[[k for k in keys if k in df.columns]]
    if labels:
        df = df.rename(index=lambda m: METHOD_LABELS.get(m, m), columns=metric_label)
    df.index.name = "method"
    return df


def long_metrics(metrics: Mapping[str, Mapping[str, float]], **columns: Any) -> pd.DataFrame:
    """``{method: {metric: value}}`` as long rows (method, metric, value, plus constant ``columns``)."""
    rows = [{"method": m, "metric": k, "value": v, **columns} for m, d in metrics.items() for k, v in d.items()]
    return pd.DataFrame(rows)


@dataclass
class BenchmarkRun:
    """An official-benchmark chapter's outcome: metrics when the data was there, else what to provide."""

    ran: bool
    metrics: dict[str, dict[str, float]]
    message: str
    folder: str | None = None


def run_official_benchmark(cfg: StudyConfig, phi_checkpoint: str | None = None) -> BenchmarkRun:
    """Evaluate ``cfg.data.dataset`` when its data root is set and loads; otherwise explain what is needed.

    The embedded preset's tiny CLIP is meaningless on real images, so a real benchmark runs only with a paper
    preset (``paper-vitb32`` / ``paper-vitl14``) and a data root.
    """
    from .evaluate import benchmark_splits, run_evaluation
    ds = cfg.data.dataset
    command = (f"python scripts/run_notebooks.py --only {ds} --preset paper-vitb32 -p data_root=/path/to/{ds} "
               f"-p phi_checkpoint=/path/to/SEARLE_ViT-B32.pt   (or: searle eval --preset paper-vitb32 "
               f"--dataset {ds} --root /path/to/{ds} --split {cfg.eval.split} --phi /path/to/SEARLE_ViT-B32.pt)")
    if cfg.data.root is None:
        return BenchmarkRun(False, {}, f"No {ds} data root was given, so nothing was run here. To run it: {command}")
    if not cfg.preset.startswith("paper"):
        return BenchmarkRun(False, {}, f"preset {cfg.preset!r} uses the embedded world's tiny CLIP, which has "
                                       f"never seen real images; use a paper preset: {command}")
    from .backbones import MissingWeightsError, create_backbone
    try:
        benchmark_splits(cfg)
        create_backbone(cfg.model, "cpu")
    except DatasetError as e:
        return BenchmarkRun(False, {}, f"The {ds} data at {cfg.data.root} could not be loaded:\n{e}")
    except MissingWeightsError as e:
        return BenchmarkRun(False, {}, f"The CLIP weights are missing:\n{e}")
    res = run_evaluation(cfg, phi_path=phi_checkpoint)
    return BenchmarkRun(True, res["metrics"], f"evaluated {ds} {cfg.eval.split}", res["folder"])
