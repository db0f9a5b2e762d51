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
# # FashionIQ
#
# ## Overview
#
# FashionIQ (Wu et al., CVPR 2021): fashion images in three categories (dress, shirt, toptee), two relative
# captions per query, one target. SEARLE reports Recall@10 and Recall@50 on the validation split (the test split's
# ground truth is not public), each category ranked against its own gallery, with both caption orders averaged
# (`eval.fashioniq_composition`; the protocol audit chapter measures the variants).
#
# With a paper preset (`paper-vitb32`, `paper-vitl14`), a data root in the official layout and (optionally) a
# released phi checkpoint, this notebook runs the real evaluation (a GPU is advised). Without them it runs nothing,
# shows **the paper's** table, and says exactly what to provide.

# %% tags=["parameters"]
preset = "embedded"
seed = 42
out_dir = "results"
data_root = None  # the FashionIQ folder in the official layout
split = "val"
phi_checkpoint = None  # e.g. SEARLE_ViT-B32.pt (GitHub release "weights"); None: train phi with the preset

# %%
from searle_lib import paper, reports
from searle_lib.config import load_config
from searle_lib.provenance import save_run

cfg = load_config(preset, {"run.seed": seed, "run.out_dir": out_dir, "data.dataset": "fashioniq",
                           "data.root": data_root, "eval.split": split})
run = reports.run_official_benchmark(cfg, phi_checkpoint)
print(run.message)

# %% [markdown]
# ## Our numbers
#
# Empty unless the evaluation ran (test splits without public ground truth give submission files, no metrics).

# %%
reports.metrics_table(run.metrics, reports.HEADLINE["fashioniq"]) if run.metrics else "not run here"

# %% [markdown]
# ## The paper's numbers (paper)

# %%
paper.paper_table("fashioniq", labels=True).style.format("{:.2f}", na_rep="–").set_caption(
    "paper: " + paper.TABLE_TITLES["fashioniq"])

# %%
save_run(cfg, "fashioniq", run.metrics, extra={"ran": run.ran, "message": run.message, "eval_folder": run.folder})
