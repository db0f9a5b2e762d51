"""The embedded world: determinism, exact ground truth, held-out combinations, layout round trip through the loaders."""
from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import pytest

from searle_lib.config import load_config
from searle_lib.datasets import DatasetError, load_split, load_unlabeled
from searle_lib.datasets.embedded import load_pretrain_pairs, load_scenes, read_world_manifest
from searle_lib.world import (Scene, build_world, captions, concepts, full_caption, plan_world, render_scene,
                              sample_scene, world_hash)
from searle_lib.world.captions import Caption, Meaning, holds
from searle_lib.world.layout import METRICS, QUERY_SPLITS
from searle_lib.world.truth import encode_meanings, encode_scenes, truth
from searle_lib.world.scenes import parse_pairs
from searle_lib.world.vocab import COLOURS, POSITIONS, SHAPES, SIZES, TEMPLATES


def tiny_world_cfg(**changes):
    """The tiny preset's world, a little smaller still, 32 px (seconds to build)."""
    cfg = load_config("tiny").world
    small = dict(image_size=32, n_pretrain=300, n_unlabeled=40, n_val_queries=20, n_test_queries=30,
                 n_heldout_queries=20, n_distractors=40, workers=1)
    small.update(changes)
    return dataclasses.replace(cfg, **small)


CFG = tiny_world_cfg()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("world") / "embedded"
    manifest = build_world(tiny_world_cfg(), root)
    return root, manifest


def test_plan_is_deterministic_and_seed_dependent():
    a, b = plan_world(tiny_world_cfg()), plan_world(tiny_world_cfg())
    assert a == b
    c = plan_world(tiny_world_cfg(seed=1))
    assert a["flat"]["scenes"] != c["flat"]["scenes"]


def test_render_is_deterministic_and_varies_with_seed():
    scene = sample_scene(random.Random(3), 3)
    for domain in ("flat", "night", "sketch"):
        x, y = render_scene(scene, domain, 48, seed=7), render_scene(scene, domain, 48, seed=7)
        assert x.shape == (48, 48, 3) and x.dtype == np.uint8
        assert np.array_equal(x, y)
        z = render_scene(scene, domain, 48, seed=8)
        assert np.abs(x.astype(int) - z.astype(int)).mean() > 1.0  # the same scene looks different


def test_domains_differ():
    scene = sample_scene(random.Random(4), 2)
    flat, night = render_scene(scene, "flat", 32, 0), render_scene(scene, "night", 32, 0)
    assert flat.mean() > 150 > 60 > night.mean()


def test_build_is_idempotent_and_rebuilds_on_change(world, tmp_path):
    root, manifest = world
    assert manifest["built"] and manifest["config_hash"] == world_hash(tiny_world_cfg())
    again = build_world(tiny_world_cfg(), root)
    assert again["built"] is False
    # another config in a copy of the folder is rebuilt there
    other = tmp_path / "w"
    build_world(tiny_world_cfg(n_pretrain=50, n_val_queries=5, n_test_queries=5, n_heldout_queries=5), other)
    first = read_world_manifest(other)["config_hash"]
    m = build_world(tiny_world_cfg(n_pretrain=60, n_val_queries=5, n_test_queries=5, n_heldout_queries=5), other)
    assert m["built"] and m["config_hash"] != first
    assert len(load_pretrain_pairs(other).ids) == 60


