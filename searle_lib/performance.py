"""Tables of the performance chapter, from the JSON files the scripts in ``benchmarks/`` write (issue 6).

Input: ``provenance.collect_benchmarks(results/benchmarks)``, one row per scalar (file, device, key, value).
Output: one table per benchmark kind, one row per file (a model on a device), with the figures the chapter
discusses. Figures from different devices sit in different rows and are never combined: every ratio shown was
measured within one file, i.e. in one run on one machine.

The official loop's cost on an H100 (0.46 / 0.44 images/s for ViT-B/32 / ViT-L/14) is the project's own
measurement of the unmodified official ``oti_inversion.py`` (reference section 14), not a number from the paper.
"""
from __future__ import annotations

import pandas as pd

OFFICIAL_H100_IMAGES_PER_S = {"ViT-B-32": 0.46, "ViT-L-14": 0.44}  # reference section 14 (measured, not paper)
GOAL_FACTOR = {"ViT-B-32": 100, "ViT-L-14": 50}  # issue 6: fast OTI on the same GPU


def wide(bench: pd.DataFrame) -> pd.DataFrame:
    """One row per benchmark file, one column per key (values as written)."""
    if bench.empty:
        return pd.DataFrame(columns=["file", "device", "benchmark"])
    out = bench.pivot_table(index="file", columns="key", values="value", aggfunc="first")
    out["device"] = bench.groupby("file")["device"].first()
    return out.reset_index()


def _device_kind(w: pd.DataFrame) -> pd.Series:
    kind = w.get("device.type", w.get("device_type"))
    if kind is None:
        return pd.Series(["cpu"] * len(w), index=w.index)
    return kind.fillna("cpu")


def _cols(w: pd.DataFrame, mapping: dict[str, str]) -> pd.DataFrame:
    present = {k: v for k, v in mapping.items() if k in w.columns}
    return w[list(present)].rename(columns=present).reset_index(drop=True)


def _oti_rows(bench: pd.DataFrame) -> pd.DataFrame:
    w = wide(bench)
    w = w[w.get("benchmark") == "oti"].copy() if "benchmark" in w else w.iloc[:0]
    w["kind"] = _device_kind(w) if len(w) else []
    return w


def oti_table(bench: pd.DataFrame) -> pd.DataFrame:
    """Reference vs fast OTI per run: rates at the official 350 steps, speed-up, and for GPU runs of ViT-B/32 and
    ViT-L/14 the issue's goal (100x / 50x the official loop on an H100)."""
    w = _oti_rows(bench)
    if w.empty:
        return pd.DataFrame()
    t = _cols(w, {"model": "model", "kind": "kind", "device": "device", "steps": "steps run",
                  "reference.batch": "ref batch", "reference.images_per_s_at_350": "ref images/s (350 steps)",
                  "fast.batch": "fast batch", "fast.images_per_s_at_350": "fast images/s (350 steps)",
                  "speedup.fast": "speed-up", "speedup.fast_without_prefix_split": "speed-up without prefix split",
                  "speedup.fast_without_packing": "speed-up without packed rows",
                  "speedup.fast_compiled": "speed-up compiled", "fast.cuda_peak_gib": "fast CUDA peak GiB",
                  "device.load_average_1m_at_start": "load (1 min)", "incomplete": "incomplete run"})
    goal = t["model"].map(lambda m: OFFICIAL_H100_IMAGES_PER_S.get(m, float("nan")) * GOAL_FACTOR.get(m, 0))
    on_gpu = t["kind"] == "cuda"
    if not (on_gpu & goal.notna()).any():  # the goal columns only where a GPU run can be held against them
        return t.drop(columns="kind")
    t["goal images/s (H100)"] = goal.where(on_gpu)
    t["goal met"] = (t["fast images/s (350 steps)"].astype(float) >= goal).where(on_gpu & goal.notna())
    return t.drop(columns="kind")


