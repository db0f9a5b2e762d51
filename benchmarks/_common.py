"""Shared by the benchmark scripts: the device record, peak memory, and writing one JSON file per run.

Every script prints its JSON object and writes it to ``results/benchmarks/<name>-<device>.json`` (``--out``
changes the folder, ``--no-save`` only prints). The device is named in the file name and inside the file
(``device.name``: the GPU model or the CPU model), so figures from different machines are never mixed.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from searle_lib.provenance import cpu_name, git_state  # noqa: E402

DEFAULT_OUT = REPO / "results" / "benchmarks"
PALAVRA_TEMPLATES = REPO.parent / "shared" / "data" / "palavra_templates.txt"


def device_record(device: str) -> dict[str, Any]:
    """What the figures were measured on: type, model name, cores/threads, load at the start."""
    dev = torch.device(device)
    rec: dict[str, Any] = {"type": dev.type}
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        rec.update(name=props.name, memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                   host_cpu=cpu_name())
    else:
        rec.update(name=cpu_name(), torch_threads=torch.get_num_threads())
    rec.update(cpu_count=os.cpu_count(), load_average_1m_at_start=round(os.getloadavg()[0], 2))
    return rec


def device_slug(device: str) -> str:
    """``cpu`` or the GPU model for file names (``cuda-nvidia-h100-80gb-hbm3``)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return "cpu"
    return "cuda-" + re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(dev).lower()).strip("-")


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux ru_maxrss is in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def plain_encoding(device: str):
    """Seconds and rows of the plain phrases the fast paths of OTI and phi encode (``FastTextTower.encode_all``,
    which only ``FeatureCache`` calls there): once per run, with each concept's whole list, so not in proportion
    to the steps. Synchronised on CUDA."""
    from searle_lib._oti_fast import FastTextTower
    seen = {"rows": 0, "seconds": 0.0}
    original = FastTextTower.encode_all

    def encode_all(self, table, batch_size=1024):
        sync(device)
        t = time.perf_counter()
        out = original(self, table, batch_size)
        sync(device)
        seen["seconds"] += time.perf_counter() - t
        seen["rows"] += len(table)
        return out
    with mock.patch.object(FastTextTower, "encode_all", encode_all):
        yield seen


class Timer:
    """Wall-clock seconds of a block, synchronising CUDA at both ends."""

    def __init__(self, device: str):
        self.device = device
        self.seconds = 0.0

    def __enter__(self) -> "Timer":
        sync(self.device)
        self._t = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        sync(self.device)
        self.seconds = time.perf_counter() - self._t


def base_record(benchmark: str, device: str, **extra: Any) -> dict[str, Any]:
    git = git_state()
    return {"benchmark": benchmark, "device": device_record(device), "torch": torch.__version__,
            "git_commit": git.get("commit"), "git_dirty": git.get("dirty"),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}


def add_out_args(ap) -> None:
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="folder for the JSON file")
    ap.add_argument("--no-save", action="store_true", help="only print the JSON")
    ap.add_argument("--tag", default="", help="appended to the file name (e.g. a second configuration)")


def save(record: dict[str, Any], name: str, device: str, args) -> Path | None:
    """Write ``record`` (with the load average now) to ``<out>/<name>[-tag]-<device>.json`` unless ``--no-save``."""
    record["device"]["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    if args.no_save:
        return None
    path = Path(args.out) / f"{name}{'-' + args.tag if args.tag else ''}-{device_slug(device)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {path}", file=sys.stderr)
    return path


def emit(record: dict[str, Any], name: str, device: str, args) -> Path | None:
    """``save`` ``record`` and print it as JSON."""
    path = save(record, name, device, args)
    print(json.dumps(record, indent=1))
    return path
