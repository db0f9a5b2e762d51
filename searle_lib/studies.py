"""The open questions the paper leaves, as experiment grids over ``pipeline`` (each cell cached like any stage).

- domain shift: phi trained on the unlabeled images of one visual domain, tested on each domain;
- language model: no regularisation, the offline grammar in everyday or in the world's language, a Hugging Face
  causal LM (a GPT-2 trained on the world's captions; GPT-Neo when present);
- pretraining set size: phi trained on the first n unlabeled images;
- backbone: the same pipeline on several CLIP architectures;
- protocol audit: choices the paper's numbers depend on but its text does not stress (caption joining, phi's
  checkpoint selection, preprocessing).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from . import pipeline
from .config import StudyConfig, apply_overrides


def _searle_and_oti(cfg: StudyConfig, bb, sp, phi_model, methods: Sequence[str]) -> dict[str, dict[str, float]]:
    return {m: s.metrics for m, s in pipeline.evaluate(cfg, bb, sp, methods, phi_model, progress=False).items()}


def domain_shift(cfg: StudyConfig, split: str = "test") -> pd.DataFrame:
    """Rows (train_domain, test_domain, method, metric, value); SEARLE-OTI and baselines are in-domain references
    (they do not depend on the training domain: ``train_domain`` is "-")."""
    bb = pipeline.backbone(cfg)
    rows: list[dict[str, Any]] = []
    splits = {d: pipeline.split(cfg, split, domain=d) for d in cfg.world.domains}
    for d_test, sp in splits.items():
        for m, ms in _searle_and_oti(cfg, bb, sp, None, ["image", "text", "image+text", "searle-oti"]).items():
            rows += [{"train_domain": "-", "test_domain": d_test, "method": m, "metric": k, "value": v}
                     for k, v in ms.items()]
    for d_train in cfg.world.domains:
        run = pipeline.phi(cfg, bb, pipeline.unlabeled_images(cfg, domain=d_train),
                           validate_split=pipeline.split(cfg, "val", domain=d_train), progress=False)
        for d_test, sp in splits.items():
            for k, v in _searle_and_oti(cfg, bb, sp, run.phi, ["searle"])["searle"].items():
                rows.append({"train_domain": d_train, "test_domain": d_test, "method": "searle", "metric": k,
                             "value": v})
    return pd.DataFrame(rows)


def world_lm(cfg: StudyConfig, steps: int = 600) -> Path:
    """A small GPT-2 trained on the embedded world's pretraining captions (cached): a real Hugging Face causal LM
    that runs offline, standing in for GPT-Neo in the language-model question."""
    from .datasets.embedded import load_pretrain_pairs
    from .tiny_lm import tiny_lm_hash, train_tiny_lm
    pairs = load_pretrain_pairs(cfg.world.root)
    texts = [c for caps in pairs.captions for c in caps]
    # one folder per world (and settings): presets sharing a cache folder must not retrain each other's LM
    key = tiny_lm_hash(texts, {"steps": steps, "seed": cfg.run.seed})
    return train_tiny_lm(texts, Path(cfg.run.cache_dir) / "lm" / f"world-gpt2-{key}", steps=steps,
                         seed=cfg.run.seed, progress=False)


def lm_conditions(cfg: StudyConfig, include_gpt_neo: bool = True) -> dict[str, StudyConfig | str]:
    """Name -> config for each regularisation condition; a string explains a condition that cannot run here."""
    out: dict[str, StudyConfig | str] = {
        "none": apply_overrides(cfg, {"phrases.generator": "none"}),
        "offline grammar (everyday)": apply_overrides(cfg, {"phrases.generator": "offline",
                                                            "phrases.grammar": "default"}),
        "offline grammar (world)": apply_overrides(cfg, {"phrases.generator": "offline", "phrases.grammar": "world"}),
        "world GPT-2 (HF)": apply_overrides(cfg, {"phrases.generator": "hf", "phrases.lm_name": str(world_lm(cfg))}),
    }
    if include_gpt_neo:
        from .phrases import load_lm
        neo = replace(cfg.phrases, generator="hf", lm_name="EleutherAI/gpt-neo-2.7B")
        try:
            load_lm(neo.lm_name, "cpu")
            out["GPT-Neo 2.7B (HF)"] = replace(cfg, phrases=neo)
        except Exception as e:  # absent offline: report, do not fail the chapter
            out["GPT-Neo 2.7B (HF)"] = f"not run here: {str(e).splitlines()[0]}"
    return out


def lm_choice(cfg: StudyConfig, conditions: dict[str, StudyConfig | str], split: str = "test",
              methods: Sequence[str] = ("searle", "searle-oti")) -> pd.DataFrame:
    """Rows (condition, method, metric, value) for SEARLE and/or SEARLE-OTI under each regulariser (without
    "searle" in ``methods`` no phi is trained: OTI of the test references only, much cheaper)."""
    bb = pipeline.backbone(cfg)
    rows: list[dict[str, Any]] = []
    for name, c in conditions.items():
        if isinstance(c, str):
            continue
        run = pipeline.phi(c, bb, progress=False) if "searle" in methods else None
        for m, ms in _searle_and_oti(c, bb, pipeline.split(c, split), run and run.phi, list(methods)).items():
            rows += [{"condition": name, "method": m, "metric": k, "value": v} for k, v in ms.items()]
    return pd.DataFrame(rows)


def pretraining_size(cfg: StudyConfig, sizes: Sequence[int], split: str = "test") -> pd.DataFrame:
    """Rows (n_images, method, metric, value): phi trained on the first n unlabeled images (OTI tokens shared)."""
    bb = pipeline.backbone(cfg)
    sp = pipeline.split(cfg, split)
    rows: list[dict[str, Any]] = []
    for n in sizes:
        batch = min(cfg.phi.batch_size, n)  # a set smaller than a batch trains with one batch of all images
        c = apply_overrides(cfg, {"phi.batch_size": batch})
        run = pipeline.phi(c, bb, n_train=n, progress=False)
        for k, v in _searle_and_oti(c, bb, sp, run.phi, ["searle"])["searle"].items():
            rows.append({"n_images": run.n_images, "method": "searle", "metric": k, "value": v})
    return pd.DataFrame(rows)


def backbones(cfg: StudyConfig, names: Sequence[str], split: str = "test") -> pd.DataFrame:
    """Rows (backbone, method, metric, value): the whole pipeline (tiny CLIP pretraining included) per backbone."""
    rows: list[dict[str, Any]] = []
    for name in names:
        c = pipeline.prepare(apply_overrides(cfg, {"model.name": name, "model.checkpoint": None}), progress=False)
        bb = pipeline.backbone(c)
        run = pipeline.phi(c, bb, progress=False)
        for m, ms in _searle_and_oti(c, bb, pipeline.split(c, split), run.phi, list(c.eval.methods)).items():
            rows += [{"backbone": name, "method": m, "metric": k, "value": v} for k, v in ms.items()]
    return pd.DataFrame(rows)


def caption_joining(cfg: StudyConfig, bb, phi_model, split: str = "test") -> pd.DataFrame:
    """Rows (composition, method, metric, value): the world's queries with a second phrasing of the same edit
    (FashionIQ-like two captions) under each way of joining two captions (``methods.COMPOSITIONS``)."""
    from .methods import COMPOSITIONS
    sp = pipeline.split(cfg, split, second_caption=True)
    rows: list[dict[str, Any]] = []
    for comp in COMPOSITIONS:
        c = apply_overrides(cfg, {"eval.fashioniq_composition": comp})
        for m, ms in _searle_and_oti(c, bb, sp, phi_model, ["text", "searle", "searle-oti"]).items():
            rows += [{"composition": comp, "method": m, "metric": k, "value": v} for k, v in ms.items()]
    return pd.DataFrame(rows)


def checkpoint_selection(cfg: StudyConfig, bb, split: str = "test") -> tuple[pd.DataFrame, pd.DataFrame]:
    """phi kept at its best validation epoch (official: CIRR val) vs its last epoch. Returns the test rows
    (selection, method, metric, value) and the validation history of the run (epoch, val_score)."""
    rows: list[dict[str, Any]] = []
    sp = pipeline.split(cfg, split)
    history = None
    for select in ("val", "last"):
        c = apply_overrides(cfg, {"phi.select": select})
        run = pipeline.phi(c, bb, progress=False)
        history = history if history is not None else pd.DataFrame(run.history.epochs)
        for k, v in _searle_and_oti(c, bb, sp, run.phi, ["searle"])["searle"].items():
            rows.append({"selection": select, "method": "searle", "metric": k, "value": v})
    return pd.DataFrame(rows), history


def preprocessing(cfg: StudyConfig, phi_model, split: str = "test") -> pd.DataFrame:
    """Rows (preprocess, method, metric, value): the same model and phi with SEARLE's ``targetpad`` and with plain
    ``clip`` preprocessing of every image (SEARLE-OTI left out: it would need OTI rerun on new features)."""
    rows: list[dict[str, Any]] = []
    for prep in ("targetpad", "clip"):
        c = apply_overrides(cfg, {"model.preprocess": prep})
        bb = pipeline.backbone(c)
        for m, ms in _searle_and_oti(c, bb, pipeline.split(c, split), phi_model,
                                     ["image", "image+text", "searle"]).items():
            rows += [{"preprocess": prep, "method": m, "metric": k, "value": v} for k, v in ms.items()]
    return pd.DataFrame(rows)
