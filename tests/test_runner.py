"""The notebook runner (scripts/run_notebooks.py) on tiny throwaway notebooks, the generated TOC against
notebooks/, and the set-up files the README promises."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import jupytext
import pytest
import yaml

from _book_fixtures import REPO, runner

rn = runner()

A = '''# %% [markdown]
# # A
# %% tags=["parameters"]
preset = "x"
out_dir = "out"
x = 1
# %%
from pathlib import Path
Path(out_dir).mkdir(parents=True, exist_ok=True)
Path(out_dir, f"a_{preset}.txt").write_text(f"{x} {type(x).__name__}")
'''
B = '''# %% tags=["parameters"]
preset = "x"
out_dir = "out"
# %%
from pathlib import Path
print("b read", Path(out_dir, f"a_{preset}.txt").read_text())
'''
FAIL = '''# %% tags=["parameters"]
preset = "x"
# %%
raise ValueError("boom")
'''


def _kernel_present() -> None:
    from jupyter_client.kernelspec import KernelSpecManager
    if rn.KERNEL not in KernelSpecManager().find_kernel_specs():
        pytest.fail(f"Jupyter kernel {rn.KERNEL!r} is not registered; run scripts/setup.sh")


@pytest.fixture()
def world(tmp_path: Path):
    """Throwaway notebooks a -> b, a failing one, a library folder and a runs folder."""
    nbs, lib = tmp_path / "notebooks", tmp_path / "lib"
    nbs.mkdir()
    lib.mkdir()
    (nbs / "a.py").write_text(A)
    (nbs / "b.py").write_text(B)
    (nbs / "fail.py").write_text(FAIL)
    (lib / "mod.py").write_text("VALUE = 1\n")
    table = (rn.Notebook("a", "method", presets=("p1", "p2")),
             rn.Notebook("fail", "benchmarks", presets=("p1",)),
             rn.Notebook("b", "method", deps=("a",), presets=("p1",)))
    kw = dict(table=table, notebooks_dir=nbs, runs_dir=tmp_path / "runs", library_dir=lib, cwd=tmp_path,
              log=lambda message: None)
    return tmp_path, kw


@pytest.mark.slow
def test_skip_logic_and_parameter_pass_through(world) -> None:
    _kernel_present()
    tmp, kw = world
    out = str(tmp / "out")
    ran = lambda report: [(s, p) for s, p, what in report if what == "ran"]  # noqa: E731
    report = rn.run(("p1",), only=("a", "b"), params={"x": 7, "out_dir": out}, **kw)
    assert ran(report) == [("a", "p1"), ("b", "p1")]
    assert (tmp / "out" / "a_p1.txt").read_text() == "7 int"  # the value and its type got through
    executed = json.loads((tmp / "runs" / "b__p1.ipynb").read_text())
    assert "b read 7 int" in json.dumps(executed["cells"])
    assert executed["metadata"]["searle_run"]["parameters"] == {"preset": "p1", "out_dir": out}
    injected = [c for c in json.loads((tmp / "runs" / "a__p1.ipynb").read_text())["cells"]
                if "injected-parameters" in c["metadata"].get("tags", [])]
    assert len(injected) == 1 and "x = 7" in "".join(injected[0]["source"])

    same = dict(only=("a", "b"), params={"x": 7, "out_dir": out}, **kw)
    assert [r[2] for r in rn.run(("p1",), **same)] == ["skipped", "skipped"]
    (tmp / "notebooks" / "b.py").write_text(B + "# an edit\n")
    assert ran(rn.run(("p1",), **same)) == [("b", "p1")]
    (tmp / "lib" / "mod.py").write_text("VALUE = 2\n")  # a library change reruns everything
    assert ran(rn.run(("p1",), **same)) == [("a", "p1"), ("b", "p1")]
    # a parameter only a declares: a reruns, and b because its upstream output changed
    assert ran(rn.run(("p1",), **{**same, "params": {"x": 8, "out_dir": out}})) == [("a", "p1"), ("b", "p1")]
    assert ran(rn.run(("p1",), **{**same, "params": {"x": 8, "out_dir": out}, "force": True})) == \
        [("a", "p1"), ("b", "p1")]
    # b does not run on p2
    assert rn.run(("p2",), **{**same, "params": {"out_dir": out}}) == [("a", "p2", "ran"), ("b", "p2", "not for preset")]


@pytest.mark.slow
def test_first_failure_stops_and_names_notebook_and_preset(world) -> None:
    _kernel_present()
    tmp, kw = world
    with pytest.raises(rn.RunError) as err:
        rn.run(("p1",), params={"out_dir": str(tmp / "out")}, **kw)
    message = str(err.value)
    assert "'fail'" in message and "'p1'" in message and "ValueError: boom" in message
    kept = tmp / "runs" / "fail__p1.ipynb"
    assert str(kept) in message and kept.is_file() and rn.recorded_key(kept) is None  # reruns next time
    assert (tmp / "runs" / "a__p1.ipynb").is_file() and not (tmp / "runs" / "b__p1.ipynb").exists()


def test_errors_that_need_no_kernel(world) -> None:
    tmp, kw = world
    with pytest.raises(rn.RunError, match=r"parameters \['nope'\] are not declared"):
        rn.run(("p1",), params={"nope": 1}, **kw)
    with pytest.raises(rn.RunError, match="upstream notebooks \\['a__p1.ipynb'\\]"):
        rn.run(("p1",), only=("b",), **kw)
    with pytest.raises(rn.RunError, match="not in the notebook table"):
        rn.run(("p1",), only=("zzz",), **kw)
    cyc = (rn.Notebook("a", "method", deps=("b",)), rn.Notebook("b", "method", deps=("a",)))
    with pytest.raises(rn.RunError, match="cycle"):
        rn.ordered(cyc)
    with pytest.raises(rn.RunError, match="not in the table"):
        rn.ordered((rn.Notebook("a", "method", deps=("ghost",)),))
    with pytest.raises(rn.RunError, match="unknown part"):
        rn.ordered((rn.Notebook("a", "appendix"),))
    (tmp / "notebooks" / "a.py").write_text("# %%\nx = 1\n")
    with pytest.raises(rn.RunError, match="exactly one cell tagged parameters"):
        rn.run(("p1",), only=("a",), **kw)


def test_progress_output_collapses_to_what_a_terminal_shows() -> None:
    outs = [{"output_type": "stream", "name": "stderr", "text": "bar:   0%|  | 0/2\rbar:  50%|# | 1/2"},
            {"output_type": "stream", "name": "stderr", "text": "\rbar: 100%|##| 2/2\nWARNING: x\r\n"},
            {"output_type": "stream", "name": "stdout", "text": "result 1\n"},
            {"output_type": "execute_result", "data": {"text/plain": "1"}}]
    got = rn.collapse_streams(outs)
    assert [o["output_type"] for o in got] == ["stream", "stream", "execute_result"]
    assert got[0]["text"] == "bar: 100%|##| 2/2\nWARNING: x\n" and got[1]["text"] == "result 1\n"


def test_parameter_values_are_yaml() -> None:
    assert [rn.parse_param(p) for p in ("a=5", "b=1e-3", "c=0.5", "d=true", "e=null", "f=abc", "g=[1, 2]")] == \
        [("a", 5), ("b", 0.001), ("c", 0.5), ("d", True), ("e", None), ("f", "abc"), ("g", [1, 2])]
    with pytest.raises(rn.RunError, match="key=value"):
        rn.parse_param("no-equals")


def test_dependency_order_and_all() -> None:
    table = (rn.Notebook("summary", "reproducibility", deps=rn.ALL), rn.Notebook("late", "method", deps=("early",)),
             rn.Notebook("early", "method"))
    assert [nb.slug for nb in rn.ordered(table)] == ["early", "late", "summary"]


# --- the real table, the notebooks and the TOC ----------------------------------------------------------------
def test_table_matches_notebooks_folder() -> None:
    in_table = {nb.slug for nb in rn.NOTEBOOKS}
    on_disk = {p.stem for p in (REPO / "notebooks").glob("*.py")}
    assert in_table == on_disk, f"only in the table: {in_table - on_disk}; only in notebooks/: {on_disk - in_table}"
    rn.ordered(rn.NOTEBOOKS)


@pytest.mark.parametrize("slug", [nb.slug for nb in rn.NOTEBOOKS])
def test_notebook_follows_the_house_shape(slug: str) -> None:
    source = REPO / "notebooks" / f"{slug}.py"
    nb = jupytext.read(source)
    assert nb.metadata["kernelspec"]["name"] == rn.KERNEL
    assert {"preset", "seed", "out_dir"} <= rn.declared_parameters(nb, source)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assert 'preset = "embedded"' in params.source, "defaults must run offline on the embedded preset"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), "title first"
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert not re.search(r"^\s*(def|class) ", code, re.M), "no def/class in notebooks: move it to searle_lib"
    assert "save_run(" in code


def _fake_runs(runs_dir: Path, presets: dict[str, tuple[str, ...]]) -> None:
    runs_dir.mkdir(parents=True)
    for slug, ps in presets.items():
        for p in ps:
            (runs_dir / f"{slug}__{p}.ipynb").write_text(json.dumps({"metadata": {"searle_run": {"key": "k"}}}))


def test_toc_has_every_notebook_once_under_its_part(tmp_path: Path) -> None:
    runs = tmp_path / "book" / "runs"
    table = rn.NOTEBOOKS + (rn.Notebook("extra", "benchmarks", presets=("embedded", "tiny", "paper-vitb32")),)
    _fake_runs(runs, {nb.slug: ("embedded", "tiny") for nb in table} | {"extra": ("embedded", "tiny", "paper-vitb32")})
    toc = rn.toc(("embedded",), table=table, runs_dir=runs, root=tmp_path)
    assert toc["format"] == "jb-book" and (REPO / f"{toc['root']}.md").is_file()
    captions = [part["caption"] for part in toc["parts"]]
    assert captions == ["Method", "Benchmarks", "Open questions", "Reproducibility"]
    files = []
    for part, (key, (caption, frame)) in zip(toc["parts"], rn.PARTS.items()):
        assert part["chapters"][0] == {"file": frame} and (REPO / f"{frame}.md").is_file()
        pages = [{"file": page} for page in rn.PAGES.get(key, ())]
        assert all((REPO / f"{page}.md").is_file() for page in rn.PAGES.get(key, ()))
        assert part["chapters"][len(part["chapters"]) - len(pages):] == pages  # plain pages close the part
        for chapter in part["chapters"][1:len(part["chapters"]) - len(pages)]:
            slug = chapter["file"].rsplit("/", 1)[1].split("__")[0]
            assert next(nb for nb in table if nb.slug == slug).part == key
            files.append(chapter["file"])
            files += [s["file"] for s in chapter.get("sections", [])]
    assert sorted(files) == sorted([f"book/runs/{nb.slug}__embedded" for nb in table] + ["book/runs/extra__paper-vitb32"])
    tiny = rn.toc(("tiny",), table=table, runs_dir=runs, root=tmp_path, extra_existing=False)
    assert all(f.endswith("__tiny") for f in re.findall(r"book/runs/\S+?(?=')", str(tiny)))


def test_toc_refuses_a_missing_run(tmp_path: Path) -> None:
    runs = tmp_path / "book" / "runs"
    _fake_runs(runs, {nb.slug: ("embedded",) for nb in rn.NOTEBOOKS[1:]})
    with pytest.raises(rn.RunError, match=f"{rn.NOTEBOOKS[0].slug}.*--preset embedded"):
        rn.toc(("embedded",), runs_dir=runs, root=tmp_path)


# --- set-up files ---------------------------------------------------------------------------------------------
def test_book_config_is_offline_and_does_not_execute() -> None:
    cfg = yaml.safe_load((REPO / "_config.yml").read_text())
    assert cfg["execute"]["execute_notebooks"] == "off" and cfg["only_build_toc_files"] is True
    assert {".*", "tests", "data", "checkpoints", "results"} <= set(cfg["exclude_patterns"])
    assert "://" not in cfg["sphinx"]["config"]["mathjax_path"]
    assert "sphinx-mathjax-offline" in cfg["sphinx"]["extra_extensions"]


def _pins(lines) -> dict[str, str]:
    pins = {}
    for line in lines:
        m = re.match(r"^\s*(?:- )?([A-Za-z0-9_.\-]+)==([^\s#]+)", line)
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def test_environment_yml_and_constraints_agree_with_requirements() -> None:
    req = _pins((REPO / "requirements.txt").read_text().splitlines())
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert _pins(pip) == req
    constraints = _pins((REPO / "constraints.txt").read_text().splitlines())
    assert {k: constraints.get(k) for k in req} == req, "constraints.txt must pin every requirement the same"


def test_readme_commands_exist_and_ci_calls_the_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    assert "make book" in readme and "make test" in readme
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^book:", makefile, re.M) and re.search(r"^test: setup", makefile, re.M)
    ci = REPO / ".ci" / "run"
    assert os.access(ci, os.X_OK) and "make test" in ci.read_text()
    assert os.access(REPO / "scripts" / "setup.sh", os.X_OK)
