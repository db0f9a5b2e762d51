"""One frozen configuration object for every stage of SEARLE (Baldrati et al., ICCV 2023).

Defaults are the official ones (``../shared/searle_reference.md`` sections 3-7, HEAD of miccunifi/SEARLE).
Presets live in ``searle_lib/presets/<name>.yaml`` and only list what they change. ``load_config`` applies
defaults, then the preset, then overrides (dotted keys such as ``"oti.steps"``), and rejects unknown keys and
wrongly typed values with a message that lists the valid choices.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

import yaml

PRESET_DIR = Path(__file__).parent / "presets"
PRESET_ALIASES = {"paper-b32": "paper-vitb32", "paper-l14": "paper-vitl14"}  # the names the issues use


class ConfigError(ValueError):
    """A preset, override or parameter that cannot be used; the message names it and the fix."""


@dataclass(frozen=True)
class ModelConfig:
    name: str = "ViT-B-32"  # open_clip architecture name (``open_clip.list_models()`` or a registered test-* config)
    pretrained: str | None = "openai"  # open_clip tag, a local checkpoint file, or None for random init
    preprocess: str = "targetpad"  # "targetpad" (SEARLE default, ratio 1.25) or "clip"
    target_ratio: float = 1.25  # targetpad aspect-ratio threshold
    checkpoint: str | None = None  # our own trained checkpoint (e.g. the embedded tiny CLIP); overrides pretrained


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "embedded"  # benchmark to evaluate: embedded | fashioniq | cirr | circo
    root: str | None = None  # dataset root on disk (None: the embedded world's folder)
    unlabeled: str = "embedded"  # image set used for OTI targets / phi training: embedded | imagenet
    unlabeled_root: str | None = None  # root of that set (ImageNet1K folder holding test/)
    max_unlabeled: int | None = None  # use only the first N unlabeled images (sorted by name); None = all
    concepts_path: str | None = None  # Open Images V7 class-description CSV; None = the vocabulary of the dataset
    templates_path: str | None = None  # the 24 PALAVRA templates, one per line; None = the built-in copy


@dataclass(frozen=True)
class ConceptsConfig:
    top_k: int = 250  # concepts stored per image (official CSV)
    batch_size: int = 32  # images per forward pass


@dataclass(frozen=True)
class PhrasesConfig:
    generator: str = "hf"  # "hf" (any Hugging Face causal LM), "offline" (built-in grammar) or "none"
    lm_name: str = "EleutherAI/gpt-neo-2.7B"  # Hugging Face model id or local folder
    prompt: str = "a photo of {} that"  # official prompt
    num_phrases: int = 256  # phrases per concept
    max_length: int = 35  # total tokens, prompt included
    temperature: float = 0.5
    no_repeat_ngram_size: int = 2
    top_k: int = 50  # HF default in transformers 4.24 (the official code does not set it)
    top_p: float = 1.0
    batch_size: int = 8  # concepts per generate() call
    path: str | None = None  # existing phrases (JSONL or official concept_to_phrases.pkl); None = generate
    grammar: str = "default"  # the offline generator's grammar: "default" (everyday scenes) | "world" (embedded)


@dataclass(frozen=True)
class OTIConfig:
    steps: int = 350
    lr: float = 2e-2
    weight_decay: float = 0.01
    batch_size: int = 32  # images optimised together (official 32; the fast path can use many more)
    loss_batch: int = 32  # per-image gradients are scaled as in a mean over this many images (official batch)
    ema_decay: float = 0.99
    init_std: float = 0.02
    lambda_cos: float = 1.0
    lambda_gpt: float = 0.5
    top_k_concepts: int = 15
    mode: str = "fast"  # "fast" (exact truncation, cached phrase features) or "reference" (official cost)
    chunk_images: int = 160  # images per saved chunk (official: save every 5 batches of 32)
    precision: str = "auto"  # auto | fp32 | fp16 | bf16 (autocast dtype; auto = fp16 in reference, bf16 in fast on CUDA)
    compile: bool = False  # torch.compile the fast path's text tower (pays off on CUDA; tokens unchanged)


@dataclass(frozen=True)
class PhiConfig:
    hidden_mult: int = 4  # hidden width = hidden_mult x image-feature width
    dropout: float = 0.5
    lr: float = 1e-4
    weight_decay: float = 0.01
    batch_size: int = 256
    epochs: int = 100
    tau: float = 0.25  # NT-Xent temperature
    lambda_distil: float = 1.0
    lambda_gpt: float = 0.75
    top_k_concepts: int = 150
    validate_every: int = 1  # epochs between validations (0: never)
    select: str = "last"  # "last" epoch or "val" (best validation score, as the official CIRR-val selection)
    checkpoint_every: int = 5  # epochs between phi_<epoch> checkpoints


@dataclass(frozen=True)
class EvalConfig:
    split: str = "test"  # dataset split to evaluate
    methods: tuple[str, ...] = ("image", "text", "image+text", "searle-oti", "searle")
    fashioniq_composition: str = "both_orders"  # both_orders (SEARLE) | one_order | pic2word
    batch_size: int = 32
    rank_k: int = 50  # ranked list length kept per query


@dataclass(frozen=True)
class WorldConfig:
    """The embedded procedural world (``searle_lib.world``; layout in ``searle_lib/world/layout.py``)."""

    root: str = "data/embedded"  # where the world is written (not part of its hash)
    image_size: int = 64  # rendered image side, pixels
    domains: tuple[str, ...] = ("flat", "night")  # visual domains rendered: flat | night | sketch
    n_pretrain: int = 20000  # (image, captions) pairs for the tiny CLIP, split evenly over the domains
    captions_per_image: int = 4  # pretraining captions stored per image (one is drawn per epoch)
    family_size: int = 4  # pretraining scenes come in families: a scene and variants one edit away (1: none)
    n_unlabeled: int = 4000  # unlabeled images per domain (ImageNet analogue) for OTI / phi
    n_val_queries: int = 300  # composed queries per domain
    n_test_queries: int = 600
    n_heldout_queries: int = 300  # queries involving held-out (shape, colour) pairs
    n_distractors: int = 2000  # random extra gallery images per query split and domain
    gt_per_query: int = 3  # renderings of each target scene in the gallery (one is the designated target)
    group_size: int = 6  # near-miss group incl. reference and designated target, for Recall_subset (>= 4)
    # (shape, colour) pairs never shown in pretraining, unlabeled, val or test data, as "<colour> <shape>"
    heldout_pairs: tuple[str, ...] = ("red star", "blue triangle", "green cross", "yellow diamond")
    seed: int = 0  # scenes, captions, queries and rendering all derive from it
    workers: int = 2  # rendering processes (does not change the images; not part of the hash)


@dataclass(frozen=True)
class PretrainConfig:
    """Contrastive training of the tiny CLIP on the embedded world's (image, caption) pairs (``pretrain.py``)."""

    epochs: int = 8
    batch_size: int = 128
    lr: float = 1e-3  # AdamW peak learning rate
    weight_decay: float = 0.1  # on weights of rank >= 2 only (not on gains, biases or the logit scale)
    warmup_steps: int = 100  # linear warmup, then cosine decay to min_lr_ratio * lr
    min_lr_ratio: float = 0.05
    logit_scale_init: float = 2.6593  # log(1 / 0.07), as CLIP
    hard_negatives: bool = True  # add each caption's stored hard negative (one-edit-away scene) as a candidate text
    family_batches: bool = True  # keep a family (a scene and its one-edit variants) in one batch: hard negatives
    out_dir: str = "data/checkpoints"  # where checkpoints are cached (keyed by a config + data hash)
    shipped: bool = True  # use the repository's weights/ for this key when they match (``weights.py``)
    eval_size: int = 500  # held-out scenes used by the quality report


