"""Results with provenance: every run writes ``<out_dir>/<preset>/<slug>/`` (style guide rule 16).

``save_run`` writes, for one run:

- ``metrics.json``: the metrics, exactly as given. Flat (``{"recall_at_10": 66.8}``) or one level per method
  (``{"searle": {"recall_at_10": 66.8}, "image": {...}}``); values in percent where the paper uses percent.
- ``provenance.json``: preset, the full resolved config and its hash, seed, backbone name + weights, dataset root
  with a content hash, git commit + dirty flag, package versions, device, start/end time and hostname.
- ``<name>.png`` + ``<name>.json`` for each figure (the JSON holds the plotted data) and ``<name>.csv`` per table.

``collect_runs`` turns every ``provenance.json`` under a results folder into one table (the book's Runs page);
``collect_metrics`` turns every ``metrics.json`` into a long table (the Reproducibility status page).

The dataset hash is a *listing* hash, not a hash of file contents (reading 100,000 ImageNet images to hash them
would cost minutes): for each file under the root, in sorted order, its relative path, size and mtime. It stops
after ``DATA_HASH_MAX_FILES`` files and then says so (``capped: true``). Two hashes are kept: ``listing_hash``
(names + sizes + mtimes: this copy on this disk) and ``layout_hash`` (names + sizes: comparable across machines).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import platform
import socket
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from .chunkstore import atomic_write_text
from .config import StudyConfig, _flatten  # _flatten: nested keys -> dotted keys

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_HASH_MAX_FILES = 200_000  # files listed for a dataset hash before it stops (a full ImageNet test split is 100k)
CHECKPOINT_SHA_MAX_BYTES = 512 * 2**20  # checkpoints up to this size get a sha256 of their contents
PACKAGES = ("torch", "torchvision", "open_clip_torch", "transformers", "numpy", "pandas", "searle-study")
_PROCESS_START = time.time()  # fallback start time: when this module was first imported


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="seconds")


def process_start_time() -> float:
    """When the current process started (for a notebook: when its kernel started), as a UNIX time."""
    try:  # psutil comes with ipykernel; without it the import time of this module is close enough
        import psutil
        return psutil.Process().create_time()
    except Exception:
        return _PROCESS_START


def git_state(repo: Path = REPO_ROOT) -> dict[str, Any]:
    """Commit, dirty flag and the first changed paths; ``results/`` is ignored (runs write there)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                              check=True, timeout=30).stdout
    try:
        commit = git("rev-parse", "HEAD").strip()
        changed = [line[3:] for line in git("status", "--porcelain", "--", ".", ":(exclude)results").splitlines()]
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None, "changed": [], "note": f"{repo} is not a git checkout"}
    return {"commit": commit, "dirty": bool(changed), "changed": changed[:20], "n_changed": len(changed)}


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_info(requested: str = "auto") -> dict[str, Any]:
    """The device a run with ``run.device=requested`` uses, with its name (GPU model or CPU) and core count."""
    import torch
    if requested == "auto":  # the common case, without importing open_clip (seconds) through backbones
        device = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        from .backbones import resolve_device
        try:
            device = str(resolve_device(requested))
        except Exception as e:  # recorded, not raised: provenance must not hide the run's own result
            device = f"unavailable ({e})"
    info: dict[str, Any] = {"requested": requested, "device": device, "cpu_count": os.cpu_count(),
                            "cuda": torch.version.cuda, "torch_threads": torch.get_num_threads()}
    if device.startswith("cuda"):
        info["name"] = torch.cuda.get_device_name(torch.device(device))
    else:
        info["name"] = cpu_name()
    return info


def cpu_name() -> str:
    """The CPU model (Linux: from /proc/cpuinfo), for benchmark and provenance records."""
    try:  # Linux names the CPU model only in /proc/cpuinfo
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str = "auto") -> dict[str, Any]:
    """Versions, device and host: what the Runs page shows about the machine that built the book."""
    return {"versions": package_versions(), "device": device_info(device), "hostname": socket.gethostname(),
            "platform": platform.platform()}


