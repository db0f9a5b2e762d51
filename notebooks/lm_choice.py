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
# # Open question: which language model writes the regularisation phrases?
#
# ## Overview
#
# SEARLE's GPT regulariser needs phrases about each concept; the paper uses GPT-Neo 2.7B. Does the choice matter,
# and does the regulariser help at all? Each condition below changes only `phrases.*` and reruns OTI (on the
# unlabeled set and the test references) and phi: no regularisation (the GPT loss off, as the λ_gpt = 0
# ablation), the offline grammar writing everyday-scene continuations ("... that was taken at sunset", words the
# tiny CLIP never saw), the same grammar in the world's own language ("... that has a small blue square"), and a
# small GPT-2 trained here on the world's captions, run through the same Hugging Face generation code and official
# sampling settings as GPT-Neo. GPT-Neo itself joins the table when its weights are on the machine. The contrast
# between the two grammars asks whether the phrases must speak the language the CLIP was trained on. By default
# only SEARLE-OTI is measured (OTI of the test references under each condition): training phi under each
# condition reruns OTI on the whole unlabeled set, minutes per condition on two cores (parameter `methods`).

# %% tags=["parameters"]
preset = "embedded"
seed = 42
out_dir = "results"
metric = "map_at_10"
methods = ["searle-oti"]  # add "searle" to train phi under every condition too (OTI of the whole unlabeled set each)

# %%
import pandas as pd

from searle_lib import pipeline, plots, reports, studies
from searle_lib.config import load_config
from searle_lib.provenance import save_run

cfg = pipeline.prepare(load_config(preset, {"run.seed": seed, "run.out_dir": out_dir}))
conditions = studies.lm_conditions(cfg)
pd.Series({k: ("runs" if not isinstance(v, str) else v) for k, v in conditions.items()}).to_frame("condition")

# %%
rows = studies.lm_choice(cfg, conditions, methods=methods)
rows.pivot_table(index=["condition", "method"], columns="metric", values="value")[
    reports.HEADLINE["embedded"]].round(2)

# %%
shown = rows[rows["metric"] == metric].copy()
shown["panel"] = shown["method"].map(reports.METHOD_LABELS)
fig = plots.bar_panels(shown, x="condition", y="value", panel="panel", color_by="condition",
                       ylabel=plots.metric_label(metric) + " (%)", title="Regularisation phrases: which LM?")

# %%
save_run(cfg, "lm_choice", {f"{r.condition}|{r.method}": {r.metric: r.value} for r in
                            rows[rows["metric"] == metric].itertuples()},
         figures={"lm_choice": fig}, tables={"all_metrics": rows},
         extra={"not_run": {k: v for k, v in conditions.items() if isinstance(v, str)}})
