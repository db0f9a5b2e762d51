# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3.11 (searle-study)
#     language: python
#     name: searle-study
# ---

# %% [markdown]
# # Performance
#
# ## Overview
#
# What SEARLE costs and how fast this study's implementation runs it. The official OTI loop inverts 32 images at
# a time with 350 optimisation steps of the CLIP text encoder each; the ImageNet set that phi is distilled from
# has 100,000 images. The scripts in `benchmarks/` time the official-cost `reference` OTI loop against the `fast`
# path in the same run, phi training, feature extraction and retrieval, and write JSON files under
# `results/benchmarks/`, each naming the device it ran on. This page shows whatever such files exist; figures
# from different machines are never compared with each other.

# %% tags=["parameters"]
preset = "embedded"
seed = 42
out_dir = "results"

# %%
from pathlib import Path

from searle_lib import plots
from searle_lib.config import load_config
from searle_lib.provenance import collect_benchmarks, save_run

cfg = load_config(preset, {"run.seed": seed, "run.out_dir": out_dir})
bench = collect_benchmarks(Path(out_dir) / "benchmarks")
f"{bench['file'].nunique()} benchmark files under {Path(out_dir) / 'benchmarks'}"

# %% [markdown]
# ## Throughput figures
#
# Every rate (a key ending in `per_s`) found in the benchmark files, one panel per file.

# %%
rates = bench[bench["key"].str.endswith("per_s")].copy()
rates["value"] = rates["value"].astype(float)
fig = plots.bar_panels(rates, x="key", y="value", panel="file", ylabel="per second",
                       title="Throughput") if len(rates) else None
rates if len(rates) else "No benchmark results yet: run the scripts in benchmarks/ (see their --help)."

# %%
save_run(cfg, "performance", {"benchmark_files": int(bench["file"].nunique()), "rates": len(rates)},
         figures={"throughput": fig} if fig is not None else None)