def oti_exactness_table(bench: pd.DataFrame) -> pd.DataFrame:
    """How far the fast path's EMA tokens are from the reference path's, beside how far the reference path moves
    when its initial tokens change by one float32 ulp (the size of differences rounding alone causes)."""
    w = _oti_rows(bench)
    if w.empty:
        return pd.DataFrame()
    nf = "noise_floor.reference_vs_"
    return _cols(w, {"model": "model", "device": "device", "steps": "steps run",
                     "exactness.images_compared": "images", "exactness.max_abs_token_diff": "max |diff|",
                     "exactness.max_rel_token_diff": "max |diff| / max |token|",
                     "exactness.min_token_cosine": "min cosine",
                     f"{nf}fast.images_compared": "images (nudge)",
                     f"{nf}fast.median_image_max_abs_token_diff": "median image max |diff|, fast",
                     f"{nf}nudged_reference.median_image_max_abs_token_diff":
                         "median image max |diff|, nudged reference",
                     f"{nf}fast.max_abs_token_diff": "max |diff|, fast",
                     f"{nf}nudged_reference.max_abs_token_diff": "max |diff|, nudged reference",
                     "exactness_fp32.steps": "fp32 check steps",
                     "exactness_fp32.max_abs_token_diff": "max |diff|, fp32 check"})


def _sub_runs(bench: pd.DataFrame, benchmark: str, prefix: str) -> pd.DataFrame:
    """One row per entry of a file's ``prefix`` record (``runs.0.gallery``, ``eager.128.ms_per_step``, ...) in the
    files of ``benchmark``, with the file's model; empty when there is none."""
    w = wide(bench)
    files = (w[w["benchmark"] == benchmark] if "benchmark" in w else w.iloc[:0]).reindex(columns=["file", "model"])
    rows = bench[bench["file"].isin(files["file"]) & bench["key"].str.startswith(prefix + ".")].copy()
    if rows.empty:
        return pd.DataFrame()
    parts = rows["key"].str.split(".", n=2, expand=True)
    rows["run"], rows["field"] = parts[1], parts[2]
    t = rows.pivot_table(index=["file", "device", "run"], columns="field", values="value", aggfunc="first")
    return t.reset_index().merge(files, on="file")


def oti_steps_table(bench: pd.DataFrame) -> pd.DataFrame:
    """The fast path's steps alone (``benchmarks/oti_profile.py``): ms per step for each batch size with packed
    rows and without, the speed-up of packing at the same batch (same run), and the operators a step launches
    (profiled at the file's smallest batch: on a GPU each is a kernel launch the host pays for; only from
    profiles that count the batch's set-up apart, ``setup_ops``: earlier files charged it to the steps)."""
    t = _sub_runs(bench, "oti_profile", "eager")
    if t.empty:
        return t
    t["packed"] = ~t["run"].str.endswith("_unpacked")  # oti_profile's keys: "<batch>" and "<batch>_unpacked"
    unpacked = t[~t["packed"]].set_index(["file", "batch"])["ms_per_step"]
    t["speed-up of packing"] = [round(unpacked.get((f, b), float("nan")) / ms, 2) if p else float("nan")
                                for f, b, ms, p in zip(t["file"], t["batch"], t["ms_per_step"], t["packed"])]
    w = wide(bench).set_index("file")

    def ops_of(f: str, packed: bool):  # only profiles that left the batch's set-up out (and counted it apart)
        key = "profile" + ("" if packed else "_unpacked")
        if pd.isna(w.get(f"{key}.setup_ops", pd.Series(dtype=float)).get(f)):
            return float("nan")
        return w.get(f"{key}.ops_per_step", pd.Series(dtype=float)).get(f)
    ops = {(f, p): ops_of(f, p) for f, p in zip(t["file"], t["packed"])}
    profiled = {f: w.get("profile.batch", pd.Series(dtype=float)).get(f) for f in t["file"]}
    t["ops per step"] = [ops[f, p] if profiled[f] == b else float("nan")
                         for f, p, b in zip(t["file"], t["packed"], t["batch"])]
    return _cols(t.sort_values(["file", "batch", "packed"], ascending=[True, True, False]), {
        "model": "model", "device": "device", "batch": "batch", "packed": "packed rows",
        "ms_per_step": "ms per step", "images_per_s_at_350_steps_only": "images/s at 350 steps (steps only)",
        "speed-up of packing": "speed-up of packing", "ops per step": "operators per step"})


