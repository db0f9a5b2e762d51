"""Miniature copies of FashionIQ, CIRR, CIRCO and ImageNet1K-test in their exact official layouts
(``../shared/searle_reference.md`` section 7), written by tests into a temporary folder.

Images are small generated pictures (a coloured background with a coloured box), deterministic from their name;
some are non-square, one per dataset is grayscale, FashionIQ has one PNG beside its JPEGs. The counts below are the
contract the loader tests check; end-to-end tests can use the folders as real dataset roots.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from PIL import Image, ImageDraw

# What each writer produces (tests compare loaders against these numbers).
FIQ_CATEGORIES = ("dress", "shirt", "toptee")
FIQ_VAL_GALLERY, FIQ_VAL_QUERIES = 6, 3  # per category
FIQ_TEST_GALLERY, FIQ_TEST_QUERIES = 4, 2
CIRR_VAL_IMAGES, CIRR_VAL_QUERIES = 12, 4
CIRR_TEST_IMAGES, CIRR_TEST_QUERIES = 12, 3
CIRR_TRAIN_IMAGES, CIRR_TRAIN_QUERIES = 6, 1
CIRCO_GALLERY, CIRCO_VAL_QUERIES, CIRCO_TEST_QUERIES = 20, 3, 3
IMAGENET_IMAGES = 6

SIZES = [(64, 64), (80, 48), (48, 72), (56, 56), (96, 40), (40, 40)]  # several non-square (targetpad pads them)


def make_image(path: Path, name: str, *, gray: bool = False) -> Path:
    """A small picture determined by ``name``: background colour, box colour, box position and image size."""
    h = hashlib.sha256(name.encode()).digest()
    w, hgt = SIZES[h[0] % len(SIZES)]
    image = Image.new("RGB", (w, hgt), (h[1], h[2], h[3]))
    x0, y0 = h[4] % (w // 2), h[5] % (hgt // 2)
    ImageDraw.Draw(image).rectangle([x0, y0, x0 + w // 3, y0 + hgt // 3], fill=(h[6], h[7], h[8]))
    if gray:
        image = image.convert("L")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))


def write_fashioniq(root: Path) -> Path:
    """``captions/``, ``image_splits/``, ``images/`` for val and test of dress, shirt, toptee.

    In val, query ``i`` of a category has candidate ``gallery[i]`` and target ``gallery[i + 3]``; ``B0DRESS0005`` is
    a PNG and ``B0SHIRT0000`` is grayscale.
    """
    root = Path(root)
    for cat in FIQ_CATEGORIES:
        prefix = f"B0{cat.upper()[:5]}"
        val = [f"{prefix}{n:04d}" for n in range(FIQ_VAL_GALLERY)]
        test = [f"{prefix}{n:04d}" for n in range(100, 100 + FIQ_TEST_GALLERY)]
        _dump(root / "image_splits" / f"split.{cat}.val.json", val)
        _dump(root / "image_splits" / f"split.{cat}.test.json", test)
        _dump(root / "captions" / f"cap.{cat}.val.json", [
            {"target": val[i + 3], "candidate": val[i],
             "captions": [f"is more {cat} colourful {i}", f"has a longer sleeve {i}."]}
            for i in range(FIQ_VAL_QUERIES)])
        _dump(root / "captions" / f"cap.{cat}.test.json", [
            {"candidate": test[i], "captions": [f"is darker {i}", f"is shorter {i}"]}
            for i in range(FIQ_TEST_QUERIES)])
        for asin in val + test:
            ext = ".png" if asin == "B0DRESS0005" else ".jpg"
            make_image(root / "images" / f"{asin}{ext}", asin, gray=asin == "B0SHIRT0000")
    return root


def _cirr_split(root: Path, split: str, ids: list[str], folder, queries: list[dict]) -> None:
    rel = {i: f"./{folder(i)}/{i}.png" for i in ids}
    _dump(root / "cirr" / "image_splits" / f"split.rc2.{split}.json", rel)
    _dump(root / "cirr" / "captions" / f"cap.rc2.{split}.json", queries)
    for n, i in enumerate(ids):
        make_image(root / rel[i], i, gray=n == 1)


def _cirr_query(pairid: int, members: list[str], ref: int, tgt: int | None, caption: str) -> dict:
    rec = {"pairid": pairid, "reference": members[ref], "caption": caption,
           "img_set": {"id": pairid, "members": members, "reference_rank": ref}}
    if tgt is not None:
        rec.update(target_hard=members[tgt], target_soft={members[tgt]: 1.0}, img_set={**rec["img_set"],
                                                                                        "target_rank": tgt})
    return rec


def write_cirr(root: Path) -> Path:
    """``cirr/captions``, ``cirr/image_splits`` and ``dev/``, ``test1/``, ``train/0/`` for val, test1 and train.

    Val pairids are 100..103: query ``q`` uses group ``dev-{q//2}-*`` (6 members), reference member 0 (q even) or
    1, target member 2 + q % 2.
    """
    root = Path(root)
    val = [f"dev-{g}-{m}-img{m % 2}" for g in range(2) for m in range(6)]
    queries = []
    for q in range(CIRR_VAL_QUERIES):
        group = val[6 * (q // 2): 6 * (q // 2) + 6]
        queries.append(_cirr_query(100 + q, group, q % 2, 2 + q % 2, f"has {q + 1} more dogs"))
    _cirr_split(root, "val", val, lambda i: "dev", queries)

    test = [f"test1-{g}-{m}-img{m % 2}" for g in range(2) for m in range(6)]
    tq = [_cirr_query(200 + q, test[6 * (q % 2): 6 * (q % 2) + 6], q, None, f"is at night {q}")
          for q in range(CIRR_TEST_QUERIES)]
    _cirr_split(root, "test1", test, lambda i: "test1", tq)

    train = [f"train-{m}-0-img{m % 2}" for m in range(CIRR_TRAIN_IMAGES)]
    _cirr_split(root, "train", train, lambda i: "train/0", [_cirr_query(1, train, 0, 1, "is red")])
    return root


def write_circo(root: Path) -> Path:
    """``annotations/{val,test}.json`` and the COCO-unlabeled gallery of 20 images (ids 1001, 1003, ..., 1039).

    Val query ``q`` has reference ``gallery[q]`` and ground truths ``gallery[10 + q : 10 + 2q + 2]`` (2, 3, 4 of
    them), target the first; image 1003 is grayscale.
    """
    root = Path(root)
    ids = [1001 + 2 * n for n in range(CIRCO_GALLERY)]
    coco = root / "COCO2017_unlabeled"
    _dump(coco / "annotations" / "image_info_unlabeled2017.json", {
        "info": {"description": "fixture"}, "licenses": [],
        "images": [{"license": 1, "file_name": f"{i:012d}.jpg", "height": 0, "width": 0, "id": i} for i in ids]})
    for n, i in enumerate(ids):
        make_image(coco / "unlabeled2017" / f"{i:012d}.jpg", str(i), gray=n == 1)
    aspects = [["cardinality"], ["addition", "cardinality"], ["viewpoint"]]
    _dump(root / "annotations" / "val.json", [
        {"reference_img_id": ids[q], "target_img_id": ids[10 + q], "relative_caption": f"has {q} more cats",
         "shared_concept": "a cat", "gt_img_ids": ids[10 + q: 10 + 2 * q + 2], "id": q,
         "semantic_aspects": aspects[q]} for q in range(CIRCO_VAL_QUERIES)])
    _dump(root / "annotations" / "test.json", [
        {"reference_img_id": ids[5 + q], "relative_caption": f"is on a table {q}", "shared_concept": "a cup",
         "id": q} for q in range(CIRCO_TEST_QUERIES)])
    return root


def write_imagenet(root: Path) -> Path:
    """``test/ILSVRC2012_test_0000000{1..6}.JPEG``; number 2 is grayscale."""
    root = Path(root)
    for n in range(1, IMAGENET_IMAGES + 1):
        name = f"ILSVRC2012_test_{n:08d}.JPEG"
        # Pillow infers the format from the extension; .JPEG is registered as JPEG
        make_image(root / "test" / name, name, gray=n == 2)
    return root


def write_all(root: Path) -> dict[str, Path]:
    """All four datasets under ``root/{FashionIQ,CIRR,CIRCO,ImageNet1K}``."""
    root = Path(root)
    return {"fashioniq": write_fashioniq(root / "FashionIQ"), "cirr": write_cirr(root / "CIRR"),
            "circo": write_circo(root / "CIRCO"), "imagenet": write_imagenet(root / "ImageNet1K")}
