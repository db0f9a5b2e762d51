"""SEARLE's stages wired together for one ``StudyConfig`` (official pipeline: phrases -> concepts -> OTI -> phi ->
evaluation, reference section 1), with every heavy intermediate cached under ``run.cache_dir``.

Each stage's folder is named by a hash of exactly the settings and inputs it depends on, so notebooks and the CLI
share results (the OTI tokens of the unlabeled set are computed once for every phi experiment that uses them),
a changed setting never reuses a stale result, and an interrupted stage resumes (OTI chunks, phi checkpoints).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from .backbones import Backbone, create_backbone
from .chunkstore import list_hash
from .concepts import (associate, concept_embeddings, fallback_vocabulary, load_templates, load_vocabulary,
                       read_concepts_csv, write_concepts_csv)
from .config import StudyConfig, apply_overrides
from .datasets import CIRSplit, DatasetError, ImageSet, load_split, load_unlabeled
from .features import FeatureSet, extract_features
from .methods import NEEDS_TOKENS, QueryContext, query_features
from .metrics import SplitScores, score_split
from .oti import OTIResult, run_oti
from .phi import Phi, PhiHistory, phi_tokens, train_phi


def _hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def stage_dir(cfg: StudyConfig, stage: str, *parts: Any) -> Path:
    """``<cache_dir>/<stage>/<hash of parts>``."""
    return Path(cfg.run.cache_dir) / stage / _hash(*parts)


# --------------------------------------------------------------------------------------------- model and data
def world_root(cfg: StudyConfig) -> Path:
    return Path(cfg.world.root)


def prepare(cfg: StudyConfig, progress: bool = True) -> StudyConfig:
    """Make what the config needs but nobody can download: for the embedded world, build the world and train the
    tiny CLIP (both cached). Returns the config with ``model.checkpoint`` and ``data.root`` filled in."""
    embedded = "embedded" in (cfg.data.dataset, cfg.data.unlabeled)
    if not embedded:
        return cfg
    from .pretrain import pretrain_clip
    from .world.build import build_world
    build_world(cfg.world, world_root(cfg))
    changes: dict[str, Any] = {}
    if cfg.data.dataset == "embedded" and cfg.data.root is None:
        changes["data.root"] = str(world_root(cfg))
    if cfg.model.pretrained is None and cfg.model.checkpoint is None:
        changes["model.checkpoint"] = str(pretrain_clip(cfg, progress=progress, log=print if progress else None))
    return apply_overrides(cfg, changes)


def backbone(cfg: StudyConfig) -> Backbone:
    torch.manual_seed(cfg.run.seed)
    return create_backbone(cfg.model, cfg.run.device)


def unlabeled_images(cfg: StudyConfig, domain: str | None = None) -> ImageSet:
    """The unlabeled set OTI / phi train on (ImageNet1K test, or the embedded world's unlabeled split)."""
    if cfg.data.unlabeled == "embedded":
        images = load_unlabeled("embedded", cfg.data.unlabeled_root or world_root(cfg),
                                domain=domain or cfg.world.domains[0])
    else:
        images = load_unlabeled(cfg.data.unlabeled, cfg.data.unlabeled_root)
    if cfg.data.max_unlabeled is not None:
        order = sorted(range(len(images)), key=lambda i: images.ids[i])[:cfg.data.max_unlabeled]
        images = ImageSet(tuple(images.ids[i] for i in order), tuple(images.paths[i] for i in order), images.name)
    return images


def split(cfg: StudyConfig, name: str | None = None, **kw: Any) -> CIRSplit:
    """A benchmark split of ``data.dataset`` (``eval.split`` unless ``name`` is given)."""
    root = cfg.data.root or (world_root(cfg) if cfg.data.dataset == "embedded" else None)
    return load_split(cfg.data.dataset, root, name or cfg.eval.split, **kw)


def features(cfg: StudyConfig, bb: Backbone, images: ImageSet, skip_bad: bool = False,
             progress: bool = True) -> FeatureSet:
    return extract_features(bb, images, batch_size=cfg.concepts.batch_size, cache_dir=Path(cfg.run.cache_dir) /
                            "features", num_workers=cfg.run.num_workers, skip_bad=skip_bad, progress=progress)


# ------------------------------------------------------------------------------------ concepts and phrases
def vocabulary(cfg: StudyConfig) -> tuple[list[str], list[str]]:
    """(concept names, prompt templates) for this config: the embedded world's own, or Open Images + PALAVRA."""
    if cfg.data.unlabeled == "embedded" and cfg.data.concepts_path is None:
        from .world import vocab
        return vocab.concepts(), list(vocab.TEMPLATES)
    names = load_vocabulary(cfg.data.concepts_path) if cfg.data.concepts_path else fallback_vocabulary()
    return names, load_templates(cfg.data.templates_path)


def phrases(cfg: StudyConfig, progress: bool = True) -> dict[str, list[str]] | None:
    """Usable concept -> phrases (official filtering applied), or None when regularisation is off."""
    from .phrases import load_phrases, prepare_phrases
    if cfg.phrases.generator == "none":
        return None
    if cfg.phrases.path:
        bank = load_phrases(cfg.phrases.path)
    else:
        concepts, _ = vocabulary(cfg)
        out = stage_dir(cfg, "phrases", asdict(cfg.phrases), list_hash(concepts), cfg.run.seed) / "phrases.jsonl"
        bank = prepare_phrases(concepts, cfg.phrases, out, device=str(cfg.run.device), seed=cfg.run.seed,
                               progress=progress)
    return {c: list(bank[c]) for c in bank.usable_concepts}


def image_concepts(cfg: StudyConfig, bb: Backbone, images: ImageSet, feats: FeatureSet,
                   progress: bool = True) -> dict[str, list[str]]:
    """Each image's top-k concepts (official CSV, cached)."""
    concepts, templates = vocabulary(cfg)
    path = stage_dir(cfg, "concepts", asdict(cfg.model), cfg.concepts.top_k, list_hash(concepts),
                     list_hash(templates), list_hash(feats.ids)) / f"{cfg.model.name}_top_{cfg.concepts.top_k}.csv"
    if not path.is_file():
        embs = concept_embeddings(bb, concepts, templates, progress=progress)
        write_concepts_csv(path, feats.ids, concepts, associate(feats.features, embs, cfg.concepts.top_k))
    return read_concepts_csv(path)


# ----------------------------------------------------------------------------------------------- OTI and phi
def oti(cfg: StudyConfig, bb: Backbone, images: ImageSet, progress: bool = True,
        force_restart: bool = False) -> OTIResult:
    """EMA OTI tokens of ``images`` (cached; resumes an interrupted run)."""
    feats = features(cfg, bb, images, skip_bad=True, progress=progress)
    bank = phrases(cfg, progress) if cfg.oti.lambda_gpt > 0 else None
    ranked = image_concepts(cfg, bb, images, feats, progress) if bank else None
    _, templates = vocabulary(cfg)
    key = (asdict(cfg.model), _oti_key(cfg), asdict(cfg.phrases) if bank else None, list_hash(templates),
           cfg.run.seed, list_hash(feats.ids))
    out = stage_dir(cfg, "oti", *key)
    return run_oti(bb, feats.ids, feats.features, ranked, bank, templates, cfg.oti, seed=cfg.run.seed,
                   out_dir=out, config_hash=_hash(*key), force_restart=force_restart, progress=progress)


def _oti_key(cfg: StudyConfig) -> dict:
    """OTI settings that change the tokens; batch size, path, precision and chunking do not (per-image streams)."""
    return {k: v for k, v in asdict(cfg.oti).items() if k not in ("batch_size", "mode", "chunk_images", "precision",
                                                                  "compile")}


@dataclass
class PhiRun:
    phi: Phi
    history: PhiHistory
    folder: Path
    n_images: int


def phi(cfg: StudyConfig, bb: Backbone, images: ImageSet | None = None,
        validate_split: CIRSplit | str | None = "val", n_train: int | None = None, progress: bool = True,
        force_restart: bool = False) -> PhiRun:
    """Train phi on ``images`` (default: the unlabeled set) against their EMA OTI tokens (cached).

    ``n_train``: train on the first n images (by name) only; the OTI tokens are those of the whole set (per-image
    random streams make a token independent of the set it was computed with).

    ``validate_split``: a split, or the name of a split of ``data.dataset``, scored with SEARLE after every epoch
    (official: CIRR val); "val" is used when that split can be loaded, and validation is skipped otherwise.
    """
    images = images or unlabeled_images(cfg)
    if isinstance(validate_split, str):
        try:
            validate_split = split(cfg, validate_split)
        except (DatasetError, TypeError):
            validate_split = None
    tokens = oti(cfg, bb, images, progress)
    feats = features(cfg, bb, images, skip_bad=True, progress=False)
    by_id = tokens.by_id(ema=True)
    ids = [i for i in feats.ids if i in by_id]
    if n_train is not None:
        ids = sorted(ids)[:n_train]
    bank = phrases(cfg, progress) if cfg.phi.lambda_gpt > 0 else None
    ranked = image_concepts(cfg, bb, images, feats, progress) if bank else None
    validate = None
    if validate_split is not None:
        val_ctx = _gallery(cfg, bb, validate_split)

        def validate(model: Phi) -> dict:
            s = _score(cfg, bb, validate_split, "searle", val_ctx, phi_model=model)
            return {f"val_{k}": v for k, v in s.metrics.items()} | {"val_score": _val_score(s)}
    out = stage_dir(cfg, "phi", asdict(cfg.model), asdict(cfg.phi), _oti_key(cfg), asdict(cfg.phrases),
                    cfg.run.seed, list_hash(ids), validate_split.split if validate_split else None)
    model, hist = train_phi(bb, feats.select(ids), torch.stack([by_id[i] for i in ids]),
                            [ranked[i] for i in ids] if ranked else None, bank, cfg.phi, seed=cfg.run.seed,
                            out_dir=out, validate=validate, force_restart=force_restart, progress=progress)
    return PhiRun(model, hist, out, len(ids))


def _val_score(s: SplitScores) -> float:
    """Checkpoint selection score: the mean of the split's reported metrics (documented in the book)."""
    return sum(s.metrics.values()) / max(len(s.metrics), 1)


# ------------------------------------------------------------------------------------------------ evaluation
@dataclass
class _GalleryContext:
    gallery: torch.Tensor  # normalised gallery features, in split.gallery.ids order
    references: dict[str, torch.Tensor]  # raw features of the reference images


def _gallery(cfg: StudyConfig, bb: Backbone, sp: CIRSplit, progress: bool = False) -> _GalleryContext:
    g = features(cfg, bb, sp.gallery, progress=progress)
    refs = list(dict.fromkeys(q.reference_id for q in sp.queries))
    r = features(cfg, bb, sp.images.subset(refs), progress=progress)
    return _GalleryContext(torch.nn.functional.normalize(g.select(sp.gallery.ids), dim=-1),
                           {i: f for i, f in zip(r.ids, r.features)})


def _score(cfg: StudyConfig, bb: Backbone, sp: CIRSplit, method: str, gc: _GalleryContext,
           phi_model: Phi | None = None, oti_tokens: dict[str, torch.Tensor] | None = None) -> SplitScores:
    tokens = None
    if NEEDS_TOKENS.get(method) == "phi":
        refs = list(gc.references)
        tokens = dict(zip(refs, phi_tokens(phi_model, torch.stack([gc.references[i] for i in refs]))))
    elif NEEDS_TOKENS.get(method) == "oti":
        tokens = oti_tokens
    ctx = QueryContext(bb, gc.references, tokens, cfg.eval.fashioniq_composition, cfg.eval.batch_size)
    return score_split(sp, query_features(method, ctx, sp), gc.gallery, rank_k=cfg.eval.rank_k)


def evaluate(cfg: StudyConfig, bb: Backbone, sp: CIRSplit, methods: Sequence[str] | None = None,
             phi_model: Phi | None = None, progress: bool = True) -> dict[str, SplitScores]:
    """Score each method on ``sp``; SEARLE-OTI inverts the split's reference images (cached)."""
    methods = list(methods or cfg.eval.methods)
    gc = _gallery(cfg, bb, sp, progress)
    oti_tokens = None
    if "searle-oti" in methods:
        refs = sp.images.subset(list(dict.fromkeys(q.reference_id for q in sp.queries)))
        oti_tokens = oti(cfg, bb, refs, progress).by_id(ema=True)
    if "searle" in methods and phi_model is None:
        raise ValueError("method 'searle' needs a trained phi (pipeline.phi or a checkpoint via phi.load_phi)")
    return {m: _score(cfg, bb, sp, m, gc, phi_model, oti_tokens) for m in methods}
