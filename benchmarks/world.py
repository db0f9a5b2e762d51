"""Benchmark of the embedded default: world build and tiny-CLIP pretraining times, the CLIP's quality, baselines.

Prints (and writes) one JSON object: wall and CPU seconds of each step, the load average while it ran (other work
on the machine inflates wall times), the quality report per domain (caption retrieval, attribute probes) on the
test and held-out splits, and the three plain-CLIP baselines (image, text, image+text) on the test queries.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/world.py --preset embedded --fresh
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from searle_lib import pipeline  # noqa: E402
from searle_lib.backbones import create_backbone  # noqa: E402
from searle_lib.config import apply_overrides, load_config  # noqa: E402
from searle_lib.datasets import load_split  # noqa: E402
from searle_lib.pretrain import pretrain_clip  # noqa: E402
from searle_lib.world import build_world  # noqa: E402
from searle_lib.world.quality import clip_quality  # noqa: E402


def _cpu() -> float:
    """CPU seconds of this process and its finished children (rendering workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn, *args, **kw):
    w, c, load = time.time(), _cpu(), os.getloadavg()[0]
    out = fn(*args, **kw)
    return out, {"wall_s": round(time.time() - w, 1), "cpu_s": round(_cpu() - c, 1),
                 "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="embedded")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=JSON", help="overrides, e.g. pretrain.epochs=2")
    ap.add_argument("--fresh", action="store_true", help="rebuild the world and retrain the CLIP (time them)")
    ap.add_argument("--work", default="data/bench-world", help="world root and checkpoint folder for this run")
    ap.add_argument("--out", default="results/benchmarks/world.json")
    args = ap.parse_args()
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    work = Path(args.work)
    overrides.update({"world.root": str(work / "world"), "pretrain.out_dir": str(work / "clip"),
                      "run.cache_dir": str(work / "cache"), "run.device": "cpu"})
    cfg = load_config(args.preset, overrides)
    torch.set_num_threads(2)
    if args.fresh and work.exists():
        shutil.rmtree(work)
    report: dict = {"preset": args.preset, "overrides": overrides, "model": cfg.model.name,
                    "world": dataclasses.asdict(cfg.world), "pretrain": dataclasses.asdict(cfg.pretrain),
                    "seed": cfg.run.seed, "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                                      "torch": torch.__version__, "threads": 2}}
    manifest, report["time_world"] = timed(build_world, cfg.world, cfg.world.root)
    report["world_counts"] = manifest["counts"]
    ckpt, report["time_pretrain"] = timed(pretrain_clip, cfg, progress=False)
    meta = json.loads(ckpt.with_suffix(".json").read_text())
    report["pretrain_record"] = {k: meta[k] for k in ("loss_first", "loss_last", "steps", "seconds")}
    cfg = apply_overrides(cfg, {"model.checkpoint": str(ckpt), "data.root": cfg.world.root})
    bb = create_backbone(cfg.model, "cpu")
    report["quality"], report["baselines"] = {}, {}
    for domain in cfg.world.domains:
        for split in ("test", "heldout"):
            q, t = timed(clip_quality, bb, cfg.world.root, domain, split, n=cfg.pretrain.eval_size, seed=cfg.run.seed)
            report["quality"][f"{domain}/{split}"] = {**q, "time": t}
        sp = load_split("embedded", cfg.world.root, "test", domain=domain)
        scores, t = timed(pipeline.evaluate, cfg, bb, sp, ["image", "text", "image+text"], progress=False)
        report["baselines"][domain] = {m: {"metrics": s.metrics, "groups": s.groups} for m, s in scores.items()}
        report["baselines"][domain]["time"] = t
    text = json.dumps(report, indent=1)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
