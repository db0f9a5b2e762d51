"""Loaders of the official layouts (FashionIQ, CIRR, CIRCO, ImageNet) on miniature copies, the promised errors on
broken layouts, and safe image reading (``searle_lib.images``)."""
import json
import shutil
import warnings

import numpy as np
import pytest
from PIL import Image

import _official_fixtures as F
from searle_lib.datasets import DatasetError, load_split, load_unlabeled
from searle_lib.datasets.fashioniq import fashioniq_categories
from searle_lib.images import ImageDataset, ImageError, collate_images, open_image


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    return F.write_all(tmp_path_factory.mktemp("official"))


# ---------------------------------------------------------------- FashionIQ

def test_fashioniq_one_category_is_the_official_protocol(roots):
    s = load_split("fashioniq", roots["fashioniq"], "val", category="dress")
    assert (s.dataset, s.split, s.exclude_reference, s.has_ground_truth) == ("fashioniq", "val", False, True)
    assert s.metrics == ("recall_at_10", "recall_at_50")
    assert [q.query_id for q in s.queries] == ["dress-0", "dress-1", "dress-2"]
    q = s.queries[1]
    assert (q.reference_id, q.target_id, q.category) == ("B0DRESS0001", "B0DRESS0004", "dress")
    assert q.captions == ("is more dress colourful 1", "has a longer sleeve 1.")  # verbatim, both
    assert s.gallery.ids == tuple(f"B0DRESS{n:04d}" for n in range(F.FIQ_VAL_GALLERY))
    assert s.gallery.paths[5].name == "B0DRESS0005.png"  # PNG accepted beside JPEG
    assert all(p.is_file() for p in s.images.paths)
    assert s.groups == {"dress": ("dress-0", "dress-1", "dress-2")}


def test_fashioniq_all_categories_and_per_category_helper(roots):
    s = load_split("fashioniq", roots["fashioniq"], "val")
    assert len(s.queries) == 3 * F.FIQ_VAL_QUERIES and len(s.gallery) == 3 * F.FIQ_VAL_GALLERY
    assert set(s.groups) == set(F.FIQ_CATEGORIES)
    assert s.groups["shirt"] == ("shirt-0", "shirt-1", "shirt-2")
    assert len({q.query_id for q in s.queries}) == len(s.queries)
    per = fashioniq_categories(roots["fashioniq"], "val")
    assert [p.queries[0].category for p in per] == list(F.FIQ_CATEGORIES)
    for p in per:  # each category ranks against its own gallery only
        cat = p.queries[0].category
        assert all(g.startswith(f"B0{cat.upper()[:5]}") for g in p.gallery.ids)


def test_fashioniq_test_split_has_no_targets(roots):
    s = load_split("fashioniq", roots["fashioniq"], "test", category="toptee")
    assert not s.has_ground_truth and len(s.queries) == F.FIQ_TEST_QUERIES
    assert all(q.target_id is None for q in s.queries) and len(s.gallery) == F.FIQ_TEST_GALLERY


# ---------------------------------------------------------------- CIRR

def test_cirr_val(roots):
    s = load_split("cirr", roots["cirr"], "val")
    assert (s.split, s.exclude_reference, s.has_ground_truth) == ("val", True, True)
    assert "recall_subset_at_3" in s.metrics and "recall_at_50" in s.metrics
    assert [q.query_id for q in s.queries] == ["100", "101", "102", "103"]
    q = s.queries[1]
    assert (q.reference_id, q.target_id) == ("dev-0-1-img1", "dev-0-3-img1")
    assert len(q.group_ids) == 6 and q.reference_id in q.group_ids and q.target_id in q.group_ids
    assert len(s.gallery) == F.CIRR_VAL_IMAGES and s.gallery.paths[0].parent.name == "dev"
    assert s.images.ids == s.gallery.ids


def test_cirr_test_means_test1_and_train_uses_nested_folders(roots):
    t = load_split("cirr", roots["cirr"], "test")
    assert t.split == "test1" and not t.has_ground_truth
    assert all(q.target_id is None for q in t.queries) and len(t.queries) == F.CIRR_TEST_QUERIES
    tr = load_split("cirr", roots["cirr"], "train")
    assert tr.gallery.paths[0] == roots["cirr"] / "train" / "0" / "train-0-0-img0.png"


# ---------------------------------------------------------------- CIRCO

