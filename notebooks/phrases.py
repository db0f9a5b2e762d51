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
# # GPT-powered regularisation phrases
#
# ## Overview
#
# SEARLE regularises the pseudo-word with phrases a language model writes around concept words (section 3.1 of
# the paper; official `gpt_phrases_generation.py`): for each concept c, GPT-Neo 2.7B completes "a photo of c that"
# 256 times (temperature 0.5, 35 tokens, no repeated bigrams). In the GPT loss, c is replaced by the pseudo-word
# and the two phrases' text features are pulled together, which keeps the pseudo-word in the region of the token
# space where real words live. Concepts whose phrases do not all contain the concept string are dropped
# (the official filter).
#
# The embedded preset writes its phrases with the built-in offline grammar (no language model can be downloaded
# here); the *language model choice* chapter compares it with no regularisation and with a small Hugging Face
# causal LM trained on the world's captions, through the same generation code GPT-Neo uses.

# %% tags=["parameters"]
preset = "embedded"
seed = 42
out_dir = "results"

# %%
import pandas as pd

from searle_lib import pipeline, plots
from searle_lib.config import load_config
from searle_lib.provenance import save_run

cfg = load_config(preset, {"run.seed": seed, "run.out_dir": out_dir})
concepts, templates = pipeline.vocabulary(cfg)
bank = pipeline.phrases(cfg)
summary = pd.Series({"generator": cfg.phrases.generator, "concepts": len(concepts),
                     "usable concepts (official filter)": len(bank or {}),
                     "dropped concepts": len(concepts) - len(bank or {}),
                     "phrases per concept": cfg.phrases.num_phrases}).to_frame("value")
summary

# %% [markdown]
# ## Examples
#
# Three phrases of a few concepts, with the concept replaced by the pseudo-word as OTI does it (first
# occurrence) and as phi's loss does it (every occurrence).

# %%
from searle_lib.oti import replace_concept  # noqa: E402

examples = pd.DataFrame([{"concept": c, "phrase": p, "OTI": replace_concept(p, c), "phi": replace_concept(p, c, "all")}
                         for c in list(bank)[:: max(1, len(bank) // 5)][:5] for p in bank[c][:3]])
examples

# %% [markdown]
# ## How long the phrases are
#
# Token counts under the CLIP tokenizer decide how much of the text encoder each GPT-loss step runs; the fast OTI
# path cuts every batch at its longest prompt.

# %%
bb = pipeline.backbone(pipeline.prepare(cfg))
from searle_lib.text_encoding import sequence_lengths  # noqa: E402

all_phrases = [p for c in bank for p in bank[c]]
lengths = pd.DataFrame({"tokens": sequence_lengths(bb.tokenize(all_phrases)).tolist(),
                        "generator": cfg.phrases.generator})
length_fig = plots.histograms(lengths, x="tokens", hue="generator", bins=20, xlabel="CLIP tokens per phrase",
                              title="Phrase lengths")
lengths["tokens"].describe().to_frame("CLIP tokens")

# %%
save_run(cfg, "phrases", {"concepts": len(concepts), "usable_concepts": len(bank or {}),
                          "mean_tokens": float(lengths["tokens"].mean())},
         figures={"lengths": length_fig}, tables={"examples": examples})