def dataset_hash(root: str | Path | None, max_files: int = DATA_HASH_MAX_FILES) -> dict[str, Any]:
    """Listing hash of a dataset folder (see the module docstring); ``exists: False`` when it is absent."""
    if root is None:
        return {"root": None, "exists": False}
    root = Path(root).expanduser()
    if not root.exists():
        return {"root": str(root.resolve()), "exists": False}
    listing, layout = hashlib.sha256(), hashlib.sha256()
    n, total, capped = 0, 0, False
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()  # os.walk order is the file system's; sorting makes the hash reproducible
        for name in sorted(filenames):
            if n >= max_files:
                capped = True
                break
            p = Path(dirpath, name)
            st = p.stat()
            rel = p.relative_to(root).as_posix()
            layout.update(f"{rel}\0{st.st_size}\n".encode())
            listing.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            n, total = n + 1, total + st.st_size
        if capped:
            break
    return {"root": str(root.resolve()), "exists": True, "files": n, "bytes": total, "capped": capped,
            "max_files": max_files, "listing_hash": listing.hexdigest()[:16], "layout_hash": layout.hexdigest()[:16]}


def file_fingerprint(path: str | Path | None) -> dict[str, Any] | None:
    """sha256 of a (checkpoint) file up to ``CHECKPOINT_SHA_MAX_BYTES``; size and mtime above that."""
    if path is None:
        return None
    p = Path(path).expanduser()
    if not p.is_file():
        return {"path": str(p), "exists": False}
    st = p.stat()
    out: dict[str, Any] = {"path": str(p.resolve()), "exists": True, "bytes": st.st_size, "mtime": _iso(st.st_mtime)}
    if st.st_size <= CHECKPOINT_SHA_MAX_BYTES:
        h = hashlib.sha256()
        with p.open("rb") as f:
            for block in iter(lambda: f.read(2**20), b""):
                h.update(block)
        out["sha256"] = h.hexdigest()
    return out


def default_data_root(cfg: StudyConfig) -> str | None:
    """The folder a run read its benchmark from: ``data.root``, or the embedded world's folder."""
    if cfg.data.root is not None:
        return cfg.data.root
    return cfg.world.root if cfg.data.dataset == "embedded" else None


