"""CIRR and CIRCO submission files: written from ``score_split`` rankings, and every defect caught by a validator."""
import copy
import json

import pytest
import torch
import torch.nn.functional as Fn

import _official_fixtures as F
import searle_lib.submissions as S
from searle_lib.datasets import load_split
from searle_lib.metrics import score_split
from searle_lib.submissions import (SubmissionError, circo_submission, cirr_submissions, validate_circo_submission,
                                    validate_cirr_submission, write_circo_submission, write_cirr_submission)


def _scores(split, seed=0):
    gen = torch.Generator().manual_seed(seed)
    qf = Fn.normalize(torch.randn(len(split.queries), 8, generator=gen), dim=-1)
    gf = Fn.normalize(torch.randn(len(split.gallery), 8, generator=gen), dim=-1)
    return score_split(split, qf, gf)


@pytest.fixture(scope="module")
def cirr(tmp_path_factory):
    split = load_split("cirr", F.write_cirr(tmp_path_factory.mktemp("cirr")), "test")
    return split, _scores(split)


@pytest.fixture(scope="module")
def circo(tmp_path_factory):
    split = load_split("circo", F.write_circo(tmp_path_factory.mktemp("circo")), "test")
    return split, _scores(split)


def test_cirr_files_written_in_the_official_format(cirr, tmp_path):
    split, scores = cirr
    main, subset = write_cirr_submission(scores, split, tmp_path / "cirr", "searle")
    assert (main.name, subset.name) == ("searle.json", "subset_searle.json")
    rec, sub = json.loads(main.read_text()), json.loads(subset.read_text())
    assert (rec["version"], rec["metric"], sub["metric"]) == ("rc2", "recall", "recall_subset")
    assert set(rec) - {"version", "metric"} == {"200", "201", "202"}
    for q in split.queries:
        # the reference is excluded: 12 gallery images leave 11; the group of 6 minus the reference, top 3
        assert len(rec[q.query_id]) == F.CIRR_TEST_IMAGES - 1 and q.reference_id not in rec[q.query_id]
        assert len(sub[q.query_id]) == 3 and set(sub[q.query_id]) <= set(q.group_ids) - {q.reference_id}
        assert sub[q.query_id] == [i for i in rec[q.query_id] if i in q.group_ids][:3]  # same order as the ranking
    assert not list(tmp_path.rglob("*.tmp"))


def _cirr_defect(sub, split, metric, needle):
    with pytest.raises(SubmissionError, match=needle):
        validate_cirr_submission(sub, split, metric)


def test_cirr_validator_catches_each_defect(cirr, monkeypatch):
    split, scores = cirr
    rec, sub = cirr_submissions(scores, split)
    validate_cirr_submission(rec, split, "recall")
    validate_cirr_submission(sub, split, "recall_subset")
    q = split.queries[0]
    bad = lambda: copy.deepcopy(rec)  # noqa: E731
    d = bad(); d["version"] = "rc1"; _cirr_defect(d, split, "recall", "'version' is 'rc1'")  # noqa: E702
    _cirr_defect(rec, split, "recall_subset", "'metric' is 'recall'")
    d = bad(); del d["201"]; _cirr_defect(d, split, "recall", r"missing, e.g. \['201'\]")  # noqa: E702
    d = bad(); d["999"] = d["200"]; _cirr_defect(d, split, "recall", "unknown key")  # noqa: E702
    d = bad(); d["200"] = d["200"][:-1]; _cirr_defect(d, split, "recall", "query 200: 10 ids, expected")  # noqa: E702
    d = bad(); d["200"][1] = d["200"][0]; _cirr_defect(d, split, "recall", "query 200: duplicate ids")  # noqa: E702
    d = bad(); d["200"][-1] = q.reference_id; _cirr_defect(d, split, "recall", "holds its reference")  # noqa: E702
    d = bad(); d["200"][0] = "dev-0-0-img0"; _cirr_defect(d, split, "recall", "not in the gallery")  # noqa: E702
    d = bad(); d["200"] = "test1-0-1-img1"; _cirr_defect(d, split, "recall", "expected a list")  # noqa: E702
    s = copy.deepcopy(sub)
    s["200"][0] = next(i for i in split.gallery.ids if i not in q.group_ids)
    _cirr_defect(s, split, "recall_subset", "outside its img_set group")
    monkeypatch.setattr(S, "CIRR_SIZE_LIMIT", 100)
    _cirr_defect(rec, split, "recall", "over the server's limit of 100 bytes")


def test_circo_file_written_and_validated(circo, tmp_path):
    split, scores = circo
    path = write_circo_submission(scores, split, tmp_path, "searle")
    data = json.loads(path.read_text())
    assert list(data) == ["0", "1", "2"]
    assert all(len(v) == F.CIRCO_GALLERY == len(set(v)) for v in data.values())  # top-50 of a 20-image gallery
    assert data["1"] == scores.rankings["1"]


def test_circo_validator_catches_each_defect(circo):
    split, scores = circo
    sub = circo_submission(scores, split)
    validate_circo_submission(sub, split)
    validate_circo_submission({int(k): [int(i) for i in v] for k, v in sub.items()}, split)  # int ids are fine
    for change, needle in [
        (lambda d: d.pop("2"), r"missing, e.g. \['2'\]"),
        (lambda d: d.update({"3": d["0"]}), "unknown key"),
        (lambda d: d.update({"0": d["0"][:5]}), "query 0: 5 ids, expected 20"),
        (lambda d: d["1"].__setitem__(3, d["1"][0]), "query 1: duplicate ids"),
        (lambda d: d["1"].__setitem__(3, "999999"), "not in the gallery"),
    ]:
        d = copy.deepcopy(sub)
        change(d)
        with pytest.raises(SubmissionError, match=needle):
            validate_circo_submission(d, split)
    renamed = {str(int(k) + 1): v for k, v in sub.items()}
    with pytest.raises(SubmissionError, match=r"keys must be the query ids 0\.\.2"):
        validate_circo_submission(renamed, split)


def test_invalid_rankings_are_never_written(circo, tmp_path):
    split, scores = circo
    broken = copy.deepcopy(scores)
    broken.rankings["0"][1] = broken.rankings["0"][0]
    with pytest.raises(SubmissionError, match="duplicate"):
        write_circo_submission(broken, split, tmp_path, "bad")
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="needs a cirr split"):
        write_cirr_submission(scores, split, tmp_path, "bad")
