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
# # Reproducibility status
#
# ## Overview
#
# Every number the SEARLE paper reports, beside the number we measured for the same benchmark, split, method,
# backbone and metric, or "not run here" with what such a run needs. Our numbers are read from the
# `metrics.json` files that the benchmark chapters write under the results folder; nothing on this page is typed
# by hand. The paper's numbers come from `searle_lib/paper.py` (see the chapter on the paper's numbers for their
# sources).
#
# The paper's benchmarks need data and weights that this machine cannot download (FashionIQ, CIRR, CIRCO,
# OpenAI CLIP), and two of them (CIRR test, CIRCO test) are scored only by their evaluation servers. Runs made
# elsewhere with the `paper-vitb32` or `paper-vitl14` preset land in the same results folder and appear here.

# %% tags=["parameters"]
preset = "embedded"
seed = 42
out_dir = "results"

# %%
from searle_lib import paper, plots
from searle_lib.config import load_config
from searle_lib.provenance import collect_metrics, save_run

cfg = load_config(preset, {"run.seed": seed, "run.out_dir": out_dir})
ours = collect_metrics(out_dir)
side = paper.side_by_side(ours)
summary = paper.status_summary(side)
paper.status_matrix(summary)

# %% [markdown]
# Why a paper number has no counterpart here: what a run needs, or that the method is not implemented
# (first row of each kind).

# %%
side.loc[side["needs"] != "", ["dataset", "name", "needs"]].drop_duplicates(["dataset", "needs"]).set_index(
    ["dataset", "name"])

# %% [markdown]
# ## How much of the paper is covered
#
# The share of the paper's numbers, per benchmark, that a run of ours sits beside.

# %%
coverage = summary.groupby("dataset", sort=False)[["paper_numbers", "measured"]].sum().reset_index()
coverage["measured_pct"] = 100 * coverage["measured"] / coverage["paper_numbers"]
coverage["benchmark"] = coverage["dataset"].map(paper.TABLE_TITLES).str.split(" (", regex=False).str[0]
fig = plots.bar_panels(coverage, x="benchmark", y="measured_pct", ylabel="% of the paper's numbers measured here",
                       title="Paper numbers with a measured counterpart")
coverage

# %% [markdown]
# ## Paper against ours, number by number
#
# Only the rows with a measured counterpart (empty while none has been run).

# %%
side.loc[side["status"] == "measured", ["dataset", "name", "metric", "paper", "ours", "diff", "run"]]

# %% [markdown]
# ## Our runs without a paper counterpart
#
# Retrieval metrics on benchmarks the paper does not have (the embedded world of this study), per preset, run
# and method.

# %%
ours[~ours["dataset"].isin(list(paper.TABLES)) & ours["metric"].str.match(paper.METRIC_PATTERN)][
    ["preset", "slug", "dataset", "split", "method", "metric", "value"]]

# %%
save_run(cfg, "status", {"paper_numbers": int(summary["paper_numbers"].sum()),
                         "measured": int(summary["measured"].sum())},
         figures={"coverage": fig})