def to_jsonable(value: Any, key: str = "") -> Any:
    """Plain JSON types from numpy/torch scalars, tuples and paths; non-finite floats become ``None``."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v, key) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()  # numpy / torch scalar
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{key or 'value'}: {type(value).__name__} cannot be written to JSON; convert it first")


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=False, allow_nan=False) + "\n")


def run_dir(cfg: StudyConfig, slug: str, out_dir: str | Path | None = None) -> Path:
    """``<out_dir>/<preset>/<slug>``, with ``out_dir`` defaulting to ``cfg.run.out_dir``."""
    if not slug or "/" in slug or slug.startswith("."):
        raise ValueError(f"run slug {slug!r} must be a plain name such as 'oti' or 'cirr_val'")
    return Path(out_dir if out_dir is not None else cfg.run.out_dir) / cfg.preset / slug


def save_run(cfg: StudyConfig, slug: str, metrics: Mapping[str, Any], *,
             figures: Mapping[str, Any] | None = None, tables: Mapping[str, pd.DataFrame] | None = None,
             extra: Mapping[str, Any] | None = None, data_root: str | Path | None = None,
             out_dir: str | Path | None = None, started: float | None = None) -> Path:
    """Write one run's metrics, provenance, figures and tables; return the run folder.

    Args:
        cfg: the resolved config the run used.
        slug: run name (usually the notebook's slug); the folder is ``<out_dir>/<preset>/<slug>``.
        metrics: flat ``{metric: value}`` or ``{method: {metric: value}}``; snake_case keys.
        figures: ``{name: fig}`` for figures made by ``searle_lib.plots`` (which carry their data) or
            ``{name: (fig, data)}`` with data a DataFrame or JSON-able mapping.
        tables: ``{name: DataFrame}``, written as CSV.
        extra: anything else worth keeping in provenance.json (JSON-able).
        data_root: dataset folder to fingerprint; default ``data.root`` (or the embedded world's folder).
        out_dir: results folder; default ``cfg.run.out_dir``.
        started: UNIX start time; default the start of this process (a notebook's kernel).
    Returns:
        The run folder.
    """
    from . import plots  # matplotlib only when figures are saved

    finished = time.time()
    started = process_start_time() if started is None else started
    folder = run_dir(cfg, slug, out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    _remove_previous_files(folder)

    written_figures = []
    for name, item in (figures or {}).items():
        fig, data = item if isinstance(item, tuple) else (item, None)
        plots.save_figure(fig, folder / f"{name}.png", data=data)
        written_figures.append(name)
    written_tables = []
    for name, table in (tables or {}).items():
        if not isinstance(table, pd.DataFrame):
            raise TypeError(f"table {name!r} must be a pandas DataFrame, got {type(table).__name__}")
        table.to_csv(folder / f"{name}.csv", index=not isinstance(table.index, pd.RangeIndex))
        written_tables.append(name)

    root = data_root if data_root is not None else default_data_root(cfg)
    prov = {
        "slug": slug,
        "preset": cfg.preset,
        "seed": cfg.run.seed,
        "config_hash": cfg.hash(),
        "backbone": {"name": cfg.model.name, "pretrained": cfg.model.pretrained,
                     "preprocess": cfg.model.preprocess, "checkpoint": file_fingerprint(cfg.model.checkpoint)},
        "dataset": {"name": cfg.data.dataset, "split": cfg.eval.split, **dataset_hash(root)},
        "git": git_state(),
        **environment(cfg.run.device),
        "started": _iso(started),
        "finished": _iso(finished),
        "duration_s": round(finished - started, 3),
        "figures": written_figures,
        "tables": written_tables,
        "extra": to_jsonable(dict(extra or {}), "extra"),
        "config": to_jsonable(cfg.to_dict()),
    }
    _write_json(folder / "metrics.json", to_jsonable(dict(metrics), "metrics"))
    _write_json(folder / "provenance.json", prov)
    return folder


def _remove_previous_files(folder: Path) -> None:
    """Delete the figures and tables a previous save_run wrote here, so no stale file outlives its run."""
    prov = folder / "provenance.json"
    if not prov.is_file():
        return
    try:
        old = json.loads(prov.read_text())
    except json.JSONDecodeError:
        return
    for name in old.get("figures", []):
        for suffix in (".png", ".json"):
            (folder / f"{name}{suffix}").unlink(missing_ok=True)
    for name in old.get("tables", []):
        (folder / f"{name}.csv").unlink(missing_ok=True)


def load_run(folder: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(metrics, provenance)`` of one run folder."""
    folder = Path(folder)
    return json.loads((folder / "metrics.json").read_text()), json.loads((folder / "provenance.json").read_text())


RUN_COLUMNS = ["preset", "slug", "started", "duration_s", "commit", "dirty", "backbone", "pretrained", "dataset",
               "split", "data_root", "data_hash", "seed", "config_hash", "device", "device_name", "torch",
               "open_clip", "transformers", "hostname", "path"]


def collect_runs(results_dir: str | Path) -> pd.DataFrame:
    """One row per ``<preset>/<slug>/provenance.json`` under ``results_dir`` (columns ``RUN_COLUMNS``)."""
    rows = []
    for prov_path in sorted(Path(results_dir).glob("*/*/provenance.json")):
        p = json.loads(prov_path.read_text())
        v, d, g, ds = p.get("versions", {}), p.get("device", {}), p.get("git", {}), p.get("dataset", {})
        rows.append({
            "preset": p.get("preset"), "slug": p.get("slug"), "started": p.get("started"),
            "duration_s": p.get("duration_s"), "commit": (g.get("commit") or "")[:10], "dirty": g.get("dirty"),
            "backbone": p.get("backbone", {}).get("name"), "pretrained": p.get("backbone", {}).get("pretrained"),
            "dataset": ds.get("name"), "split": ds.get("split"), "data_root": ds.get("root"),
            "data_hash": ds.get("listing_hash"), "seed": p.get("seed"), "config_hash": p.get("config_hash"),
            "device": d.get("device"), "device_name": d.get("name"), "torch": v.get("torch"),
            "open_clip": v.get("open_clip_torch"), "transformers": v.get("transformers"),
            "hostname": p.get("hostname"), "path": str(prov_path.parent),
        })
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


METRIC_COLUMNS = ["preset", "slug", "dataset", "split", "backbone", "method", "metric", "value", "finished"]


def collect_metrics(results_dir: str | Path) -> pd.DataFrame:
    """Every number in every ``metrics.json`` under ``results_dir``, one row each (columns ``METRIC_COLUMNS``).

    Flat metrics get ``method = ""``; nested ones ``{method: {metric: value}}`` one row per (method, metric).
    Per-group scores that ``searle eval`` keeps in provenance (``extra.groups``: ``{method: {group: {metric: v}}}``,
    e.g. the FashionIQ categories) become ``<group>_<metric>`` rows, such as ``dress_recall_at_10``.
    Dataset, split and backbone come from the run's provenance.
    """
    rows = []
    for folder in sorted(p.parent for p in Path(results_dir).glob("*/*/provenance.json")):
        if not (folder / "metrics.json").is_file():
            continue
        metrics, prov = load_run(folder)
        base = {"preset": prov.get("preset"), "slug": prov.get("slug"),
                "dataset": prov.get("dataset", {}).get("name"), "split": prov.get("dataset", {}).get("split"),
                "backbone": prov.get("backbone", {}).get("name"), "finished": prov.get("finished")}
        for key, value in metrics.items():
            if isinstance(value, Mapping):
                rows += [{**base, "method": key, "metric": m, "value": v} for m, v in value.items()
                         if isinstance(v, (int, float)) and not isinstance(v, bool)]
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                rows.append({**base, "method": "", "metric": key, "value": value})
        groups = (prov.get("extra") or {}).get("groups") or {}
        for method, per_group in groups.items():
            for group, values in (per_group or {}).items():
                rows += [{**base, "method": method, "metric": f"{group}_{m}", "value": v} for m, v in values.items()
                         if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return pd.DataFrame(rows, columns=METRIC_COLUMNS)


def _index_lists(value: Any) -> Any:
    """Lists become dicts keyed by position, recursively, so that the scalars inside them flatten."""
    if isinstance(value, Mapping):
        return {k: _index_lists(v) for k, v in value.items()}
    if isinstance(value, list):
        return {str(i): _index_lists(v) for i, v in enumerate(value)}
    return value


def collect_benchmarks(bench_dir: str | Path) -> pd.DataFrame:
    """Every scalar in every ``*.json`` under ``bench_dir`` (nested keys dotted): columns file, device, key, value.

    ``device`` is the file's top-level ``device`` (or ``device.name``) when it has one, so that figures from
    different machines are never mixed up.
    """
    rows = []
    for path in sorted(Path(bench_dir).glob("**/*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"benchmark file {path} is not valid JSON: {e}") from e
        if not isinstance(data, Mapping):
            continue
        flat = _flatten(_index_lists(data))  # lists (e.g. one entry per gallery size) as runs.0.gallery, ...
        device = flat.get("device.name", flat.get("device", ""))
        rows += [{"file": path.relative_to(bench_dir).as_posix(), "device": str(device), "key": k, "value": v}
                 for k, v in flat.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)]
    return pd.DataFrame(rows, columns=["file", "device", "key", "value"])
