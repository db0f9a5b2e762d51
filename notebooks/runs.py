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
# # Runs and provenance
#
# ## Overview
#
# Every run behind this book, one row each, read from the `provenance.json` files in the results folder:
# preset, seed, backbone and weights, dataset root and its listing hash, git commit (and whether the
# checkout had uncommitted changes), package versions, device and wall time. Jupyter Book does not execute the
# notebooks here (papermill did, through `scripts/run_notebooks.py`), so this page takes the place of an
# execution table. The environment that ran this page closes it.

# %% tags=["parameters"]
preset = "embedded"
seed = 42
out_dir = "results"

# %%
import pandas as pd

from searle_lib import plots
from searle_lib.config import load_config
from searle_lib.provenance import collect_runs, environment, save_run

cfg = load_config(preset, {"run.seed": seed, "run.out_dir": out_dir})
runs = collect_runs(out_dir)
runs = runs[runs["slug"] != "runs"]  # this page's own run is described by the environment below
runs.drop(columns=["path", "hostname"])

# %% [markdown]
# ## Wall time of each run
#
# From the kernel's start to the run's `save_run`, so imports and data loading are included.

# %%
fig = plots.bar_panels(runs.assign(seconds=runs["duration_s"]), x="slug", y="seconds", panel="preset",
                       ylabel="seconds", title="Wall time per run")

# %% [markdown]
# ## The environment that ran this page

# %%
pd.json_normalize(environment(cfg.run.device)).T.rename(columns={0: "value"})

# %%
save_run(cfg, "runs", {"runs": len(runs)}, figures={"durations": fig})
