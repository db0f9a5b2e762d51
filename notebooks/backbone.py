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
# # Open question: the CLIP backbone
#
# ## Overview
#
# The paper runs SEARLE on ViT-B/32 and (as SEARLE-XL) on ViT-L/14 with the same hyperparameters. How much of the
# result is the backbone's? In the embedded preset, two tiny architectures (a ViT and a ResNet image tower with
# the same text tower) are each pretrained on the world and run through the whole pipeline. With a paper preset,
# `backbones` lists open_clip architectures and pretrained weights are needed (ViT-B/32 vs ViT-L/14, or any
# open_clip model).

# %% tags=["parameters"]
preset = "embedded"
seed = 42
out_dir = "results"
backbones = ["test-world-vit", "test-world-rn"]
metric = "map_at_10"

# %%
from searle_lib import plots, reports, studies
from searle_lib.config import load_config
from searle_lib.provenance import save_run

cfg = load_config(preset, {"run.seed": seed, "run.out_dir": out_dir})
rows = studies.backbones(cfg, backbones)
rows.pivot_table(index=["backbone", "method"], columns="metric", values="value")[
    reports.HEADLINE["embedded"]].round(2)

# %%
shown = rows[rows["metric"] == metric].copy()
shown["name"] = shown["method"].map(reports.METHOD_LABELS)
fig = plots.bar_panels(shown, x="name", y="value", panel="backbone", color_by="method",
                       ylabel=plots.metric_label(metric) + " (%)", title="Backbones")

# %%
save_run(cfg, "backbone", {f"{r.backbone}|{r.method}": {metric: r.value} for r in
                           rows[rows["metric"] == metric].itertuples()},
         figures={"backbones": fig}, tables={"all_metrics": rows})
