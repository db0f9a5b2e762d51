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
# # CIRCO
#
# ## Overview
#
# CIRCO (Baldrati et al., ICCV 2023): COCO 2017 images, several ground truths per query, a gallery of the
# 123k COCO unlabeled images. Metric: mAP@K. The test split is scored by the evaluation server: this chapter
# writes the submission file.
#
# With a paper preset (`paper-vitb32`, `paper-vitl14`), a data root in the official layout and (optionally) a
# released phi checkpoint, this notebook runs the real evaluation (a GPU is advised). Without them it runs nothing,
# shows **the paper's** table, and says exactly what to provide.

# %% tags=["parameters"]
preset = "embedded"
seed = 42
out_dir = "results"
data_root = None  # the CIRCO folder in the official layout
split = "test"
phi_checkpoint = None  # e.g. SEARLE_ViT-B32.pt (GitHub release "weights"); None: train phi with the preset

# %%
from searle_lib import paper, reports
from searle_lib.config import load_config
from searle_lib.provenance import save_run

cfg = load_config(preset, {"run.seed": seed, "run.out_dir": out_dir, "data.dataset": "circo",
                           "data.root": data_root, "eval.split": split})
run = reports.run_official_benchmark(cfg, phi_checkpoint)
print(run.message)

# %% [markdown]
# ## Our numbers
#
# Empty unless the evaluation ran (test splits without public ground truth give submission files, no metrics).

# %%
reports.metrics_table(run.metrics, reports.HEADLINE["circo"]) if run.metrics else "not run here"

# %% [markdown]
# ## The paper's numbers (paper)

# %%
paper.paper_table("circo", labels=True).style.format("{:.2f}", na_rep="–").set_caption(
    "paper: " + paper.TABLE_TITLES["circo"])

# %%
save_run(cfg, "circo", run.metrics, extra={"ran": run.ran, "message": run.message, "eval_folder": run.folder})
