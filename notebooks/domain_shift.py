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
# # Open question: domain shift
#
# ## Overview
#
# phi is distilled from the OTI tokens of one unlabeled image set (ImageNet in the paper) and then applied to
# benchmarks of other domains (fashion, everyday scenes). How much does that cost? Here phi is trained on the
# unlabeled images of each visual domain of the embedded world in turn and tested on every domain's test queries;
# SEARLE-OTI, which inverts each test reference directly (no training set at all), is the in-domain reference,
# and the baselines are shown for scale. The tiny CLIP itself saw every domain in pretraining.

# %% tags=["parameters"]
preset = "embedded"
seed = 42
out_dir = "results"
metric = "map_at_10"

# %%
from searle_lib import pipeline, plots, reports, studies
from searle_lib.config import load_config
from searle_lib.provenance import save_run

cfg = pipeline.prepare(load_config(preset, {"run.seed": seed, "run.out_dir": out_dir}))
rows = studies.domain_shift(cfg)
table = rows[rows["metric"] == metric].pivot_table(index=["method", "train_domain"], columns="test_domain",
                                                   values="value")
table.round(2)

# %%
shown = rows[rows["metric"] == metric].copy()
shown["name"] = shown["method"].map(reports.METHOD_LABELS) + shown["train_domain"].map(
    lambda d: "" if d == "-" else f" (phi: {d})")
shown["panel"] = "test: " + shown["test_domain"]
fig = plots.bar_panels(shown, x="name", y="value", panel="panel", color_by="method",
                       ylabel=plots.metric_label(metric) + " (%)", title="phi trained on one domain, tested on each")

# %%
searle = rows[(rows["method"] == "searle") & (rows["metric"] == metric)]
in_domain = searle[searle["train_domain"] == searle["test_domain"]]["value"].mean()
cross = searle[searle["train_domain"] != searle["test_domain"]]["value"].mean()
save_run(cfg, "domain_shift", {f"searle_in_domain_{metric}": in_domain, f"searle_cross_domain_{metric}": cross},
         figures={"domain_shift": fig}, tables={"all_metrics": rows})
