#!/usr/bin/env python
"""Execute the study's notebooks with papermill, in dependency order, for one or more presets.

The table ``NOTEBOOKS`` below is the only list of notebooks: execution order, dependencies, the presets each one
runs on, and the book part it belongs to. Adding a notebook is one line there plus ``notebooks/<slug>.py``.

For each (notebook, preset) the runner
  1. converts ``notebooks/<slug>.py`` (jupytext percent format) to a notebook with the ``searle-study`` kernel,
  2. executes it with papermill, passing ``preset`` and any ``-p key=value`` the notebook declares,
  3. writes ``book/runs/<slug>__<preset>.ipynb`` and records in its metadata the key of its inputs: a hash of the
     notebook source, the parameters, every file under ``searle_lib/``, and the executed upstream notebooks.
A notebook whose output carries the current key is skipped unless ``--force``. The first failure stops the run,
names the notebook and preset, and keeps the partly executed notebook for inspection.

    python scripts/run_notebooks.py                      # every notebook on the embedded preset
    python scripts/run_notebooks.py --preset tiny         # the quick preset (CI)
    python scripts/run_notebooks.py --only oti -p seed=1  # one notebook, with a parameter
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

REPO = Path(__file__).resolve().parents[1]
KERNEL = "searle-study"
ALL = ("*",)  # deps=ALL: runs after every notebook that does not itself depend on ALL


@dataclass(frozen=True)
class Notebook:
    slug: str  # notebooks/<slug>.py; also the page name and the results/<preset>/<slug> folder
    part: str  # book part: a key of PARTS
    deps: tuple[str, ...] = ()  # slugs whose outputs this notebook reads (ALL: every other notebook)
    presets: tuple[str, ...] = ("embedded", "tiny")  # presets it runs on


# Book parts, in order: caption and the frame page that opens the part.
PARTS = {
    "method": ("Method", "book/method"),
    "benchmarks": ("Benchmarks", "book/benchmarks"),
    "open_questions": ("Open questions", "book/open_questions"),
    "reproducibility": ("Reproducibility", "book/reproducibility"),
}
ROOT_PAGE = "book/intro"
# Plain pages (no notebook) of a part, placed after its notebooks: part -> page paths without suffix.
PAGES: dict[str, tuple[str, ...]] = {"reproducibility": ("book/bad_inputs",)}

# The notebooks, in the order they run (dependencies permitting). One line per notebook.
NOTEBOOKS: tuple[Notebook, ...] = (
    Notebook("world", "method"),
    Notebook("phrases", "method", deps=("world",)),
    Notebook("concepts", "method", deps=("world",)),
    Notebook("oti", "method", deps=("phrases", "concepts")),
    Notebook("phi", "method", deps=("oti",)),
    Notebook("embedded", "benchmarks", deps=("phi",)),
    Notebook("fashioniq", "benchmarks"),
    Notebook("cirr", "benchmarks"),
    Notebook("circo", "benchmarks"),
    Notebook("domain_shift", "open_questions", deps=("phi",)),
    Notebook("lm_choice", "open_questions", deps=("phi",)),
    Notebook("pretraining_size", "open_questions", deps=("phi",)),
    Notebook("backbone", "open_questions", deps=("phi",)),
    Notebook("paper_tables", "reproducibility"),
    Notebook("protocol_audit", "reproducibility", deps=("phi",)),
    Notebook("status", "reproducibility", deps=ALL),
    Notebook("performance", "reproducibility"),
    Notebook("runs", "reproducibility", deps=ALL),
)


def _log(message: str) -> None:
    print(message, flush=True)  # flushed so that make shows progress as it happens


class RunError(RuntimeError):
    """A notebook that could not run; the message names the notebook, the preset and where the output is."""


# --- the table ----------------------------------------------------------------------------------------------
def ordered(table: Sequence[Notebook]) -> list[Notebook]:
    """The table in execution order: a stable topological sort (table order where dependencies allow)."""
    slugs = [nb.slug for nb in table]
    if len(set(slugs)) != len(slugs):
        raise RunError(f"duplicate slugs in the notebook table: {sorted({s for s in slugs if slugs.count(s) > 1})}")
    deps = {nb.slug: resolve_deps(nb, table) for nb in table}
    done: list[Notebook] = []
    pending = list(table)
    while pending:
        ready = next((nb for nb in pending if all(d in {x.slug for x in done} for d in deps[nb.slug])), None)
        if ready is None:
            raise RunError("notebook dependencies form a cycle among: " + ", ".join(nb.slug for nb in pending))
        done.append(ready)
        pending.remove(ready)
    return done


def resolve_deps(nb: Notebook, table: Sequence[Notebook]) -> tuple[str, ...]:
    """``nb.deps`` with ALL expanded; unknown slugs are an error."""
    if nb.deps == ALL:
        return tuple(x.slug for x in table if x.deps != ALL and x.slug != nb.slug)
    known = {x.slug for x in table}
    unknown = [d for d in nb.deps if d not in known]
    if unknown:
        raise RunError(f"notebook {nb.slug!r} depends on {unknown}, which are not in the table")
    if nb.part not in PARTS:
        raise RunError(f"notebook {nb.slug!r}: unknown part {nb.part!r}; parts are {list(PARTS)}")
    return nb.deps


# --- inputs and skipping ------------------------------------------------------------------------------------
def tree_hash(root: Path, suffixes: Iterable[str] = (".py", ".yaml", ".yml", ".json", ".txt")) -> str:
    """sha256 over the relative paths and contents of the files under ``root`` with these suffixes."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix in tuple(suffixes) and "__pycache__" not in p.parts:
            h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def output_path(runs_dir: Path, slug: str, preset: str) -> Path:
    return runs_dir / f"{slug}__{preset}.ipynb"


