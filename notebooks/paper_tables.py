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
# # The paper's numbers
#
# ## Overview
#
# These are the results the SEARLE paper reports (Baldrati et al., ICCV 2023) on its three benchmarks:
# FashionIQ (validation split, Recall@10/50 per category and their mean), CIRR (test split, Recall@K and
# Recall$_\text{subset}$@K) and CIRCO (test split, mAP@K). Every number on this page is **the paper's**, not
# ours: they live in `searle_lib/paper.py` and nowhere else, and the *Reproducibility status* chapter sets our
# own runs beside them.
#
# The paper text itself could not be opened for this study. The numbers were copied from two secondary
# sources that reproduce the paper's tables (the `sources` column: `T1` an awesome-list README, `T2` a summary of
# the AutoCIR paper); where both list a number they agree. SEARLE-XL is SEARLE on CLIP ViT-L/14, as is Pic2Word;
# all other rows use ViT-B/32.

# %% tags=["parameters"]
preset = "embedded"
seed = 42
out_dir = "results"

# %%
import pandas as pd

from searle_lib import paper, plots
from searle_lib.config import load_config
from searle_lib.provenance import save_run

cfg = load_config(preset, {"run.seed": seed, "run.out_dir": out_dir})
numbers = paper.paper_results()
pd.Series(paper.SOURCES, name="source").to_frame()

# %% [markdown]
# ## FashionIQ, validation split (paper)
#
# The average columns are the mean of the three categories; R@K is the share of queries whose target is among
# the first K gallery images.

# %%
paper.paper_table("fashioniq", labels=True).style.format("{:.2f}", na_rep="–").set_caption(
    "paper: " + paper.TABLE_TITLES["fashioniq"])

# %% [markdown]
# ## CIRR, test split (paper)
#
# The CIRR protocol removes the reference image from the ranking; Recall$_\text{subset}$@K ranks only the five
# other images of the query's image group. Pic2Word does not report the subset metric.

# %%
paper.paper_table("cirr", labels=True).style.format("{:.2f}", na_rep="–").set_caption(
    "paper: " + paper.TABLE_TITLES["cirr"])

# %% [markdown]
# ## CIRCO, test split (paper)
#
# CIRCO has several correct images per query; mAP@K normalises the average precision by $\min(|GT|, K)$.

# %%
paper.paper_table("circo", labels=True).style.format("{:.2f}", na_rep="–").set_caption(
    "paper: " + paper.TABLE_TITLES["circo"])

# %% [markdown]
# ## The headline metric of each benchmark (paper)
#
# Hatched bars are ViT-L/14 models.

# %%
fig = plots.bar_panels(paper.headline(), x="name", y="value", panel="panel", color_by="method",
                       hatch_by="large_backbone", ylabel="% (paper)", title="SEARLE paper: headline metrics")

# %% [markdown]
# Where the copies of the tables disagree, or a row needs a remark:

# %%
numbers.loc[numbers["note"] != "", ["dataset", "name", "backbone", "note"]].drop_duplicates()

# %%
save_run(cfg, "paper_tables", {"paper_numbers": len(numbers), "paper_rows": len(paper.ROWS)},
         figures={"headline": fig})