@dataclass(frozen=True)
class RunConfig:
    seed: int = 42
    out_dir: str = "results"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    deterministic: bool = True  # torch.use_deterministic_algorithms, as the official code
    num_workers: int = 0  # data-loader workers for image decoding
    cache_dir: str = "data/cache"  # feature caches


@dataclass(frozen=True)
class StudyConfig:
    preset: str = "default"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    concepts: ConceptsConfig = field(default_factory=ConceptsConfig)
    phrases: PhrasesConfig = field(default_factory=PhrasesConfig)
    oti: OTIConfig = field(default_factory=OTIConfig)
    phi: PhiConfig = field(default_factory=PhiConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    world: WorldConfig = field(default_factory=WorldConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self, *sections: str) -> str:
        """Short content hash of the given sections (all when none), for caches and resume manifests."""
        d = self.to_dict()
        if sections:
            d = {s: d[s] for s in sections}
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def valid_keys(cls: type = StudyConfig, prefix: str = "") -> list[str]:
    """All dotted keys a preset or override may set."""
    keys = []
    for f in fields(cls):
        tp = _resolve(cls, f.name)
        if dataclasses.is_dataclass(tp):
            keys += valid_keys(tp, prefix + f.name + ".")
        elif prefix:  # top-level scalars (``preset``) are not settable
            keys.append(prefix + f.name)
    return keys


def _resolve(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotated type ``tp``; ints are accepted for floats, lists for tuples."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r} ({type(value).__name__})")
        (inner, *_rest) = typing.get_args(tp)
        return tuple(_coerce(v, inner, key) for v in value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true/false, got {value!r} ({type(value).__name__})")
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key}: expected an integer, got {value!r} ({type(value).__name__})")
    if tp in (str, float) and not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r} ({type(value).__name__})")
    return value


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, prefix + k + "."))
        else:
            out[prefix + k] = v
    return out