def input_key(source: Path, params: dict[str, Any], library: str, upstream: Sequence[Path]) -> str:
    """Hash of everything a run depends on: notebook source, parameters, library sources, upstream outputs."""
    h = hashlib.sha256(source.read_bytes())
    h.update(json.dumps(params, sort_keys=True, default=str).encode())
    h.update(library.encode())
    for path in upstream:
        h.update(path.name.encode() + hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:20]


def recorded_key(path: Path) -> str | None:
    """The input key stored in an executed notebook (None when absent, unreadable or failed)."""
    try:
        return json.loads(path.read_text())["metadata"]["searle_run"]["key"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def declared_parameters(nb: Any, source: Path) -> set[str]:
    """Names assigned in the notebook's cell tagged ``parameters``."""
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise RunError(f"{source} must have exactly one cell tagged parameters "
                       f"(# %% tags=[\"parameters\"]); found {len(cells)}")
    names = set()
    for stmt in ast.parse(cells[0].source).body:
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target] if isinstance(
            stmt, ast.AnnAssign) else []
        names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def parse_param(text: str) -> tuple[str, Any]:
    """``key=value`` with a YAML value (``5``, ``0.1``, ``true``, ``null``, ``[a, b]``); ``1e-3`` is a float."""
    import yaml
    key, sep, raw = text.partition("=")
    if not sep or not key.isidentifier():
        raise RunError(f"parameter {text!r}: expected key=value with a Python name as key")
    value = yaml.safe_load(raw) if raw else ""
    if isinstance(value, str):
        try:
            value = float(value) if any(ch in value for ch in "eE.") and value.strip() else value
        except ValueError:
            pass
    return key, value


# --- execution ----------------------------------------------------------------------------------------------
def to_notebook(source: Path, kernel: str = KERNEL) -> Any:
    """The jupytext notebook of ``source`` with the kernel papermill must use (without it, no injection)."""
    import jupytext
    nb = jupytext.read(source, fmt="py:percent")
    nb.metadata["kernelspec"] = {"name": kernel, "display_name": "Python 3.11 (searle-study)", "language": "python"}
    return nb


def execute(nb_node: Any, out: Path, params: dict[str, Any], kernel: str, cwd: Path, timeout: int | None) -> None:
    import papermill
    papermill.execute_notebook(nb_node, str(out), parameters=params, kernel_name=kernel, cwd=str(cwd),
                               progress_bar=False, log_output=False, execution_timeout=timeout)