def test_circo_val_and_test(roots):
    s = load_split("circo", roots["circo"], "val")
    assert (s.exclude_reference, s.has_ground_truth) == (False, True)
    assert s.metrics[:4] == ("map_at_5", "map_at_10", "map_at_25", "map_at_50")
    q = s.queries[2]
    assert (q.query_id, q.reference_id, q.target_id) == ("2", "1005", "1025")
    assert q.gt_ids == ("1025", "1027", "1029", "1031") and q.positives == q.gt_ids
    assert s.groups == {"cardinality": ("0", "1"), "addition": ("1",), "viewpoint": ("2",)}
    assert len(s.gallery) == F.CIRCO_GALLERY and s.gallery.paths[0].name == "000000001001.jpg"
    t = load_split("circo", roots["circo"], "test")
    assert not t.has_ground_truth and t.gallery.ids == s.gallery.ids and t.groups == {}


# ---------------------------------------------------------------- ImageNet

def test_imagenet_sorted_by_name_with_limit(roots):
    s = load_unlabeled("imagenet", roots["imagenet"])
    assert s.ids == tuple(f"ILSVRC2012_test_{n:08d}.JPEG" for n in range(1, 7)) and s.name == "imagenet/test"
    assert load_unlabeled("imagenet", roots["imagenet"], limit=2).ids == s.ids[:2]


# ---------------------------------------------------------------- broken layouts

def _copy(roots, name, tmp_path):
    return shutil.copytree(roots[name], tmp_path / name)


def _error(fn, *needles):
    with pytest.raises(DatasetError) as e:
        fn()
    text = str(e.value)
    for n in needles + ("Expected layout", "Fix:"):
        assert str(n) in text, f"{n!r} not in error:\n{text}"
    return text


def test_missing_root_and_no_root(tmp_path):
    _error(lambda: load_split("cirr", tmp_path / "nowhere", "val"), "nowhere", "does not exist")
    _error(lambda: load_split("fashioniq", None, "val"), "no dataset root")
    _error(lambda: load_unlabeled("imagenet", tmp_path), tmp_path / "test", "does not exist")


def test_unknown_names_and_splits(roots):
    with pytest.raises(DatasetError, match="available: .*cirr"):
        load_split("cirrr", roots["cirr"], "val")
    with pytest.raises(ValueError, match="expected one of"):
        load_split("circo", roots["circo"], "train")
    with pytest.raises(ValueError, match="category"):
        load_split("fashioniq", roots["fashioniq"], "val", category="shoes")


def test_missing_and_malformed_json(roots, tmp_path):
    root = _copy(roots, "fashioniq", tmp_path)
    (root / "captions" / "cap.shirt.val.json").unlink()
    _error(lambda: load_split("fashioniq", root, "val"), "cap.shirt.val.json", "does not exist")
    (root / "captions" / "cap.shirt.val.json").write_text('[{"candidate": "B0SHIRT0000", ')
    _error(lambda: load_split("fashioniq", root, "val", category="shirt"), "cap.shirt.val.json", "not valid JSON")
    (root / "captions" / "cap.shirt.val.json").write_text('{"candidate": "x"}')
    _error(lambda: load_split("fashioniq", root, "val", category="shirt"), "should hold a JSON list")


def test_bad_records_name_the_record(roots, tmp_path):
    root = _copy(roots, "fashioniq", tmp_path)
    path = root / "captions" / "cap.dress.val.json"
    recs = json.loads(path.read_text())
    del recs[1]["target"]
    path.write_text(json.dumps(recs))
    _error(lambda: load_split("fashioniq", root, "val", category="dress"), "record 1", "'target' is missing")
    recs[1]["target"], recs[2]["captions"] = "B0DRESS0004", ["only one"]
    path.write_text(json.dumps(recs))
    _error(lambda: load_split("fashioniq", root, "val", category="dress"), "record 2", "two strings")
    recs[2]["captions"], recs[0]["target"] = ["a", "b"], "B0NOTHERE"
    path.write_text(json.dumps(recs))
    _error(lambda: load_split("fashioniq", root, "val", category="dress"), "record 0", "B0NOTHERE")

    cirr = _copy(roots, "cirr", tmp_path)
    cpath = cirr / "cirr" / "captions" / "cap.rc2.val.json"
    recs = json.loads(cpath.read_text())
    recs[3]["pairid"] = "103"  # a string where the official files have an int
    cpath.write_text(json.dumps(recs))
    _error(lambda: load_split("cirr", cirr, "val"), "record 3", "'pairid' should be int")
    recs[3]["pairid"], recs[2]["img_set"]["members"][5] = 103, "dev-9-9-img9"
    cpath.write_text(json.dumps(recs))
    _error(lambda: load_split("cirr", cirr, "val"), "pairid 102", "dev-9-9-img9", "split.rc2.val.json")


