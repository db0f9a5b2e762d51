"""Shared checks for the official benchmark layouts (SEARLE reference section 7): folders, JSON files, records, images.

Every failure is one ``DatasetError`` that names the file or record, shows the expected layout and says how to fix
it, so a user who assembled a dataset by hand learns at once what is wrong. Image existence is checked with one
directory listing per folder (not one ``stat`` per image): a 123k-image COCO gallery is checked in about a second.
"""
from __future__ import annotations

import json
import os
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

from .base import DatasetError

ON_MISSING = ("error", "drop")


class Layout:
    """How one dataset is laid out on disk and where to get it; used to word every error the same way."""

    def __init__(self, dataset: str, root: Path, tree: str, fix: str):
        self.dataset, self.root, self.tree, self.fix = dataset, root, tree, fix

    def error(self, problem: str) -> DatasetError:
        return DatasetError(f"{self.dataset}: {problem}\nExpected layout under {self.root}:\n{self.tree}\n"
                            f"Fix: {self.fix}")

    def require_dir(self, path: Path) -> Path:
        if not path.is_dir():
            what = "dataset root" if path == self.root else "folder"
            raise self.error(f"{what} {path} does not exist")
        return path

    def read_json(self, path: Path) -> Any:
        if not path.is_file():
            raise self.error(f"annotation file {path} does not exist")
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except json.JSONDecodeError as e:
            raise self.error(f"annotation file {path} is not valid JSON (line {e.lineno}, column {e.colno}: "
                             f"{e.msg}); it is probably truncated or edited, download it again") from None
        except UnicodeDecodeError as e:
            raise self.error(f"annotation file {path} is not UTF-8 text ({e.reason}); download it again") from None

    def expect_list(self, data: Any, path: Path, what: str) -> list:
        if not isinstance(data, list):
            raise self.error(f"{path} should hold a JSON list of {what}, found {type(data).__name__}")
        if not data:  # no official annotation file is empty: an empty gallery or split would score nothing
            raise self.error(f"{path} holds an empty list (no {what}); it is truncated or a placeholder, "
                             "download it again")
        return data

    def expect_dict(self, data: Any, path: Path, what: str) -> dict:
        if not isinstance(data, dict):
            raise self.error(f"{path} should hold a JSON object of {what}, found {type(data).__name__}")
        if not data:
            raise self.error(f"{path} holds an empty object (no {what}); it is truncated or a placeholder, "
                             "download it again")
        return data

    def require_gallery(self, ids: list, where: Path) -> None:
        """After dropping absent images (``on_missing="drop"``) something must be left to rank."""
        if not ids:
            raise self.error(f"none of the gallery images listed in {where} is on disk: the gallery would be empty")

    def check_record(self, rec: Any, path: Path, index: int, fields: dict[str, type | tuple[type, ...]]) -> dict:
        """Check that record ``index`` of ``path`` is an object whose ``fields`` have the given types."""
        if not isinstance(rec, dict):
            raise self.error(f"{path}, record {index}: expected a JSON object, found {type(rec).__name__} {rec!r:.80}")
        for name, tp in fields.items():
            if name not in rec:
                raise self.error(f"{path}, record {index}: field {name!r} is missing (record: {_short(rec)})")
            if not isinstance(rec[name], tp) or isinstance(rec[name], bool):
                names = "/".join(t.__name__ for t in (tp if isinstance(tp, tuple) else (tp,)))
                raise self.error(f"{path}, record {index}: field {name!r} should be {names}, found "
                                 f"{type(rec[name]).__name__} {rec[name]!r:.80}")
        return rec


def _short(rec: dict) -> str:
    text = json.dumps(rec, ensure_ascii=False)
    return text if len(text) <= 160 else text[:157] + "..."


def listing(folder: Path) -> set[str]:
    """Names in ``folder`` (empty when it does not exist)."""
    try:
        with os.scandir(folder) as it:
            return {e.name for e in it}
    except (FileNotFoundError, NotADirectoryError):
        return set()


def existing(paths: Iterable[Path]) -> list[bool]:
    """Whether each path exists, listing each parent folder once."""
    paths = list(paths)
    by_parent: dict[Path, set[str]] = {}
    out = []
    for p in paths:
        if p.parent not in by_parent:
            by_parent[p.parent] = listing(p.parent)
        out.append(p.name in by_parent[p.parent])
    return out


def check_on_missing(on_missing: str) -> None:
    if on_missing not in ON_MISSING:
        raise ValueError(f"on_missing={on_missing!r}: expected one of {ON_MISSING}")


def report_missing(layout: Layout, missing: dict[str, Path], on_missing: str, listed_in: str) -> None:
    """Raise (``on_missing="error"``) or warn about images listed in the annotations but absent on disk."""
    if not missing:
        return
    shown = "\n  ".join(f"{i} -> {p}" for i, p in list(missing.items())[:5])
    more = f"\n  ... and {len(missing) - 5} more" if len(missing) > 5 else ""
    if on_missing == "error":
        raise layout.error(f"{len(missing)} image(s) listed in {listed_in} are absent:\n  {shown}{more}\n"
                           "(pass on_missing='drop' to evaluate without them; the numbers are then not comparable "
                           "to the paper's)")
    warnings.warn(f"{layout.dataset}: {len(missing)} image(s) listed in {listed_in} are absent and were dropped "
                  f"with the queries that use them; numbers are not comparable to the paper's. First: {shown}",
                  stacklevel=3)


def drop_queries(queries: list, missing: set[str]) -> list:
    """Queries that use no missing image (reference, target, ground truth or group member)."""
    def uses(q) -> set[str]:
        return {q.reference_id, *([q.target_id] if q.target_id else []), *q.gt_ids, *q.group_ids}
    return [q for q in queries if not (uses(q) & missing)]


def unique(items: Iterable[str]) -> list[str]:
    """Items in first-seen order without repeats."""
    return list(dict.fromkeys(items))


def group_ids(queries: Iterable, key) -> dict[str, tuple[str, ...]]:
    groups: dict[str, list[str]] = defaultdict(list)
    for q in queries:
        for g in key(q):
            groups[g].append(q.query_id)
    return {g: tuple(ids) for g, ids in groups.items()}