def apply_overrides(cfg: StudyConfig, overrides: Mapping[str, Any], source: str = "override") -> StudyConfig:
    """Return ``cfg`` with dotted-key overrides applied; ``None`` values keep the current setting."""
    valid = valid_keys()
    for key, value in _flatten(overrides).items():
        if key not in valid:
            raise ConfigError(
                f"unknown {source} key {key!r}. Valid keys:\n  " + "\n  ".join(valid)
            )
        if value is None and key.split(".")[-1] not in _NULLABLE_OVERRIDES:
            continue
        section, name = key.split(".")
        sub = getattr(cfg, section)
        value = _coerce(value, _resolve(type(sub), name), f"{source} {key}")
        cfg = replace(cfg, **{section: replace(sub, **{name: value})})
    return cfg


# Fields for which an explicit None in a preset means "set to None" rather than "keep".
_NULLABLE_OVERRIDES = {"pretrained", "checkpoint"}


def load_config(preset: str = "embedded", overrides: Mapping[str, Any] | None = None, **kw: Any) -> StudyConfig:
    """Build the config: official defaults, then ``presets/<preset>.yaml`` (or a YAML path), then overrides.

    Overrides may be given as a dict of dotted keys (``{"oti.steps": 50}``), nested dicts, or keyword arguments
    with ``__`` for the dot (``oti__steps=50``). An override of ``None`` keeps the preset value.
    """
    path = Path(preset)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        path = PRESET_DIR / f"{PRESET_ALIASES.get(preset, preset)}.yaml"
        if not path.is_file():
            raise ConfigError(f"unknown preset {preset!r}; available presets: {', '.join(list_presets())} "
                              "(or pass the path of a YAML file)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"preset file {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"preset file {path} must hold a mapping of sections, got {type(data).__name__}")
    cfg = StudyConfig(preset=path.stem)
    cfg = apply_overrides(cfg, data, source=f"preset {path.name}")
    merged = dict(overrides or {})
    merged.update({k.replace("__", "."): v for k, v in kw.items()})
    # explicit None in user overrides always means "keep the preset value"
    merged = {k: v for k, v in _flatten(merged).items() if v is not None}
    return apply_overrides(cfg, merged)
