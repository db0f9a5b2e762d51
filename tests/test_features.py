"""Feature extraction and its on-disk cache: hit, miss on any change of weights, preprocessing or images, stale
entries replaced, unreadable images skipped or raised."""
import copy
import dataclasses
import json
import os

import pytest
import torch

import _official_fixtures as F
from searle_lib.datasets import ImageSet, load_unlabeled
from searle_lib.features import describe_preprocess, extract_features, weights_fingerprint
from searle_lib.images import ImageError, open_image


@pytest.fixture
def images(tmp_path):
    return load_unlabeled("imagenet", F.write_imagenet(tmp_path / "ImageNet1K"))


def _entries(cache):
    return sorted(p.name for p in cache.iterdir())


def test_features_are_the_raw_clip_features(micro_backbone, images):
    fs = extract_features(micro_backbone, images, batch_size=4, progress=False)
    assert fs.ids == list(images.ids) and fs.skipped == [] and not fs.from_cache
    assert fs.features.shape == (F.IMAGENET_IMAGES, micro_backbone.feature_dim) and fs.features.dtype == torch.float32
    one = micro_backbone.preprocess(open_image(images.paths[1]))[None]  # the grayscale one
    assert torch.allclose(fs.features[1], micro_backbone.encode_image(one)[0], atol=1e-5)
    assert not torch.allclose(fs.features.norm(dim=1), torch.ones(len(fs)))  # unnormalised, as phi expects
    assert torch.equal(fs.select([images.ids[3], images.ids[0]]), fs.features[[3, 0]])
    with pytest.raises(KeyError, match="no features"):
        fs.select(["nope.JPEG"])


def test_workers_give_the_same_features(micro_backbone, images):
    a = extract_features(micro_backbone, images, batch_size=2, progress=False)
    b = extract_features(micro_backbone, images, batch_size=4, num_workers=2, progress=False)
    assert torch.allclose(a.features, b.features, atol=1e-5)


def test_cache_hit_then_stale_after_an_image_changes(micro_backbone, images, tmp_path):
    cache = tmp_path / "cache"
    first = extract_features(micro_backbone, images, cache_dir=cache, progress=False)
    assert not first.from_cache and len(_entries(cache)) == 2  # one .safetensors + one .json
    again = extract_features(micro_backbone, images, cache_dir=cache, progress=False)
    assert again.from_cache and torch.equal(again.features, first.features) and again.ids == first.ids

    # rewrite one image with other content: size/mtime change, so the cache must not be used
    F.make_image(images.paths[4], "something else")
    st = images.paths[4].stat()
    os.utime(images.paths[4], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    fresh = extract_features(micro_backbone, images, cache_dir=cache, progress=False)
    assert not fresh.from_cache
    assert not torch.allclose(fresh.features[4], first.features[4])
    assert torch.equal(fresh.features[:4], first.features[:4])
    assert len(_entries(cache)) == 2  # the stale entry was replaced, not kept beside
    manifest = json.loads(next(cache.glob("*.json")).read_text())
    assert manifest["ids"] == list(images.ids) and manifest["key"]["backbone"] == "test-micro-vit"


def test_cache_misses_on_other_weights_preprocessing_or_images(micro_backbone, images, tmp_path):
    cache = tmp_path / "cache"
    extract_features(micro_backbone, images, cache_dir=cache, progress=False)
    assert not extract_features(micro_backbone, images, cache_dir=cache, progress=False,
                                preprocess_key="clip-224").from_cache
    other = dataclasses.replace(micro_backbone, model=copy.deepcopy(micro_backbone.model))
    with torch.no_grad():  # same architecture, one weight changed: as another random init would be
        next(other.model.parameters()).add_(0.01)
    assert weights_fingerprint(other) != weights_fingerprint(micro_backbone)
    assert not extract_features(other, images, cache_dir=cache, progress=False).from_cache
    sub = images.subset(list(images.ids[:3]))
    assert not extract_features(micro_backbone, sub, cache_dir=cache, progress=False).from_cache
    assert len(_entries(cache)) == 6  # three models/preprocessings, the last one re-keyed for the subset


def test_weights_fingerprint_of_a_file_and_a_tag(micro_backbone, tmp_path):
    from searle_lib.backbones import save_clip_checkpoint
    path = tmp_path / "clip.safetensors"
    save_clip_checkpoint(micro_backbone.model, path)
    on_file = dataclasses.replace(micro_backbone, pretrained=str(path))
    fp = weights_fingerprint(on_file)
    assert fp.startswith("file:") and len(fp) == 5 + 64 and weights_fingerprint(on_file) == fp
    assert weights_fingerprint(dataclasses.replace(micro_backbone, pretrained="openai")) == "tag:openai"
    assert weights_fingerprint(micro_backbone).startswith("state:")


def test_preprocess_description_is_stable(micro_backbone):
    text = describe_preprocess(micro_backbone.preprocess)
    assert "0x" not in text and "TargetPad" in text and "target_ratio=1.25" in text and "Resize" in text


def test_unreadable_images_skipped_or_raised(micro_backbone, images, tmp_path):
    images.paths[2].write_bytes(b"\xff\xd8\xff not really a jpeg")
    cache = tmp_path / "cache"
    with pytest.warns(UserWarning, match="1 of 6 images .* skipped"):
        fs = extract_features(micro_backbone, images, cache_dir=cache, skip_bad=True, progress=False)
    assert fs.skipped == [images.ids[2]] and len(fs) == 5 and images.ids[2] not in fs.ids
    assert extract_features(micro_backbone, images, cache_dir=cache, skip_bad=True, progress=False).from_cache
    with pytest.raises(ImageError, match="ILSVRC2012_test_00000003.JPEG"):  # a skipping entry is no answer here
        extract_features(micro_backbone, images, cache_dir=cache, progress=False)


def test_broken_cache_file_is_recomputed(micro_backbone, images, tmp_path):
    cache = tmp_path / "cache"
    first = extract_features(micro_backbone, images, cache_dir=cache, progress=False)
    tensor_file = next(cache.glob("*.safetensors"))
    tensor_file.write_bytes(tensor_file.read_bytes()[:40])
    again = extract_features(micro_backbone, images, cache_dir=cache, progress=False)
    assert not again.from_cache and torch.equal(again.features, first.features)
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]


def test_empty_image_set(micro_backbone):
    with pytest.raises(ValueError, match="empty"):
        extract_features(micro_backbone, ImageSet((), (), "none"), progress=False)