def test_refuses_to_overwrite_a_foreign_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        build_world(tiny_world_cfg(), tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_images_do_not_depend_on_workers(world, tmp_path):
    root, _ = world
    cfg = tiny_world_cfg(workers=2)
    assert world_hash(cfg) == world_hash(tiny_world_cfg())
    other = tmp_path / "w2"
    build_world(cfg, other)
    files = sorted((root / "night" / "images").glob("*.png"))
    assert len(files) > 200
    for f in files[::37]:
        assert f.read_bytes() == (other / "night" / "images" / f.name).read_bytes()
    for name in ("scenes.json", "pretrain.jsonl", "test.json"):
        assert (root / "flat" / name).read_bytes() == (other / "flat" / name).read_bytes()


@pytest.mark.parametrize("split", QUERY_SPLITS)
@pytest.mark.parametrize("domain", ["flat", "night"])
def test_ground_truth_is_exact(world, split, domain):
    root, _ = world
    scenes = load_scenes(root, domain)
    data = json.loads((root / domain / f"{split}.json").read_text())
    gallery = data["gallery"]
    assert len(set(gallery)) == len(gallery)
    by_scene: dict[Scene, set] = {}
    for i in gallery:
        by_scene.setdefault(scenes[i], set()).add(i)
    for q in data["queries"]:
        target = Scene.from_json(q["target_scene"])
        reference = Scene.from_json(q["reference_scene"])
        assert scenes[q["reference"]] == reference != target
        matches = by_scene[target]
        assert set(q["gt"]) == matches  # every match is GT and every GT matches
        assert q["target"] in matches and q["reference"] not in matches
        assert len(q["gt"]) >= CFG.gt_per_query
        group = q["group"]
        assert len(group) == CFG.group_size and len(set(group)) == len(group)
        assert q["reference"] in group and all(i in scenes for i in group) and set(group) <= set(q["gt"]) | set(
            i for i in group if scenes[i] != target)
        assert [i for i in group if i in matches] == [q["target"]]  # exactly one positive in the group


def test_queries_do_what_their_captions_say(world):
    root, _ = world
    data = json.loads((root / "flat" / "test.json").read_text())
    kinds = {q["kind"] for q in data["queries"]}
    assert kinds == {"change", "add", "remove"}
    for q in data["queries"]:
        ref, tgt = Scene.from_json(q["reference_scene"]), Scene.from_json(q["target_scene"])
        gone, new = set(ref) - set(tgt), set(tgt) - set(ref)
        if q["kind"] == "add":
            assert not gone and len(new) == 1
            (o,) = new
            for word in (o.shape, o.colour, o.size, POSITIONS[o.cell]):
                assert word in q["caption"]
        elif q["kind"] == "remove":
            assert not new and len(gone) == 1
            assert next(iter(gone)).shape in q["caption"]
        else:
            assert len(gone) == len(new) == 1
            (a,), (b,) = gone, new
            changed = [f for f in ("shape", "colour", "size", "cell") if getattr(a, f) != getattr(b, f)]
            assert changed == [{"position": "cell"}.get(q["attribute"], q["attribute"])]
            value = POSITIONS[b.cell] if changed == ["cell"] else getattr(b, changed[0])
            assert value in q["caption"]


def test_heldout_pairs_never_reach_pretraining_or_the_seen_splits(world):
    root, manifest = world
    heldout = parse_pairs(manifest["heldout_pairs"])
    assert heldout
    words = [f"{c} {s}" for s, c in heldout]
    for domain in manifest["domains"]:
        scenes = load_scenes(root, domain)
        unseen = {i for i in json.loads((root / domain / "heldout.json").read_text())["gallery"]}
        for image_id, scene in scenes.items():
            if image_id not in unseen:
                assert not (scene.pairs() & heldout), image_id
        for line in (root / domain / "pretrain.jsonl").read_text().splitlines():
            item = json.loads(line)
            for text in item["captions"] + item["negatives"]:
                assert not any(w in text for w in words), text
        for q in json.loads((root / domain / "heldout.json").read_text())["queries"]:
            pairs = Scene.from_json(q["reference_scene"]).pairs() | Scene.from_json(q["target_scene"]).pairs()
            assert pairs & heldout


def test_pretraining_captions_speak_the_query_language(world):
    root, _ = world
    pairs = load_pretrain_pairs(root)
    text = " ".join(c for caps in pairs.captions for c in caps)
    for word in set(SHAPES) | set(COLOURS) | set(SIZES):
        assert f" {word}" in text
    for p in POSITIONS:
        assert f"in the {p}" in text
    assert "a photo of a " in text and " that has " in text
    # no relative caption leaks into pretraining
    for verb in ("make the", "remove the", "instead of", "add a", "no longer"):
        assert verb not in text
    for caps, negs in zip(pairs.captions, pairs.negatives):
        assert len(caps) == len(negs) and all(c != n for c, n in zip(caps, negs))


def test_caption_meanings_are_exact(world):
    """Each stored caption is true of its image and its hard negative is not; truth() agrees with holds()."""
    root, manifest = world
    pairs = load_pretrain_pairs(root)
    scenes = {**load_scenes(root, "flat"), **load_scenes(root, "night")}
    for i, image_id in enumerate(pairs.ids):
        scene, domain = scenes[image_id], pairs.domains[i]
        for m, n in zip(pairs.meanings[i], pairs.negative_meanings[i]):
            assert holds(m, scene, domain)
            assert n is None or not holds(n, scene, domain)
    ids = pairs.ids[:120]
    meanings = [m for ms in pairs.meanings[:120] for m in ms] + [m for ms in pairs.negative_meanings[:120] for m in ms]
    got = truth(encode_scenes([scenes[i] for i in ids], pairs.domains[:120], manifest["domains"]),
                encode_meanings(meanings, manifest["domains"]))
    want = [[m is not None and holds(m, scenes[i], d) for m in meanings] for i, d in zip(ids, pairs.domains)]
    assert got.tolist() == want
    assert got.sum() > 240  # more true pairs than the diagonal: short captions fit several images


def test_pretraining_families_are_one_edit_apart(world):
    root, _ = world
    pairs = load_pretrain_pairs(root)
    scenes = {**load_scenes(root, "flat"), **load_scenes(root, "night")}
    by_family: dict[int, list] = {}
    for image_id, fam in zip(pairs.ids, pairs.families):
        by_family.setdefault(fam, []).append(scenes[image_id])
    sizes = [len(v) for v in by_family.values()]
    assert max(sizes) == CFG.family_size and sum(sizes) == len(pairs.ids)
    for members in by_family.values():
        base = members[0]
        assert len(set(members)) == len(members)
        for v in members[1:]:
            assert len(set(base) ^ set(v)) in (1, 2)  # one object added/removed, or one object changed


def test_captions_and_full_caption():
    scene = Scene([("circle", "red", "large", 0), ("square", "blue", "small", 4)])
    assert full_caption(scene) == "a photo of a large red circle in the top left and a small blue square in the center"
    caps, negs = captions(scene, random.Random(0), 4, "night")
    assert len(caps) == 4 == len({c.text for c in caps}) and len(negs) == 4
    assert all("circle" in c.text and "square" in c.text for c in caps)
    assert all(holds(c.meaning, scene, "night") for c in caps)
    background = Caption("a red circle on a dark background", Meaning((("circle", "red", None, None),), "night"))
    assert holds(background.meaning, Scene([("circle", "red", "small", 5)]), "night")
    assert not holds(background.meaning, Scene([("circle", "red", "small", 5)]), "flat")
    assert not holds(background.meaning, scene, "night")  # a listing is complete: the square is not mentioned


def test_loaders_round_trip(world):
    root, manifest = world
    for domain in manifest["domains"]:
        for split in QUERY_SPLITS:
            sp = load_split("embedded", root, split, domain=domain)
            data = json.loads((root / domain / f"{split}.json").read_text())
            assert sp.dataset == "embedded" and sp.split == split and sp.exclude_reference
            assert sp.metrics == METRICS and sp.has_ground_truth
            assert sp.gallery.ids == tuple(data["gallery"]) and all(p.is_file() for p in sp.gallery.paths)
            assert set(sp.groups) <= {"change", "add", "remove"}
            assert sum(len(v) for v in sp.groups.values()) == len(sp.queries) == len(data["queries"])
            for q, d in zip(sp.queries, data["queries"]):
                assert q.positives == tuple(d["gt"]) and q.target_id == d["target"]
                assert q.captions == (d["caption"],) and q.group_ids == tuple(d["group"])
                assert q.reference_id in sp.gallery.ids and q.category == d["kind"]
        unl = load_unlabeled("embedded", root, domain=domain)
        assert len(unl) == CFG.n_unlabeled and all(p.is_file() for p in unl.paths)
    default = load_split("embedded", root, "test")
    assert default.gallery.name == f"embedded/{manifest['domains'][0]}/test"


def test_second_caption_is_another_phrasing_of_the_same_edit(world):
    from searle_lib.world.queries import paraphrase
    from searle_lib.world.vocab import vocabulary_words
    root, _ = world
    one = load_split("embedded", root, "test")
    two = load_split("embedded", root, "test", second_caption=True)
    assert len(two.queries) >= 0.8 * len(one.queries)
    data = {q["query_id"]: q for q in json.loads((root / "flat" / "test.json").read_text())["queries"]}
    for q in two.queries:
        d = data[q.query_id]
        assert q.captions[0] == d["caption"] and q.captions[1] != d["caption"]
        # the same edit in other words: the same attribute words (what is edited, into what)
        words = [{w for w in c.split() if w in vocabulary_words()} for c in q.captions]
        assert words[0] == words[1], q.captions
    ref = Scene.from_json(next(iter(data.values()))["reference_scene"])
    assert paraphrase(ref, Scene([]), "add", "x") is None  # no edit of this kind reaches an empty scene


def test_loader_errors_are_clear(world, tmp_path):
    root, _ = world
    with pytest.raises(DatasetError, match="query splits are"):
        load_split("embedded", root, "train")
    with pytest.raises(DatasetError, match="has no domain 'sketch'"):
        load_split("embedded", root, "test", domain="sketch")
    with pytest.raises(DatasetError, match="Build it first"):
        load_split("embedded", tmp_path, "test")


def test_vocabulary_and_templates():
    names = concepts()
    assert len(names) == len(set(names)) and "red circle" in names and "small red circle" in names
    assert set(SHAPES) | set(COLOURS) <= set(names)
    assert len(TEMPLATES) >= 12 and all("{}" in t for t in TEMPLATES)
    assert "a photo of a {}" in TEMPLATES
