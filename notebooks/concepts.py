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
# # Concept association
#
# ## Overview
#
# Each image is paired with the concepts CLIP finds most similar to it (official
# `image_concepts_association.py`): every concept is written into each prompt template, the prompt features are
# normalised and averaged (prompt ensembling), and an image keeps its top 250 concepts by cosine similarity, in
# the official CSV layout. OTI draws its GPT phrases from an image's first 15 concepts, phi from the first 150.
#
# In the embedded world the vocabulary is the world's own (shapes, colours, sizes, positions and their
# compounds) and so are the templates; because every scene is known exactly, we can also measure how often an
# associated concept is actually true of the image.

# %% tags=["parameters"]
preset = "embedded"
seed = 42
out_dir = "results"
top_k_shown = 5

# %%
import pandas as pd

from searle_lib import pipeline, plots
from searle_lib.config import load_config
from searle_lib.datasets.embedded import load_scenes
from searle_lib.provenance import save_run
from searle_lib.world.concept_truth import concept_holds

cfg = pipeline.prepare(load_config(preset, {"run.seed": seed, "run.out_dir": out_dir}))
bb = pipeline.backbone(cfg)
images = pipeline.unlabeled_images(cfg)
feats = pipeline.features(cfg, bb, images, skip_bad=True)
ranked = pipeline.image_concepts(cfg, bb, images, feats)
concepts, templates = pipeline.vocabulary(cfg)
print(f"{len(ranked)} images x top-{cfg.concepts.top_k} of {len(concepts)} concepts, {len(templates)} templates")

# %% [markdown]
# ## Some images and their first concepts

# %%
ids = list(ranked)[:6]
paths = dict(zip(images.ids, images.paths))
grid = plots.image_grid([paths[i] for i in ids], [", ".join(ranked[i][:3]) for i in ids],
                        title="Top-3 associated concepts")

# %% [markdown]
# ## How often is an associated concept true?
#
# Precision@k: the share of an image's first k concepts that hold for its scene (a concept holds when some object
# matches every attribute it names). OTI uses k = 15, phi k = 150.

# %%
scenes = load_scenes(cfg.world.root)
ks = [1, 5, 15, 50, 150]
rows = []
for k in ks:
    hits = [sum(concept_holds(c, scenes[i]) for c in ranked[i][:k]) / k for i in ranked]
    rows.append({"k": k, "precision": 100 * sum(hits) / len(hits), "curve": "associated"})
base = sum(concept_holds(c, scenes[i]) for i in ranked for c in concepts) / (len(ranked) * len(concepts))
rows += [{"k": k, "precision": 100 * base, "curve": "random concept"} for k in ks]
precision = pd.DataFrame(rows)
precision_fig = plots.line_curves(precision, x="k", y="precision", hue="curve", logx=True,
                                  ylabel="precision@k (%)", title="Associated concepts that hold for the scene")
precision.pivot(index="k", columns="curve", values="precision")

# %%
save_run(cfg, "concepts", {f"precision_at_{r.k}": r.precision for r in precision.itertuples()
                           if r.curve == "associated"} | {"random_concept_precision": 100 * base},
         figures={"examples": grid, "precision": precision_fig})
