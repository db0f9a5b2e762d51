"""CIRCO (Baldrati et al., ICCV 2023) in its official layout, as SEARLE and the CIRCO server evaluate it
(reference section 7.3; ``miccunifi/CIRCO`` ``src/evaluation.py``).

The gallery is every image of the COCO 2017 unlabeled set listed in ``image_info_unlabeled2017.json`` (the same
gallery for val and test); the reference is **not** removed from the ranking. Val queries have several ground
truths (``gt_img_ids``, scored with mAP@5/10/25/50) and one ``target_img_id`` (scored with Recall@K as the server
does); ``groups`` maps each semantic aspect to its val queries (the server reports mAP@10 per aspect). Test queries
have no ground truth: rankings only, for the server. Ids are COCO integer ids written as strings.
"""
from __future__ import annotations

from pathlib import Path

from ._layout import Layout, check_on_missing, drop_queries, group_ids, listing, report_missing
from .base import CIRQuery, CIRSplit, ImageSet, register_dataset

SPLITS = ("val", "test")
METRICS = ("map_at_5", "map_at_10", "map_at_25", "map_at_50",
           "recall_at_5", "recall_at_10", "recall_at_25", "recall_at_50")

TREE = """  annotations/val.json, annotations/test.json   list of {"id", "reference_img_id", "relative_caption",
                                                 "shared_concept"} (+ "target_img_id", "gt_img_ids" in val)
  COCO2017_unlabeled/annotations/image_info_unlabeled2017.json   {"images": [{"id", "file_name"}, ...]}
  COCO2017_unlabeled/unlabeled2017/<12-digit id>.jpg"""
FIX = ("get annotations/ from https://github.com/miccunifi/CIRCO, the images from "
       "http://images.cocodataset.org/zips/unlabeled2017.zip and image_info_unlabeled2017.json from "
       "http://images.cocodataset.org/annotations/image_info_unlabeled2017.zip, unpack them as shown, and point "
       "data.root at the folder that holds annotations/ and COCO2017_unlabeled/")


def _gallery(layout: Layout) -> tuple[list[str], dict[str, Path]]:
    """Gallery ids (in file order) and their image paths, from the COCO unlabeled image info."""
    coco = layout.root / "COCO2017_unlabeled"
    layout.require_dir(coco)
    info_path = coco / "annotations" / "image_info_unlabeled2017.json"
    info = layout.expect_dict(layout.read_json(info_path), info_path, "COCO image info")
    images = info.get("images")
    if not isinstance(images, list) or not images:
        raise layout.error(f"{info_path}: expected a non-empty 'images' list, found {images!r:.80}")
    image_dir = coco / "unlabeled2017"
    ids, paths = [], {}
    for i, rec in enumerate(images):
        layout.check_record(rec, info_path, i, {"id": int})
        image_id = str(rec["id"])
        file_name = rec.get("file_name") or f"{rec['id']:012d}.jpg"
        if image_id in paths:
            raise layout.error(f"{info_path}, image record {i}: id {image_id} appears twice")
        ids.append(image_id)
        paths[image_id] = image_dir / file_name
    return ids, paths


@register_dataset("circo")
def circo(root: str | Path | None, split: str = "val", *, on_missing: str = "error") -> CIRSplit:
    """Load CIRCO ``split`` (``val`` or ``test``) from ``root``.

    Args:
        root: folder holding ``annotations/`` and ``COCO2017_unlabeled/``.
        split: ``val`` (ground truth: mAP@K and Recall@K) or ``test`` (rankings for the server).
        on_missing: ``"error"`` (default) when a listed image is absent, or ``"drop"`` it and the queries using it.

    Returns:
        A ``CIRSplit`` with query ids ``str(id)``, ``gt_ids`` and ``target_id`` (val), reference not excluded.
    """
    check_on_missing(on_missing)
    if split not in SPLITS:
        raise ValueError(f"circo split {split!r}: expected one of {SPLITS}")
    if root is None:
        raise Layout("circo", Path("<data.root>"), TREE, FIX).error("no dataset root given (data.root is null)")
    root = Path(root).expanduser()
    layout = Layout("circo", root, TREE, FIX)
    layout.require_dir(root)
    layout.require_dir(root / "annotations")

    ann_path = root / "annotations" / f"{split}.json"
    records = layout.expect_list(layout.read_json(ann_path), ann_path, "query records")
    ids, paths = _gallery(layout)
    has_gt = split == "val"
    fields: dict = {"id": int, "reference_img_id": int, "relative_caption": str}
    if has_gt:
        fields.update(target_img_id=int, gt_img_ids=list)
    queries, aspects, seen = [], {}, set()
    for i, rec in enumerate(records):
        layout.check_record(rec, ann_path, i, fields)
        qid = str(rec["id"])
        if qid in seen:
            raise layout.error(f"{ann_path}, record {i}: query id {qid} appears twice")
        seen.add(qid)
        gt = rec.get("gt_img_ids", []) if has_gt else []
        if has_gt and (not gt or not all(isinstance(g, int) and not isinstance(g, bool) for g in gt)):
            raise layout.error(f"{ann_path}, record {i} (id {qid}): 'gt_img_ids' should be a non-empty list of "
                               f"COCO ids, found {gt!r:.120}")
        for role, image_id in [("reference_img_id", rec["reference_img_id"])] + [("gt_img_ids", g) for g in gt]:
            if str(image_id) not in paths:
                raise layout.error(f"{ann_path}, record {i} (id {qid}): {role} {image_id} is not in the COCO "
                                   "unlabeled image info; use the 2017 unlabeled set's image_info file")
        q = CIRQuery(query_id=qid, reference_id=str(rec["reference_img_id"]), captions=(rec["relative_caption"],),
                     target_id=str(rec["target_img_id"]) if has_gt else None,
                     gt_ids=tuple(dict.fromkeys(str(g) for g in gt)))
        queries.append(q)
        aspects[qid] = [a for a in rec.get("semantic_aspects", []) if isinstance(a, str)]

    present = listing(root / "COCO2017_unlabeled" / "unlabeled2017")
    missing = {i: paths[i] for i in ids if paths[i].name not in present}
    if len(missing) == len(ids):
        raise layout.error(f"no gallery image found in {root / 'COCO2017_unlabeled' / 'unlabeled2017'}")
    report_missing(layout, missing, on_missing, "image_info_unlabeled2017.json")
    if missing:
        queries = drop_queries(queries, set(missing))
        ids = [i for i in ids if i not in missing]
    gallery = ImageSet(tuple(ids), tuple(paths[i] for i in ids), "circo/unlabeled2017/gallery")
    return CIRSplit(dataset="circo", split=split, queries=tuple(queries), gallery=gallery,
                    images=ImageSet(gallery.ids, gallery.paths, "circo/unlabeled2017/images"),
                    exclude_reference=False, metrics=METRICS, has_ground_truth=has_gt, root=root,
                    groups=group_ids(queries, lambda q: aspects[q.query_id]) if has_gt else {})
