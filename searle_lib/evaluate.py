"""``searle eval``: score methods on a benchmark split with the official protocols, write metrics with provenance and,
for test splits, the CIRR / CIRCO server submissions (official ``validate.py`` / ``generate_test_submission.py``).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from . import pipeline
from .config import StudyConfig
from .datasets.base import CIRSplit
from .metrics import SplitScores, average_scores


def benchmark_splits(cfg: StudyConfig) -> dict[str, CIRSplit]:
    """The split(s) to score: FashionIQ ranks each category against its own gallery; the rest are one split."""
    if cfg.data.dataset == "fashioniq":
        from .datasets.fashioniq import fashioniq_categories
        return {s.queries[0].category if s.queries else str(n): s
                for n, s in enumerate(fashioniq_categories(cfg.data.root, cfg.eval.split))}
    return {cfg.eval.split: pipeline.split(cfg)}


def load_or_train_phi(cfg: StudyConfig, bb, phi_path: str | None):
    from .phi import load_phi
    if phi_path:
        return load_phi(phi_path, bb, cfg.phi.dropout)
    return pipeline.phi(cfg, bb).phi


def run_evaluation(cfg: StudyConfig, *, phi_path: str | None = None, out_dir: str | Path | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """Evaluate ``cfg.eval.methods`` on ``cfg.data.dataset`` / ``cfg.eval.split``; returns what it wrote."""
    from .provenance import save_run
    from .submissions import write_circo_submission, write_cirr_submission
    started = time.time()
    cfg = pipeline.prepare(cfg, progress)
    bb = pipeline.backbone(cfg)
    splits = benchmark_splits(cfg)
    phi_model = load_or_train_phi(cfg, bb, phi_path) if "searle" in cfg.eval.methods else None
    per_split = {name: pipeline.evaluate(cfg, bb, sp, cfg.eval.methods, phi_model, progress)
                 for name, sp in splits.items()}
    scores: dict[str, SplitScores] = {}
    for m in cfg.eval.methods:
        parts = {name: res[m] for name, res in per_split.items()}
        scores[m] = average_scores(parts) if len(parts) > 1 else next(iter(parts.values()))
    slug = f"eval-{cfg.data.dataset}-{cfg.eval.split}"
    from .provenance import run_dir
    folder = run_dir(cfg, slug, out_dir)
    submissions: list[str] = []
    for name, sp in splits.items():
        if sp.has_ground_truth:
            continue
        for m in cfg.eval.methods:
            if sp.dataset == "cirr":
                submissions += map(str, write_cirr_submission(per_split[name][m], sp, folder / "submissions", m))
            elif sp.dataset == "circo":
                submissions.append(str(write_circo_submission(per_split[name][m], sp, folder / "submissions", m)))
    metrics = {m: s.metrics for m, s in scores.items()}
    extra = {"groups": {m: s.groups for m, s in scores.items() if s.groups}, "submissions": submissions,
             "phi_checkpoint": phi_path, "num_queries": {n: len(s.queries) for n, s in splits.items()}}
    folder = save_run(cfg, slug, metrics, extra=extra, out_dir=out_dir, started=started)
    return {"folder": str(folder), "metrics": metrics, "submissions": submissions}