def test_circo_bad_ground_truth_and_missing_image_info(roots, tmp_path):
    root = _copy(roots, "circo", tmp_path)
    path = root / "annotations" / "val.json"
    recs = json.loads(path.read_text())
    recs[0]["gt_img_ids"] = [424242]
    path.write_text(json.dumps(recs))
    _error(lambda: load_split("circo", root, "val"), "record 0", "424242", "image info")
    info = root / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json"
    info.unlink()
    _error(lambda: load_split("circo", root, "test"), "image_info_unlabeled2017.json", "does not exist",
           "images.cocodataset.org")


def test_image_listed_but_absent_errors_or_drops(roots, tmp_path):
    root = _copy(roots, "cirr", tmp_path)
    (root / "dev" / "dev-1-4-img0.png").unlink()
    _error(lambda: load_split("cirr", root, "val"), "dev-1-4-img0", "absent", "on_missing='drop'")
    with pytest.warns(UserWarning, match="absent and were dropped"):
        s = load_split("cirr", root, "val", on_missing="drop")
    assert "dev-1-4-img0" not in s.gallery.ids and len(s.gallery) == F.CIRR_VAL_IMAGES - 1
    assert [q.query_id for q in s.queries] == ["100", "101"]  # queries 102/103 use group 1

    fiq = _copy(roots, "fashioniq", tmp_path)
    (fiq / "images" / "B0TOPTE0004.jpg").unlink()
    _error(lambda: load_split("fashioniq", fiq, "val"), "B0TOPTE0004")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = load_split("fashioniq", fiq, "val", category="toptee", on_missing="drop")
    assert [q.query_id for q in s.queries] == ["toptee-0", "toptee-2"]  # query 1's target is gone


def test_imagenet_empty_folder(tmp_path):
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "notes.txt").write_text("x")
    _error(lambda: load_unlabeled("imagenet", tmp_path), "no *.JPEG files")


# ---------------------------------------------------------------- images

def _save(tmp_path, name, image, **kw):
    path = tmp_path / name
    image.save(path, **kw)
    return path


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "LA", "1"])
def test_open_image_converts_modes_to_rgb(tmp_path, mode):
    src = Image.new("RGB", (30, 20), (200, 100, 50)).convert(mode)
    path = _save(tmp_path, f"x_{mode}.{'jpg' if mode in ('L', 'CMYK') else 'png'}", src)
    image = open_image(path)
    assert image.mode == "RGB" and image.size == (30, 20)


def test_open_image_sixteen_bit_is_scaled_not_saturated(tmp_path):
    arr = np.full((8, 8), 128 * 256, dtype=np.uint16)
    path = _save(tmp_path, "deep.png", Image.fromarray(arr))
    assert np.array(open_image(path))[0, 0].tolist() == [128, 128, 128]


def test_open_image_drops_exif_without_rotating(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees; the official loader does not apply it
    path = _save(tmp_path, "rot.jpg", Image.new("RGB", (40, 20), (9, 9, 9)), exif=exif.tobytes())
    image = open_image(path)
    assert image.size == (40, 20) and "exif" not in image.info


def test_open_image_errors_name_the_file(tmp_path):
    with pytest.raises(ImageError, match="absent.jpg does not exist"):
        open_image(tmp_path / "absent.jpg")
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(ImageError, match="text.jpg is not a readable image"):
        open_image(tmp_path / "text.jpg")
    good = _save(tmp_path, "full.jpg", Image.effect_noise((64, 64), 50).convert("RGB"))
    (tmp_path / "cut.jpg").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ImageError, match="cut.jpg is corrupt or truncated"):
        open_image(tmp_path / "cut.jpg")
    with pytest.raises(ImageError, match="full.jpg is 64x64 = 4,096 pixels, over the limit"):
        open_image(good, max_pixels=1000)


def test_image_dataset_skip_bad_vs_raise(roots, tmp_path):
    images = load_unlabeled("imagenet", shutil.copytree(roots["imagenet"], tmp_path / "in"))
    images.paths[2].write_bytes(b"garbage")
    to_tensor = lambda im: __import__("torch").zeros(3, 4, 4)  # noqa: E731
    skip = ImageDataset(images, to_tensor, skip_bad=True)
    idx, batch = collate_images([skip[i] for i in range(len(images))])
    assert idx.tolist() == [0, 1, 3, 4, 5] and batch.shape == (5, 3, 4, 4)
    with pytest.raises(ImageError, match="ILSVRC2012_test_00000003.JPEG"):
        ImageDataset(images, to_tensor)[2]
