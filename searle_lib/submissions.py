"""Test-server submission files for CIRR and CIRCO (reference section 7.2-7.3; SEARLE
``src/generate_test_submission.py``; CIRCO ``src/evaluation.py`` and its submission examples).

- CIRR (cirr.cecs.anu.edu.au, 5 MB upload limit): ``<name>.json`` =
  ``{"version": "rc2", "metric": "recall", "<pairid>": [top-50 image ids]}`` and ``subset_<name>.json`` with
  ``"metric": "recall_subset"`` and the top-3 of the query's group; the reference is excluded from both.
- CIRCO (circo.micc.unifi.it): ``{"<query id>": [top-50 unique image ids]}`` for every query id 0..N-1
  (the server asserts the keys are exactly those and, since CIRCO commit 9aca351, rejects duplicate ids).

Each file is checked by its validator (every defect listed at once) and only then written, atomically.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Mapping

from .chunkstore import atomic_output
from .datasets.base import CIRSplit
from .metrics import SplitScores

CIRR_TOP_K, CIRR_SUBSET_K, CIRCO_TOP_K = 50, 3, 50
CIRR_SIZE_LIMIT = 5_000_000  # bytes: the CIRR server's 5 MB upload limit, read strictly (10^6, not 2^20)


class SubmissionError(ValueError):
    """A submission that the evaluation server would reject or mis-score; the message lists every defect."""


def _raise(problems: list[str], what: str) -> None:
    if problems:
        shown = "\n  ".join(problems[:12])
        more = f"\n  ... and {len(problems) - 12} more" if len(problems) > 12 else ""
        raise SubmissionError(f"{what} is not valid:\n  {shown}{more}")


def _check_lists(sub: Mapping[str, Any], expected: Mapping[str, int], gallery: set[str],
                 banned: Mapping[str, str], allowed: Mapping[str, set[str]] | None) -> list[str]:
    """Problems of the per-query lists: type, length, duplicates, unknown ids, the reference, outside the group."""
    problems = []
    for qid, want in expected.items():
        ids = sub.get(qid)
        if ids is None:
            continue
        if not isinstance(ids, list):
            problems.append(f"query {qid}: expected a list of image ids, found {type(ids).__name__}")
            continue
        ids = [str(i) for i in ids]
        if len(ids) != want:
            problems.append(f"query {qid}: {len(ids)} ids, expected {want}")
        dups = sorted(i for i, n in Counter(ids).items() if n > 1)
        if dups:
            problems.append(f"query {qid}: duplicate ids {dups[:3]}")
        unknown = [i for i in ids if i not in gallery]
        if unknown:
            problems.append(f"query {qid}: ids not in the gallery {unknown[:3]}")
        if qid in banned and banned[qid] in ids:
            problems.append(f"query {qid}: holds its reference image {banned[qid]!r}, which must be excluded")
        if allowed is not None:
            outside = [i for i in ids if i not in allowed[qid]]
            if outside:
                problems.append(f"query {qid}: ids outside its img_set group {outside[:3]}")
    return problems


def _check_keys(keys: set[str], expected: set[str]) -> list[str]:
    problems = []
    missing, extra = sorted(expected - keys), sorted(keys - expected)
    if missing:
        problems.append(f"{len(missing)} query id(s) missing, e.g. {missing[:5]}")
    if extra:
        problems.append(f"{len(extra)} unknown key(s), e.g. {extra[:5]}")
    return problems


def _require(split: CIRSplit, dataset: str) -> None:
    if split.dataset != dataset:
        raise ValueError(f"a {dataset} submission needs a {dataset} split, got {split.dataset}/{split.split}")


def validate_cirr_submission(sub: Mapping[str, Any], split: CIRSplit, metric: str | None = None) -> None:
    """Raise ``SubmissionError`` listing every defect of a CIRR submission dict for ``split``.

    Checks the ``version``/``metric`` header, that every pairid is present and nothing else, the list lengths
    (50, or 3 for ``recall_subset``; fewer only when the gallery or group is smaller), duplicates, ids outside the
    gallery (or outside the group), the reference image, and the 5 MB size limit.
    """
    _require(split, "cirr")
    problems = []
    if sub.get("version") != "rc2":
        problems.append(f"'version' is {sub.get('version')!r}, expected 'rc2'")
    got = sub.get("metric")
    if got not in ("recall", "recall_subset") or (metric is not None and got != metric):
        problems.append(f"'metric' is {got!r}, expected {metric or 'recall or recall_subset'!r}")
    queries = {str(q.query_id): q for q in split.queries}
    keys = {k for k in sub if k not in ("version", "metric")}
    problems += _check_keys(keys, set(queries))
    gallery = set(split.gallery.ids)
    banned = {qid: q.reference_id for qid, q in queries.items()}
    if got == "recall_subset":
        allowed = {qid: set(q.group_ids) - {q.reference_id} for qid, q in queries.items()}
        expected = {qid: min(CIRR_SUBSET_K, len(a)) for qid, a in allowed.items()}
    else:
        allowed = None
        expected = {qid: min(CIRR_TOP_K, len(gallery) - (q.reference_id in gallery)) for qid, q in queries.items()}
    problems += _check_lists(sub, expected, gallery, banned, allowed)
    size = len(_encode(sub))  # exactly what _write_json writes
    if size > CIRR_SIZE_LIMIT:
        problems.append(f"the file would be {size:,} bytes, over the server's limit of {CIRR_SIZE_LIMIT:,} bytes "
                        "(5 MB)")
    _raise(problems, f"CIRR {got or ''} submission".replace("  ", " "))


def validate_circo_submission(sub: Mapping[str, Any], split: CIRSplit) -> None:
    """Raise ``SubmissionError`` listing every defect of a CIRCO submission dict for ``split``.

    Checks that the keys are exactly the split's query ids and, as the server asserts, the integers 0..N-1; that
    each list holds 50 unique gallery ids (fewer only for a smaller gallery).
    """
    _require(split, "circo")
    queries = [str(q.query_id) for q in split.queries]
    keys = {str(k) for k in sub}
    problems = _check_keys(keys, set(queries))
    if keys and sorted(keys, key=lambda k: (len(k), k)) != [str(i) for i in range(len(keys))]:
        problems.append(f"keys must be the query ids 0..{len(keys) - 1} (the server asserts this); a query was "
                        "dropped or renamed")
    gallery = set(split.gallery.ids)
    expected = {qid: min(CIRCO_TOP_K, len(gallery)) for qid in queries}
    problems += _check_lists({str(k): v for k, v in sub.items()}, expected, gallery, {}, None)
    _raise(problems, "CIRCO submission")


def cirr_submissions(scores: SplitScores, split: CIRSplit) -> tuple[dict[str, Any], dict[str, Any]]:
    """The recall (top-50) and recall_subset (top-3 in the group) dicts from ``score_split`` rankings."""
    _require(split, "cirr")
    recall: dict[str, Any] = {"version": "rc2", "metric": "recall"}
    subset: dict[str, Any] = {"version": "rc2", "metric": "recall_subset"}
    for q in split.queries:
        recall[str(q.query_id)] = list(scores.rankings[q.query_id][:CIRR_TOP_K])
        subset[str(q.query_id)] = list(scores.subset_rankings[q.query_id][:CIRR_SUBSET_K])
    return recall, subset


def circo_submission(scores: SplitScores, split: CIRSplit) -> dict[str, list[str]]:
    """``{query id: top-50 gallery ids}`` (strings, as SEARLE writes them) from ``score_split`` rankings."""
    _require(split, "circo")
    return {str(q.query_id): list(scores.rankings[q.query_id][:CIRCO_TOP_K]) for q in split.queries}


def _encode(obj: Any) -> bytes:
    # compact separators: ~4.1k test1 queries x 50 ids of ~17 characters make ~4.4 MB with json's default
    # separators and ~4.2 MB without, both close to the 5 MB limit
    return json.dumps(obj, separators=(",", ":")).encode()


def _write_json(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        tmp.write_bytes(_encode(obj))
    return path


def write_cirr_submission(scores: SplitScores, split: CIRSplit, out_dir: str | Path,
                          name: str) -> tuple[Path, Path]:
    """Validate, then write ``<out_dir>/<name>.json`` and ``<out_dir>/subset_<name>.json``; returns both paths."""
    recall, subset = cirr_submissions(scores, split)
    validate_cirr_submission(recall, split, "recall")
    validate_cirr_submission(subset, split, "recall_subset")
    out_dir = Path(out_dir)
    return _write_json(out_dir / f"{name}.json", recall), _write_json(out_dir / f"subset_{name}.json", subset)


def write_circo_submission(scores: SplitScores, split: CIRSplit, out_dir: str | Path, name: str) -> Path:
    """Validate, then write ``<out_dir>/<name>.json``; returns its path."""
    sub = circo_submission(scores, split)
    validate_circo_submission(sub, split)
    return _write_json(Path(out_dir) / f"{name}.json", sub)
