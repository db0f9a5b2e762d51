"""End to end on fixture datasets in the official layouts: every method, phi training, OTI, both submission writers,
and the CLI (SEARLE section 4; official validate.py / generate_test_submission.py)."""
import json

import pytest

from searle_lib.cli import main
from searle_lib.config import load_config
from searle_lib.evaluate import run_evaluation
from searle_lib.methods import CaptionTooLongError, QueryContext, query_features, query_texts
from searle_lib.datasets.base import CIRQuery

from _official_fixtures import write_all

METHODS = ["image", "text", "image+text", "searle", "searle-oti"]


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    return write_all(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def vocab(tmp_path_factory, shared_data):
    p = tmp_path_factory.mktemp("vocab") / "concepts.csv"
    p.write_text("LabelName,DisplayName\n" + "".join(f"/m/{i},{c}\n" for i, c in enumerate(
        ["dress", "shirt", "red shirt", "dog", "car", "tree", "blue sky", "lamp", "cup", "shoe"])))
    return {"data.concepts_path": str(p), "data.templates_path": str(shared_data / "palavra_templates.txt")}


def _cfg(tmp_path, roots, vocab, dataset, split, **extra):
    return load_config("tiny", {
        "model.name": "test-micro-vit", "data.dataset": dataset, "data.root": str(roots[dataset]),
        "data.unlabeled": "imagenet", "data.unlabeled_root": str(roots["imagenet"]), "eval.split": split,
        "eval.methods": METHODS, "oti.steps": 3, "phi.batch_size": 2, "phi.epochs": 1, "concepts.top_k": 5,
        "run.cache_dir": str(tmp_path / "cache"), "run.out_dir": str(tmp_path / "results"), **vocab, **extra})


@pytest.mark.parametrize("dataset,split", [("fashioniq", "val"), ("cirr", "val"), ("circo", "val"),
                                           ("cirr", "test"), ("circo", "test")])
def test_every_method_end_to_end(tmp_path, roots, vocab, dataset, split):
    res = run_evaluation(_cfg(tmp_path, roots, vocab, dataset, split), progress=False)
    folder = tmp_path / "results" / "tiny" / f"eval-{dataset}-{split}"
    assert res["folder"] == str(folder)
    metrics = json.loads((folder / "metrics.json").read_text())
    prov = json.loads((folder / "provenance.json").read_text())
    assert set(metrics) == set(METHODS) and prov["config"]["data"]["dataset"] == dataset
    assert prov["git"] and prov["dataset"] and prov["seed"] == 42
    if split == "val":
        expected = {"fashioniq": "recall_at_50", "cirr": "recall_subset_at_1", "circo": "map_at_10"}[dataset]
        for m in METHODS:
            assert 0 <= metrics[m][expected] <= 100
        if dataset == "fashioniq":
            groups = prov["extra"]["groups"]["searle"]
            assert set(groups) == {"dress", "shirt", "toptee"}
    else:
        subs = res["submissions"]
        assert len(subs) == (2 * len(METHODS) if dataset == "cirr" else len(METHODS))
        sub = json.loads(open(subs[0]).read())
        if dataset == "cirr":
            assert sub["version"] == "rc2" and sub["metric"] == "recall"


def test_cli_eval_and_config(tmp_path, roots, vocab, capsys):
    sets = [f"{k}={v}" for k, v in {**vocab, "model.name": "test-micro-vit", "data.unlabeled": "imagenet",
                                   "data.unlabeled_root": roots["imagenet"], "oti.steps": 2,
                                   "run.cache_dir": tmp_path / "c", "run.out_dir": tmp_path / "r"}.items()]
    args = ["eval", "--preset", "tiny", "--dataset", "cirr", "--root", str(roots["cirr"]), "--split", "val",
            "--method", "image", "--method", "searle-oti"]
    assert main(args + sum((["--set", s] for s in sets), [])) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["metrics"]) == {"image", "searle-oti"}
    assert main(["config", "--preset", "tiny", "--set", "oti.stepz=3"]) == 2
    assert "oti.steps" in capsys.readouterr().err


def test_fashioniq_compositions():
    q = CIRQuery("d-1", "r", ("is red.", " has no sleeves?"), "t")
    assert query_texts(q, "both_orders", "a photo of $ that ") == [
        "a photo of $ that is red and has no sleeves", "a photo of $ that has no sleeves and is red"]
    assert query_texts(q, "one_order", "") == ["is red and has no sleeves"]
    assert query_texts(q, "pic2word", "a photo of $ that ") == ["a photo of $ , has no sleeves and is red"]


def test_caption_longer_than_context_is_a_clear_error(micro_backbone, roots):
    from searle_lib.datasets import load_split
    import torch
    sp = load_split("cirr", roots["cirr"], "val")
    long = CIRQuery("99", sp.queries[0].reference_id, ("very " * 100,), sp.queries[0].target_id)
    sp = type(sp)(**{**sp.__dict__, "queries": (long,)})
    ctx = QueryContext(micro_backbone, {long.reference_id: torch.zeros(micro_backbone.feature_dim)},
                       {long.reference_id: torch.zeros(micro_backbone.token_dim)})
    with pytest.raises(CaptionTooLongError, match="query 99"):
        query_features("searle", ctx, sp)