def run(presets: Sequence[str] = ("embedded",), *, only: Sequence[str] = (), force: bool = False,
        params: dict[str, Any] | None = None, table: Sequence[Notebook] = NOTEBOOKS,
        notebooks_dir: Path = REPO / "notebooks", runs_dir: Path = REPO / "book" / "runs",
        library_dir: Path = REPO / "searle_lib", cwd: Path = REPO, kernel: str = KERNEL,
        timeout: int | None = None, log=_log) -> list[tuple[str, str, str]]:
    """Run the table for each preset; return ``[(slug, preset, "ran" | "skipped" | "not for preset")]``.

    Raises RunError at the first failure, naming notebook and preset.
    """
    params = dict(params or {})
    order = ordered(table)
    unknown = [s for s in only if s not in {nb.slug for nb in table}]
    if unknown:
        raise RunError(f"--only {unknown}: not in the notebook table; known: {[nb.slug for nb in order]}")
    selected = [nb for nb in order if not only or nb.slug in only]
    runs_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the kernels inherit it: no model download, ever
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    library = tree_hash(library_dir)
    sources = {nb.slug: notebooks_dir / f"{nb.slug}.py" for nb in table}
    missing = [str(sources[nb.slug]) for nb in selected if not sources[nb.slug].is_file()]
    if missing:
        raise RunError(f"notebook sources missing: {missing}")
    nodes = {nb.slug: to_notebook(sources[nb.slug], kernel) for nb in selected}
    declared = {slug: declared_parameters(node, sources[slug]) for slug, node in nodes.items()}
    stray = [k for k in params if not any(k in d for d in declared.values())]
    if stray:
        raise RunError(f"parameters {stray} are not declared by any selected notebook; "
                       + "; ".join(f"{s}: {sorted(d)}" for s, d in declared.items()))
    report = []
    for preset in presets:
        for nb in selected:
            if preset not in nb.presets:
                log(f"  -    {nb.slug} [{preset}]: not run on this preset (runs on {', '.join(nb.presets)})")
                report.append((nb.slug, preset, "not for preset"))
                continue
            nb_params = {"preset": preset, **{k: v for k, v in params.items() if k in declared[nb.slug]}}
            upstream = [output_path(runs_dir, d, preset) for d in resolve_deps(nb, table)
                        if preset in next(x for x in table if x.slug == d).presets]
            absent = [p for p in upstream if recorded_key(p) is None]
            if absent:
                raise RunError(f"notebook {nb.slug!r} on preset {preset!r} needs the executed upstream "
                               f"notebooks {[p.name for p in absent]}; run them first (drop --only)")
            key = input_key(sources[nb.slug], nb_params, library, upstream)
            out = output_path(runs_dir, nb.slug, preset)
            if not force and recorded_key(out) == key:
                log(f"  skip {nb.slug} [{preset}]: inputs unchanged ({out.name})")
                report.append((nb.slug, preset, "skipped"))
                continue
            log(f"  run  {nb.slug} [{preset}]")
            t0 = time.time()
            try:
                execute(nodes[nb.slug], out, nb_params, kernel, cwd, timeout)
            except Exception as e:  # papermill's errors, a dead kernel, a missing kernel: all stop the run
                detail = f"{getattr(e, 'ename', type(e).__name__)}: {getattr(e, 'evalue', e)}"
                raise RunError(f"notebook {nb.slug!r} failed on preset {preset!r}: {detail}\n"
                               f"  partly executed notebook kept at {out}") from e
            seconds = time.time() - t0
            _record(out, {"key": key, "slug": nb.slug, "preset": preset, "parameters": nb_params,
                          "seconds": round(seconds, 2), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
            log(f"  done {nb.slug} [{preset}] in {seconds:.1f} s -> {out.name}")
            report.append((nb.slug, preset, "ran"))
    return report


def collapse_streams(outputs: list) -> list:
    """Consecutive stdout/stderr outputs merged, and each line shown as a terminal shows it: only the text after
    its last carriage return (a progress bar's final state instead of every update)."""
    merged: list = []
    for o in outputs:
        if o.get("output_type") == "stream" and merged and merged[-1].get("output_type") == "stream" \
                and merged[-1].get("name") == o.get("name"):
            merged[-1]["text"] += o["text"]
        else:
            merged.append(o)
    for o in merged:
        if o.get("output_type") == "stream" and "\r" in o["text"]:
            lines = o["text"].replace("\r\n", "\n").split("\n")
            o["text"] = "\n".join(line.rstrip("\r").rsplit("\r", 1)[-1] for line in lines)
    return merged


def _record(out: Path, info: dict[str, Any]) -> None:
    """Store the run's key in the executed notebook, say under its title how it was run, and collapse progress
    output (``collapse_streams``)."""
    import nbformat
    nb = nbformat.read(out, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = collapse_streams(cell.outputs)
    nb.metadata["searle_run"] = info
    shown = ", ".join(f"`{k}={v!r}`" for k, v in info["parameters"].items())
    note = nbformat.v4.new_markdown_cell(
        f"*Executed by `scripts/run_notebooks.py` with {shown} in {info['seconds']:.1f} s "
        f"({info['finished']}); the numbers below come from this run.*")
    note.metadata["tags"] = ["searle-run-note"]
    first_md = next((i for i, c in enumerate(nb.cells) if c.cell_type == "markdown"), -1)
    nb.cells.insert(first_md + 1, note)
    nbformat.write(nb, out)


# --- the book's table of contents ---------------------------------------------------------------------------
def toc(presets: Sequence[str] = ("embedded",), *, table: Sequence[Notebook] = NOTEBOOKS,
        runs_dir: Path = REPO / "book" / "runs", root: Path = REPO, extra_existing: bool = True) -> dict[str, Any]:
    """The Jupyter Book TOC (``jb-book``): one part per PARTS entry, one chapter per notebook, one section per
    further preset.

    The chapter is the run on the first of ``presets``, which must exist for every notebook that runs on it.
    Runs on the other ``presets`` (and, with ``extra_existing``, on any of the notebook's presets other than
    ``tiny`` whose executed output exists) become sections titled with their preset.
    """
    ordered(table)  # validates slugs, parts and dependencies; chapters keep the table's order
    rel = runs_dir.resolve().relative_to(root.resolve()).as_posix()
    parts = []
    for part, (caption, page) in PARTS.items():
        chapters: list[dict[str, Any]] = [{"file": page}]
        for nb in (n for n in table if n.part == part):
            wanted = [p for p in presets if p in nb.presets]
            if extra_existing:
                wanted += [p for p in nb.presets if p not in wanted and p != "tiny"
                           and recorded_key(output_path(runs_dir, nb.slug, p))]
            have = [p for p in wanted if recorded_key(output_path(runs_dir, nb.slug, p))]
            if presets[0] in nb.presets and presets[0] not in have:
                raise RunError(f"notebook {nb.slug!r} has no successful run on preset {presets[0]!r} in {runs_dir}; "
                               f"run: python scripts/run_notebooks.py --preset {presets[0]}")
            if not have:
                continue
            chapter: dict[str, Any] = {"file": f"{rel}/{nb.slug}__{have[0]}"}
            if have[1:]:
                chapter["sections"] = [{"file": f"{rel}/{nb.slug}__{p}", "title": f"{nb.slug} ({p})"}
                                       for p in have[1:]]
            chapters.append(chapter)
        chapters += [{"file": page} for page in PAGES.get(part, ())]
        parts.append({"caption": caption, "numbered": True, "chapters": chapters})
    return {"format": "jb-book", "root": ROOT_PAGE, "parts": parts}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", action="append", help="preset to run (repeatable; default: embedded)")
    ap.add_argument("--only", action="append", default=[], help="run only this notebook slug (repeatable)")
    ap.add_argument("--force", action="store_true", help="run even when the inputs did not change")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                    help="notebook parameter (YAML value), passed to the notebooks that declare it")
    ap.add_argument("--runs-dir", type=Path, default=REPO / "book" / "runs", help="where executed notebooks go")
    ap.add_argument("--timeout", type=int, default=None, help="seconds per cell before a notebook fails")
    ap.add_argument("--list", action="store_true", help="print the notebook table in execution order and exit")
    args = ap.parse_args(argv)
    if args.list:
        for nb in ordered(NOTEBOOKS):
            print(f"{nb.slug:<20} part={nb.part:<16} deps={','.join(resolve_deps(nb, NOTEBOOKS)) or '-':<30} "
                  f"presets={','.join(nb.presets)}")
        return 0
    presets = args.preset or ["embedded"]
    t0 = time.time()
    try:
        from searle_lib.config import list_presets
        bad = [p for p in presets if p not in list_presets()]
        if bad:
            raise RunError(f"unknown preset(s) {bad}; available: {', '.join(list_presets())}")
        params = dict(parse_param(p) for p in args.param)
        print(f"[notebooks] presets {', '.join(presets)}; outputs in {args.runs_dir}")
        report = run(presets, only=args.only, force=args.force, params=params, runs_dir=args.runs_dir.resolve(),
                     timeout=args.timeout)
    except RunError as e:
        print(f"[notebooks] error: {e}", file=sys.stderr)
        return 1
    ran = sum(r[2] == "ran" for r in report)
    print(f"[notebooks] {ran} ran, {sum(r[2] == 'skipped' for r in report)} up to date, "
          f"in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
