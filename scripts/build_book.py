#!/usr/bin/env python
"""Build the book with Jupyter Book 1.x from the executed notebooks, warnings as errors, offline.

The table of contents is generated from the notebook table in ``scripts/run_notebooks.py`` (so it always matches
``notebooks/``) and written to ``_build/toc/<preset>/_toc.yml``. The main book (preset ``embedded``) goes to
``_build/html``; a book of another preset goes to ``_build/<preset>/_build/html`` unless ``--out`` says otherwise.

    python scripts/build_book.py                    # the embedded book -> _build/html/index.html
    python scripts/build_book.py --preset tiny      # the CI book       -> _build/tiny/_build/html/index.html
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_notebooks import REPO, RunError, toc  # noqa: E402


def default_out(preset: str) -> Path:
    """The build folder of ``preset``: the repository for the main book, ``_build/<preset>`` for others."""
    return REPO if preset == "embedded" else REPO / "_build" / preset


def build(preset: str = "embedded", *, out: Path | None = None, runs_dir: Path = REPO / "book" / "runs",
          extra_existing: bool = True, quiet: bool = True) -> Path:
    """Write the TOC and run ``jupyter-book build`` with -W -n --keep-going; return the index.html path."""
    toc_file = REPO / "_build" / "toc" / preset / "_toc.yml"
    toc_file.parent.mkdir(parents=True, exist_ok=True)
    toc_file.write_text(yaml.safe_dump(toc((preset,), runs_dir=runs_dir, extra_existing=extra_existing),
                                       sort_keys=False))
    out = out or default_out(preset)
    shutil.rmtree(out / "_build" / "html", ignore_errors=True)  # no page of an earlier build may survive
    jb = Path(sys.executable).parent / "jupyter-book"
    cmd = [str(jb), "build", str(REPO), "--toc", str(toc_file), "--path-output", str(out),
           "-W", "-n", "--keep-going"]
    if quiet:
        cmd.append("-q")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=quiet, text=True)
    if proc.returncode != 0:
        log = (proc.stdout or "") + (proc.stderr or "") if quiet else ""
        raise RunError(f"jupyter-book build failed (exit {proc.returncode}) for preset {preset!r}:\n{log[-6000:]}"
                       f"\n  reports: {out / '_build' / 'html' / 'reports'}")
    return out / "_build" / "html" / "index.html"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="embedded", help="the preset whose runs make the chapters")
    ap.add_argument("--out", type=Path, default=None, help="build folder (the HTML goes to OUT/_build/html)")
    ap.add_argument("--only-preset", action="store_true",
                    help="leave out runs on other presets even where they exist (paper presets run elsewhere)")
    ap.add_argument("--verbose", action="store_true", help="show Sphinx's output")
    args = ap.parse_args(argv)
    t0 = time.time()
    try:
        index = build(args.preset, out=args.out, extra_existing=not args.only_preset, quiet=not args.verbose)
    except RunError as e:
        print(f"[book] error: {e}", file=sys.stderr)
        return 1
    print(f"[book] built in {time.time() - t0:.1f} s: {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
