"""Concept vocabulary and zero-shot image-concept association (SEARLE section 3.2; official
``image_concepts_association.py``).

Each concept is written into every template (``template.format(" <concept> ")``), encoded, L2-normalised, averaged
and normalised again (prompt ensembling). Each image keeps its ``top_k`` (250) most cosine-similar concepts, stored
in the official CSV layout ``Image Name,1,2,...,250``.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import distributed
from .backbones import Backbone
from .chunkstore import atomic_output
from .config import ConfigError
from .text_encoding import encode_texts

OPEN_IMAGES_URL = "https://storage.googleapis.com/openimages/v7/oidv7-class-descriptions.csv"
PALAVRA_TEMPLATES_HINT = ("the 24 PALAVRA templates (one per line, '{}' marks the concept), as listed in the official "
                          "SEARLE code (src/utils.py); save them as data/palavra_templates.txt or set "
                          "data.templates_path")


def load_vocabulary(path: str | Path) -> list[str]:
    """Concept names from an Open Images class-description CSV (``LabelName,DisplayName``) or a one-per-line file.

    Blank names or names holding the placeholder ``$`` are errors (they would break the pseudo-word prompts);
    duplicates are dropped, keeping the first.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"concept vocabulary {path} does not exist; download the Open Images V7 class list "
                          f"from {OPEN_IMAGES_URL} or set data.concepts_path to your own CSV")
    with path.open(newline="", encoding="utf-8") as f:
        if path.suffix.lower() == ".csv":
            reader = csv.DictReader(f)
            if not reader.fieldnames or "DisplayName" not in reader.fieldnames:
                raise ConfigError(f"{path}: expected a header with a DisplayName column (Open Images layout "
                                  f"'LabelName,DisplayName'), got {reader.fieldnames}")
            rows = [(i + 2, (r.get("DisplayName") or "")) for i, r in enumerate(reader)]
        else:
            rows = [(i + 1, line.rstrip("\n")) for i, line in enumerate(f)]
    names, seen = [], set()
    for line, name in rows:
        if not name.strip():
            raise ConfigError(f"{path}, line {line}: blank concept name; remove the row or fill it in")
        if "$" in name:
            raise ConfigError(f"{path}, line {line}: concept {name!r} contains '$', the pseudo-word placeholder; "
                              "rename or remove it")
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def fallback_vocabulary() -> list[str]:
    """Offline fallback: the 1,000 ImageNet class names shipped with open_clip (not SEARLE's vocabulary)."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
    return list(dict.fromkeys(IMAGENET_CLASSNAMES))


def load_templates(path: str | Path | None) -> list[str]:
    """Prompt templates, one per line with ``{}`` for the concept (PALAVRA's 24 by default)."""
    candidates = [Path(path)] if path else [Path("data/palavra_templates.txt"),
                                            Path(os.environ.get("SEARLE_TEMPLATES", "data/palavra_templates.txt"))]
    for p in candidates:
        if p.is_file():
            templates = [t for t in p.read_text(encoding="utf-8").splitlines() if t.strip()]
            bad = [t for t in templates if t.count("{}") != 1]
            if bad or not templates:
                raise ConfigError(f"{p}: every template needs exactly one '{{}}' (bad: {bad[:3]}); expected "
                                  + PALAVRA_TEMPLATES_HINT)
            return templates
    raise ConfigError(f"prompt templates not found (looked for {', '.join(map(str, candidates))}); provide "
                      + PALAVRA_TEMPLATES_HINT)


@torch.no_grad()
def concept_embeddings(backbone: Backbone, concepts: Sequence[str], templates: Sequence[str],
                       batch_size: int = 1024, progress: bool = True) -> torch.Tensor:
    """Prompt-ensembled, L2-normalised text embeddings of ``concepts`` ([C, d]).

    Under ``torchrun`` each process encodes a contiguous share of the concepts; every process returns all rows.
    """
    share = distributed.shard_range(len(concepts))
    out = torch.empty(len(concepts), backbone.feature_dim)
    per_batch = max(1, batch_size // len(templates))
    for i in tqdm(range(share.start, share.stop, per_batch), disable=not progress, desc="concept embeddings"):
        chunk = concepts[i:min(i + per_batch, share.stop)]
        texts = [t.format(f" {c} ") for c in chunk for t in templates]
        feats = encode_texts(backbone, texts, batch_size=batch_size, normalize=True)
        out[i:i + len(chunk)] = F.normalize(feats.view(len(chunk), len(templates), -1).mean(1), dim=-1)
    if distributed.world_size() > 1:
        rows = torch.arange(share.start, share.stop)
        out = distributed.gather_rows(len(concepts), rows, {"e": out[rows]})["e"]
    return out


@torch.no_grad()
def associate(image_features: torch.Tensor, concept_embs: torch.Tensor, top_k: int = 250,
              chunk: int = 4096) -> torch.Tensor:
    """Indices ([N, k]) of each image's ``top_k`` concepts by cosine similarity (no temperature, no softmax).

    Under ``torchrun`` each process ranks a contiguous share of the images; every process returns all rows.
    """
    k = min(top_k, concept_embs.shape[0])
    share = distributed.shard_range(len(image_features))
    img = F.normalize(image_features[share.start:share.stop].float(), dim=-1)
    top = torch.cat([(img[i:i + chunk] @ concept_embs.T).topk(k, dim=1).indices
                     for i in range(0, len(img), chunk)]) if len(img) else torch.zeros(0, k, dtype=torch.long)
    if distributed.world_size() > 1:
        top = distributed.gather_rows(len(image_features), torch.arange(share.start, share.stop), {"t": top})["t"]
    return top


def write_concepts_csv(path: str | Path, image_ids: Sequence[str], concepts: Sequence[str],
                       top: torch.Tensor) -> Path:
    """Write the official CSV (``Image Name,1,...,K``), atomically; under ``torchrun`` rank 0 writes, all wait."""
    path = Path(path)
    if not distributed.is_main():
        distributed.barrier()
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["Image Name", *range(1, top.shape[1] + 1)])
        for name, row in zip(image_ids, top.tolist()):
            w.writerow([name, *(concepts[j] for j in row)])
    distributed.barrier()
    return path


def read_concepts_csv(path: str | Path) -> dict[str, list[str]]:
    """Image name -> ranked concept names, from the official CSV."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"concept association file {path} does not exist; run `searle concepts` first")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or header[0] != "Image Name":
            raise ConfigError(f"{path}: expected the official header 'Image Name,1,2,...', got {header[:3] if header else header}")
        return {row[0]: row[1:] for row in reader}


def top_concepts(ranked: Sequence[str], k: int, strip_dedup: bool) -> list[str]:
    """First ``k`` concepts; OTI strips and deduplicates them, phi uses the raw strings (official code)."""
    head = list(ranked[:k])
    return list(dict.fromkeys(c.strip() for c in head)) if strip_dedup else head
