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
# # Open question: how many unlabeled images does phi need?
#
# ## Overview
#
# SEARLE trains phi on the 100k ImageNet test images, "3% of Pic2Word's data" (the poster). How do the numbers
# grow with the size of that set? phi is trained here on the first n unlabeled images (by name) for growing n,
# always against the same OTI tokens, and tested on the same queries. SEARLE-OTI, which needs no training set, is
# drawn as the line phi tries to reach.

# %% tags=["parameters"]
preset = "embedded"
seed = 42
out_dir = "results"
metric = "map_at_10"

# %%
import pandas as pd

from searle_lib import pipeline, plots, reports, studies
from searle_lib.config import load_config
from searle_lib.provenance import save_run

cfg = pipeline.prepare(load_config(preset, {"run.seed": seed, "run.out_dir": out_dir}))
n_all = len(pipeline.unlabeled_images(cfg))
sizes = sorted({max(8, n_all // 2 ** k) for k in range(6)})
rows = studies.pretraining_size(cfg, sizes)
bb = pipeline.backbone(cfg)
oti = pipeline.evaluate(cfg, bb, pipeline.split(cfg), ["searle-oti"], progress=False)["searle-oti"].metrics
rows = pd.concat([rows, pd.DataFrame([{"n_images": n, "method": "searle-oti", "metric": k, "value": v}
                                      for n in rows["n_images"].unique() for k, v in oti.items()])])
rows[rows["method"] == "searle"].pivot_table(index="n_images", columns="metric", values="value")[
    reports.HEADLINE["embedded"]].round(2)

# %%
shown = rows[rows["metric"] == metric].copy()
shown["method"] = shown["method"].map(reports.METHOD_LABELS)
fig = plots.line_curves(shown, x="n_images", y="value", hue="method", logx=True, xlabel="unlabeled images phi sees",
                        ylabel=plots.metric_label(metric) + " (%)", title="SEARLE vs the size of phi's training set")

# %%
save_run(cfg, "pretraining_size", {f"searle_n{int(r.n_images)}": {metric: r.value} for r in
                                   rows[(rows["metric"] == metric) & (rows["method"] == "searle")].itertuples()},
         figures={"size_curve": fig}, tables={"all_metrics": rows})
