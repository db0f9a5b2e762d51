"""Runs with provenance (searle_lib/provenance.py) and the figure files of searle_lib/plots.py."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from searle_lib import plots, provenance
from searle_lib.config import load_config


@pytest.fixture()
def cfg(tmp_path: Path):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "images" / "a.png").write_bytes(b"x" * 10)
    (data / "captions.json").write_text("[]")
    return load_config("tiny", {"run.out_dir": str(tmp_path / "results"), "data.root": str(data), "run.seed": 7})


def test_save_run_writes_metrics_and_full_provenance(cfg, tmp_path: Path) -> None:
    metrics = {"searle": {"recall_at_10": np.float32(12.5), "map_at_5": 3.0}, "queries": np.int64(40)}
    folder = provenance.save_run(cfg, "cirr_val", metrics, extra={"note": "test"}, started=1.0e9)
    assert folder == tmp_path / "results" / "tiny" / "cirr_val"
    assert json.loads((folder / "metrics.json").read_text()) == {"searle": {"recall_at_10": 12.5, "map_at_5": 3.0},
                                                                   "queries": 40}
    prov = json.loads((folder / "provenance.json").read_text())
    assert prov["preset"] == "tiny" and prov["slug"] == "cirr_val" and prov["seed"] == 7
    assert prov["config"] == json.loads(json.dumps(cfg.to_dict())) and prov["config_hash"] == cfg.hash()
    assert prov["backbone"]["name"] == "test-tiny-vit" and prov["backbone"]["pretrained"] is None
    assert prov["dataset"]["root"] == str(Path(cfg.data.root).resolve())
    assert prov["dataset"]["files"] == 2 and prov["dataset"]["bytes"] == 12 and not prov["dataset"]["capped"]
    assert set(prov["git"]) >= {"commit", "dirty"}
    for package in ("python", "torch", "open_clip_torch", "transformers"):
        assert prov["versions"][package], package
    assert prov["device"]["device"] == "cpu" and prov["hostname"]
    assert prov["started"].startswith("2001-09-09") and prov["started"] < prov["finished"]
    assert prov["extra"] == {"note": "test"}


def test_figures_carry_their_data_and_tables_become_csv(cfg) -> None:
    data = pd.DataFrame({"method": ["image", "searle"], "value": [1.5, np.nan]})
    fig = plots.bar_panels(data, x="method", y="value", color_by="method", title="t")
    plain = plots.plt.figure()
    folder = provenance.save_run(cfg, "figs", {"x": 1.0}, figures={"bars": fig, "given": (plain, {"a": [1, 2]})},
                                 tables={"scores": data})
    assert (folder / "bars.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((folder / "bars.json").read_text())
    assert saved["title"] == "t"
    assert saved["data"]["columns"] == ["method", "value"]
    assert saved["data"]["records"] == [{"method": "image", "value": 1.5}, {"method": "searle", "value": None}]
    assert json.loads((folder / "given.json").read_text())["data"] == {"a": [1, 2]}
    pd.testing.assert_frame_equal(pd.read_csv(folder / "scores.csv"), data)
    with pytest.raises(ValueError, match="has no data"):
        provenance.save_run(cfg, "figs", {}, figures={"bare": plots.plt.figure()})


def test_a_second_save_removes_the_first_runs_figures(cfg) -> None:
    fig = plots.line_curves(pd.DataFrame({"n": [1, 2], "v": [0.1, 0.2], "m": ["searle", "searle"]}),
                            x="n", y="v", hue="m")
    folder = provenance.save_run(cfg, "r", {}, figures={"old": fig}, tables={"old_t": pd.DataFrame({"a": [1]})})
    provenance.save_run(cfg, "r", {}, figures={"new": fig})
    assert sorted(p.name for p in folder.iterdir()) == ["metrics.json", "new.json", "new.png", "provenance.json"]


def test_metrics_must_be_json_numbers(cfg) -> None:
    with pytest.raises(TypeError, match="metrics.searle"):
        provenance.save_run(cfg, "bad", {"searle": object()})
    folder = provenance.save_run(cfg, "nan", {"recall_at_1": float("nan")})
    assert json.loads((folder / "metrics.json").read_text()) == {"recall_at_1": None}
    with pytest.raises(ValueError, match="plain name"):
        provenance.save_run(cfg, "../escape", {})


def test_dataset_hash_tracks_names_sizes_and_mtimes(tmp_path: Path) -> None:
    root = tmp_path / "d"
    (root / "sub").mkdir(parents=True)
    for name in ("b.jpg", "a.jpg", "sub/c.jpg"):
        (root / name).write_bytes(b"12345")
    first = provenance.dataset_hash(root)
    assert first["files"] == 3 and first == provenance.dataset_hash(root)
    os.utime(root / "a.jpg", ns=(1, 1))
    touched = provenance.dataset_hash(root)
    assert touched["listing_hash"] != first["listing_hash"] and touched["layout_hash"] == first["layout_hash"]
    (root / "b.jpg").write_bytes(b"123456")
    assert provenance.dataset_hash(root)["layout_hash"] != first["layout_hash"]
    capped = provenance.dataset_hash(root, max_files=2)
    assert capped["capped"] and capped["files"] == 2
    assert provenance.dataset_hash(tmp_path / "absent")["exists"] is False
    assert provenance.dataset_hash(None) == {"root": None, "exists": False}


def test_checkpoint_fingerprint_and_git_state(tmp_path: Path) -> None:
    ckpt = tmp_path / "phi.pt"
    ckpt.write_bytes(b"weights")
    assert provenance.file_fingerprint(ckpt)["sha256"] == hashlib.sha256(b"weights").hexdigest()
    assert provenance.file_fingerprint(tmp_path / "none.pt")["exists"] is False
    assert provenance.git_state(tmp_path)["commit"] is None  # not a checkout
    subprocess.run(["git", "init", "-q", str(tmp_path / "g")], check=True)
    repo = tmp_path / "g"
    (repo / "f.py").write_text("x = 1\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", "-C", str(repo), "add", "f.py"], check=True)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "c"], check=True, env=env)
    clean = provenance.git_state(repo)
    assert len(clean["commit"]) == 40 and clean["dirty"] is False
    (repo / "results").mkdir()
    (repo / "results" / "m.json").write_text("{}")  # runs write here: not a code change
    assert provenance.git_state(repo)["dirty"] is False
    (repo / "f.py").write_text("x = 2\n")
    assert provenance.git_state(repo) | {"commit": None} == {"commit": None, "dirty": True, "changed": ["f.py"],
                                                             "n_changed": 1}


def test_collect_runs_and_metrics(cfg, tmp_path: Path) -> None:
    out = tmp_path / "results"
    assert provenance.collect_runs(out).empty and list(provenance.collect_runs(out)) == provenance.RUN_COLUMNS
    provenance.save_run(cfg, "cirr", {"searle": {"recall_at_1": 20.0, "recall_at_5": 40.0}, "image": {"recall_at_1": 5.0}})
    provenance.save_run(cfg, "world", {"queries": 60, "flag": True})
    runs = provenance.collect_runs(out)
    assert runs[["preset", "slug"]].values.tolist() == [["tiny", "cirr"], ["tiny", "world"]]
    assert (runs["backbone"] == "test-tiny-vit").all() and runs["data_hash"].str.len().eq(16).all()
    metrics = provenance.collect_metrics(out)
    assert list(metrics.columns) == provenance.METRIC_COLUMNS
    got = {(r.slug, r.method, r.metric): r.value for r in metrics.itertuples()}
    assert got == {("cirr", "searle", "recall_at_1"): 20.0, ("cirr", "searle", "recall_at_5"): 40.0,
                   ("cirr", "image", "recall_at_1"): 5.0, ("world", "", "queries"): 60}
    assert set(metrics["split"]) == {cfg.eval.split} and set(metrics["dataset"]) == {"embedded"}
    # per-category scores as searle eval keeps them (extra.groups) become <category>_<metric> rows
    provenance.save_run(cfg, "fiq", {"searle": {"recall_at_10": 20.0}},
                        extra={"groups": {"searle": {"dress": {"recall_at_10": 18.0}, "shirt": {"recall_at_10": 22.0}}}})
    fiq = provenance.collect_metrics(out).query("slug == 'fiq'")
    assert dict(zip(fiq["metric"], fiq["value"])) == {"recall_at_10": 20.0, "dress_recall_at_10": 18.0,
                                                      "shirt_recall_at_10": 22.0}


def test_collect_benchmarks_flattens_json_and_names_the_device(tmp_path: Path) -> None:
    (tmp_path / "oti_cpu.json").write_text(json.dumps({"device": {"name": "cpu"}, "fast": {"images_per_s": 3.5}}))
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json"):
        provenance.collect_benchmarks(tmp_path)
    (tmp_path / "bad.json").unlink()
    bench = provenance.collect_benchmarks(tmp_path)
    assert bench.to_dict("records") == [{"file": "oti_cpu.json", "device": "cpu", "key": "device.name", "value": "cpu"},
                                        {"file": "oti_cpu.json", "device": "cpu", "key": "fast.images_per_s",
                                         "value": 3.5}]


def test_metric_labels_for_display() -> None:
    assert [plots.metric_label(k) for k in ("recall_at_10", "recall_subset_at_2", "map_at_25",
                                           "toptee_recall_at_50", "queries")] == \
        ["R@10", "Rs@2", "mAP@25", "toptee R@50", "queries"]