HOST_PARTS = {"per-batch set-up": "per-batch set-up s",
              "waiting for the worker processes to start": "waiting for the workers to start s",
              "tokenize: wait or tokenize here": "tokenizing or waiting for it s"}


def oti_host_table(bench: pd.DataFrame) -> pd.DataFrame:
    """The host's share of a whole fast OTI run (``benchmarks/oti_host.py``: the text tower replaced by a
    stand-in): seconds in all, what the host alone takes, the rate that bounds a whole run on that host, and the
    main parts (inclusive: set-up includes the tokenizing it waits for)."""
    w = wide(bench)
    w = w[w.get("benchmark") == "oti-host"] if "benchmark" in w else w.iloc[:0]
    return _cols(w, {"model": "model", "device": "device", "images": "images", "batch": "batch",
                     "tokenizer_workers": "tokenizer workers", "seconds": "run s (stand-in tower)",
                     "stand_in_steps_seconds": "stand-in steps s", "host_seconds": "host s",
                     "host_bound_images_per_s": "host-bound images/s",
                     **{f"parts_inclusive.{k}.seconds": v for k, v in HOST_PARTS.items()},
                     "git_commit": "commit"})


def phi_table(bench: pd.DataFrame) -> pd.DataFrame:
    """phi training per run: the steps' own rates, the fast path's one-off encoding of the plain phrases, and the
    estimated hours of the official 100 epochs (files from before ``plain_encode`` lack those columns)."""
    w = wide(bench)
    w = w[w.get("benchmark") == "phi"] if "benchmark" in w else w.iloc[:0]
    return _cols(w, {"model": "model", "device": "device", "batch": "batch", "precision": "precision",
                     "steps_per_epoch": "steps run", "phrases_per_concept": "phrases per concept",
                     "without_gpt.steps_per_s": "steps/s without GPT loss",
                     "with_gpt.steps_per_s_without_plain_encode": "steps/s with GPT loss",
                     "with_gpt.plain_encode.rows_per_s": "plain phrases encoded/s (once per run)",
                     "with_gpt_reference.steps_per_s": "steps/s with GPT loss, reference path",
                     "without_gpt.official_epochs_hours": "hours for 100 epochs without GPT loss",
                     "with_gpt.official_epochs_hours": "hours for 100 epochs with GPT loss",
                     "with_gpt_reference.official_epochs_hours": "hours for 100 epochs, reference path",
                     "gpt_speedup": "GPT loss: fast / reference"})


def features_table(bench: pd.DataFrame) -> pd.DataFrame:
    w = wide(bench)
    w = w[w.get("benchmark") == "features"] if "benchmark" in w else w.iloc[:0]
    rates = {c: c.replace("workers_", "images/s, ").replace(".images_per_s", " workers")
             for c in w.columns if c.startswith("workers_") and c.endswith(".images_per_s")}
    return _cols(w, {"model": "model", "device": "device", "batch": "batch", "images": "images", **rates})


def _retrieval_runs(bench: pd.DataFrame) -> pd.DataFrame:
    """One row per (retrieval file, gallery size), with the file's kind of random features (``data``)."""
    t = _sub_runs(bench, "retrieval", "runs")
    if t.empty:
        return t
    w = wide(bench).set_index("file")
    t["data"] = t["file"].map(w["data"]).fillna("uniform") if "data" in w else "uniform"
    return t


def retrieval_table(bench: pd.DataFrame) -> pd.DataFrame:
    """Exact top-K per gallery size (and the FAISS index's size and build time); one row per (file, size)."""
    t = _retrieval_runs(bench)
    if t.empty:
        return t
    return _cols(t.sort_values(["file", "gallery"]), {
        "device": "device", "data": "features", "gallery": "gallery", "queries": "queries", "k": "k",
        "exact_queries_per_s": "exact queries/s", "search_extra_peak_mb": "extra peak MiB",
        "cuda_peak_mb": "CUDA peak MiB", "faiss.kind": "FAISS index", "faiss.nlist": "FAISS cells",
        "faiss.build_seconds": "FAISS build s"})


