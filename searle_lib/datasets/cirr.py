"""CIRR (Liu et al., ICCV 2021) in its official layout, as SEARLE evaluates it (reference section 7.2).

The gallery is every image of ``cirr/image_splits/split.rc2.<split>.json`` (image id -> path relative to the root).
The reference image is removed from each ranking (``exclude_reference=True``), Recall@1/5/10/50 is measured
against ``target_hard`` and Recall_subset@1/2/3 within the query's ``img_set.members`` (reference removed).
``test`` means ``test1``, whose captions carry no target: rankings only, for the evaluation server.
"""
from __future__ import annotations

from pathlib import Path

from ._layout import Layout, check_on_missing, drop_queries, existing, report_missing, unique
from .base import CIRQuery, CIRSplit, ImageSet, register_dataset

SPLITS = {"train": "train", "val": "val", "test": "test1", "test1": "test1"}
METRICS = ("recall_at_1", "recall_at_5", "recall_at_10", "recall_at_50",
           "recall_subset_at_1", "recall_subset_at_2", "recall_subset_at_3")

TREE = """  cirr/captions/cap.rc2.<split>.json      list of {"pairid", "reference", "target_hard", "caption",
                                          "img_set": {"members": [6 image ids], ...}} ("target_hard" absent in test1)
  cirr/image_splits/split.rc2.<split>.json  {"<image id>": "./<folder>/<image id>.png", ...}
  train/<0..>/train-*.png   dev/dev-*.png   test1/test1-*.png
  with <split> in train, val, test1"""
FIX = ("get the annotations from https://github.com/Cuberick-Orion/CIRR (its cirr/ folder) and the images as its "
       "README explains (NLVR2 raw images, or the Kaggle mirror anhngzv/cirr-cir), and point data.root at the "
       "folder that holds cirr/, dev/ and test1/")


@register_dataset("cirr")
def cirr(root: str | Path | None, split: str = "val", *, on_missing: str = "error") -> CIRSplit:
    """Load CIRR ``split`` (``train``, ``val``, ``test``/``test1``) from ``root``.

    Args:
        root: folder holding ``cirr/`` and the image folders (``dev/``, ``test1/``, ``train/``).
        split: ``val`` for metrics, ``test`` (= ``test1``) for server submissions, ``train``.
        on_missing: ``"error"`` (default) when a listed image is absent, or ``"drop"`` it and the queries using it.

    Returns:
        A ``CIRSplit`` with query ids ``str(pairid)``, ``group_ids`` = ``img_set.members``, reference excluded.
    """
    check_on_missing(on_missing)
    if split not in SPLITS:
        raise ValueError(f"cirr split {split!r}: expected one of {tuple(SPLITS)}")
    fsplit = SPLITS[split]
    if root is None:
        raise Layout("cirr", Path("<data.root>"), TREE, FIX).error("no dataset root given (data.root is null)")
    root = Path(root).expanduser()
    layout = Layout("cirr", root, TREE, FIX)
    layout.require_dir(root)
    layout.require_dir(root / "cirr")

    split_path = root / "cirr" / "image_splits" / f"split.rc2.{fsplit}.json"
    rel_paths = layout.expect_dict(layout.read_json(split_path), split_path, "image id -> relative path")
    for image_id, rel in rel_paths.items():
        if not isinstance(rel, str) or not rel:
            raise layout.error(f"{split_path}, image {image_id!r}: expected a relative path string, found {rel!r:.80}")

    cap_path = root / "cirr" / "captions" / f"cap.rc2.{fsplit}.json"
    records = layout.expect_list(layout.read_json(cap_path), cap_path, "caption records")
    has_gt = fsplit != "test1"
    fields: dict = {"pairid": int, "reference": str, "caption": str, "img_set": dict}
    if has_gt:
        fields["target_hard"] = str
    queries, seen = [], set()
    for i, rec in enumerate(records):
        layout.check_record(rec, cap_path, i, fields)
        members = rec["img_set"].get("members")
        if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
            raise layout.error(f"{cap_path}, record {i}: 'img_set.members' should be a list of image ids, "
                               f"found {members!r:.120}")
        qid = str(rec["pairid"])
        if qid in seen:
            raise layout.error(f"{cap_path}, record {i}: pairid {qid} appears twice")
        seen.add(qid)
        target = rec["target_hard"] if has_gt else None
        for role, image_id in [("reference", rec["reference"]), ("target_hard", target)] + \
                [("img_set member", m) for m in members]:
            if image_id is not None and image_id not in rel_paths:
                raise layout.error(f"{cap_path}, record {i} (pairid {qid}): {role} {image_id!r} is not listed in "
                                   f"{split_path.name}; the two files come from different releases or splits")
        queries.append(CIRQuery(query_id=qid, reference_id=rec["reference"], captions=(rec["caption"],),
                                target_id=target, group_ids=tuple(unique(members))))

    ids = list(rel_paths)
    paths = {i: root / rel for i, rel in rel_paths.items()}  # "./dev/x.png" resolves against the root
    missing = {i: paths[i] for i, ok in zip(ids, existing(paths[i] for i in ids)) if not ok}
    report_missing(layout, missing, on_missing, split_path.name)
    if missing:
        queries = drop_queries(queries, set(missing))
        ids = [i for i in ids if i not in missing]
        layout.require_gallery(ids, split_path)
    gallery = ImageSet(tuple(ids), tuple(paths[i] for i in ids), f"cirr/{fsplit}/gallery")
    return CIRSplit(dataset="cirr", split=fsplit, queries=tuple(queries), gallery=gallery,
                    images=ImageSet(gallery.ids, gallery.paths, f"cirr/{fsplit}/images"),
                    exclude_reference=True, metrics=METRICS, has_ground_truth=has_gt, root=root)