def faiss_sweep_table(bench: pd.DataFrame) -> pd.DataFrame:
    """FAISS recall against the exact ranking and its queries/s, one row per (file, gallery size, nprobe): the
    recall/speed curve of one index searched at several ``nprobe`` (``benchmarks/retrieval.py``)."""
    t = _retrieval_runs(bench)
    if t.empty:
        return t
    sweep = sorted({int(c.split(".")[2]) for c in t.columns if c.startswith("faiss.sweep.")})
    rows = []
    for _, r in t.sort_values(["file", "gallery"]).iterrows():
        for i in sweep:
            p, k = f"faiss.sweep.{i}.", int(r["k"])
            if pd.isna(r.get(f"{p}recall_at_{k}_vs_exact")):  # a shorter sweep, or no index for this size
                continue
            rows.append({"device": r["device"], "features": r["data"], "gallery": int(r["gallery"]),
                         "cells": r.get("faiss.nlist"), "nprobe": r.get(p + "nprobe"),
                         "k": k, "queries/s": float(r[p + "queries_per_s"]),
                         "recall vs exact": float(r[f"{p}recall_at_{k}_vs_exact"]),
                         "exact queries/s": float(r["exact_queries_per_s"])})
    return pd.DataFrame(rows)


def tables(bench: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {"oti": oti_table(bench), "oti_exactness": oti_exactness_table(bench), "oti_steps": oti_steps_table(bench),
            "oti_host": oti_host_table(bench), "phi": phi_table(bench), "features": features_table(bench),
            "retrieval": retrieval_table(bench), "faiss": faiss_sweep_table(bench)}


def speedup_bars(oti: pd.DataFrame) -> pd.DataFrame:
    """Data for a bar chart of the OTI speed-up per model and device (fast over reference, same run)."""
    if oti.empty:
        return pd.DataFrame(columns=["run", "speed-up", "device"])
    return pd.DataFrame({"run": oti["model"], "speed-up": oti["speed-up"].astype(float), "device": oti["device"]})


def gpu_status(oti: pd.DataFrame) -> str:
    """One sentence on whether GPU figures exist and, if so, whether the issue's goal was met."""
    gpu = oti[oti["goal images/s (H100)"].notna()] if "goal images/s (H100)" in oti else oti.iloc[:0]
    if gpu.empty:
        return ("No GPU figures: none was measured for this book. The goal of issue 6 (fast OTI at >= 46 images/s "
                "for ViT-B/32 and >= 22 images/s for ViT-L/14 on an H100) is therefore unverified; "
                "`bash benchmarks/gpu.sh` measures it in about ten minutes on one H100.")
    parts = [f"{r['model']} on {r['device']}: {float(r['fast images/s (350 steps)']):.1f} images/s, goal "
             f"{r['goal images/s (H100)']:.0f} ({'met' if r['goal met'] else 'not met'})" for _, r in gpu.iterrows()]
    return "GPU figures: " + "; ".join(parts) + "."


GPU_SH_PARTS = ("oti", "phi", "features", "retrieval")  # what ``ONLY=...`` of benchmarks/gpu.sh selects


def gpu_coverage(bench: pd.DataFrame) -> str:
    """One sentence on which benchmarks have GPU figures and which only CPU ones, with the command that fills in
    the missing ones."""
    w = wide(bench)
    if w.empty or "benchmark" not in w:
        return "No benchmark files."
    on_gpu = (_device_kind(w) == "cuda").groupby(w["benchmark"]).any()
    missing = sorted(on_gpu.index[~on_gpu])
    if not missing:
        return "Every benchmark has GPU figures."
    has = ", ".join(sorted(on_gpu.index[on_gpu])) or "no benchmark"
    only = " ".join(m for m in missing if m in GPU_SH_PARTS)
    how = f' (`ONLY="{only}" bash benchmarks/gpu.sh` measures them on one GPU)' if only else ""
    return f"GPU figures exist for {has}; only CPU figures for {', '.join(missing)}{how}."
