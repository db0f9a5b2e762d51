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
# # The embedded world and its tiny CLIP
#
# ## Overview
#
# No CLIP weights and none of the benchmarks can be downloaded on the machines this study runs on, so it brings its
# own small world in which SEARLE can be run end to end on a CPU: procedurally rendered scenes in the spirit of the
# CSS benchmark (Vo et al., CVPR 2019) with one to three objects (a shape, a colour, a size and a cell of a 3x3
# grid each), captions written from each scene, and composed queries whose ground truth is known exactly
# (change an attribute, add an object, remove an object). A tiny open_clip CLIP is trained contrastively on the
# world's (image, caption) pairs; SEARLE then runs on top of it, frozen, exactly as it runs on OpenAI's CLIP.
#
# This chapter builds the world (cached), trains the tiny CLIP (cached), and measures what the CLIP learned:
# image-to-caption retrieval on held-out scenes and zero-shot probes of each attribute. SEARLE can only compose
# what the text encoder can express, so these probes bound everything that follows.

# %% tags=["parameters"]
preset = "embedded"
seed = 42
out_dir = "results"

# %%
import json
import time

import pandas as pd

from searle_lib import pipeline, plots
from searle_lib.config import load_config
from searle_lib.datasets import load_split, load_unlabeled
from searle_lib.datasets.embedded import read_world_manifest
from searle_lib.pretrain import checkpoint_paths
from searle_lib.provenance import save_run
from searle_lib.world.quality import clip_quality

cfg = load_config(preset, {"run.seed": seed, "run.out_dir": out_dir})
t0 = time.time()
cfg = pipeline.prepare(cfg)
print(f"world + tiny CLIP ready in {time.time() - t0:.1f} s (cached steps are reused)")
manifest = read_world_manifest(cfg.world.root)
pd.DataFrame(manifest["counts"]).T

# %% [markdown]
# ## What the world looks like
#
# Unlabeled images of each domain (the ImageNet analogue that OTI and phi train on). The domains share scenes'
# grammar but differ in palette, background and drawing style, which is what the domain-shift chapter uses.

# %%
paths, titles = [], []
for domain in manifest["domains"]:
    images = load_unlabeled("embedded", cfg.world.root, domain=domain)
    paths += list(images.paths[:6])
    titles += [f"{domain}: {i}" for i in images.ids[:6]]
grid = plots.image_grid(paths, titles, title="Unlabeled images, one row per domain")

# %% [markdown]
# A few composed queries of the test split: the reference, the relative caption, and one of the correct images.

# %%
test = load_split("embedded", cfg.world.root, "test")
by_kind = {}
for q in test.queries:
    by_kind.setdefault(q.category, q)
paths, titles = [], []
index = dict(zip(test.gallery.ids, test.gallery.paths))
for kind, q in sorted(by_kind.items()):
    paths += [index[q.reference_id], index[q.target_id]]
    titles += [f"{kind} reference", f"target: {q.captions[0]}"]
queries_fig = plots.image_grid(paths, titles, ncols=6, title="Query kinds: reference and target")

# %% [markdown]
# ## How the tiny CLIP was trained
#
# The curve and times below are those of the training run that wrote the weights. On a fresh machine those are the
# weights shipped in the repository's `weights/` folder: `scripts/ship_weights.py` stored them after training them
# with this preset, and they are used only when this machine renders the same pretraining images and rebuilds the
# trained checkpoint byte for byte (`searle_lib/weights.py`); otherwise, or with `pretrain.shipped=false`, the CLIP
# is trained here (about 8 minutes on 2 cores). The row `weights` says which happened in this run.

# %%
bb = pipeline.backbone(cfg)
record = json.loads(checkpoint_paths(cfg)[1].read_text())
curve = pd.DataFrame({"step": [20 * i for i in range(len(record["loss_curve"]))], "loss": record["loss_curve"],
                      "model": cfg.model.name})
loss_fig = plots.line_curves(curve, x="step", y="loss", hue="model", ylabel="contrastive loss",
                             title="Tiny CLIP pretraining (mean of 20 steps)")
pd.Series({"pairs": record["pairs"], "steps": record["steps"], **{f"seconds_{k}": v for k, v in
                                                                    record["seconds"].items()},
           "weights": record.get("source", "trained on this machine")}).to_frame("value")

# %% [markdown]
# ## What the tiny CLIP learned
#
# Image-to-caption and caption-to-image retrieval among held-out test scenes, and zero-shot attribute probes: for
# each object, is the caption naming its true colour (shape, size, position) ranked above the same caption with
# the attribute changed? Chance levels are given beside each probe.

# %%
quality = {d: clip_quality(bb, cfg.world.root, domain=d) for d in manifest["domains"]}
qtable = pd.DataFrame(quality).T.drop(columns=["domain", "split"])
qtable

# %%
rows = [{"domain": d, "probe": k.removeprefix("probe_"), "accuracy": 100 * v, "chance": 100 * q[f"chance_{k[6:]}"]}
        for d, q in quality.items() for k, v in q.items() if k.startswith("probe_")]
probes = pd.DataFrame(rows)
probe_fig = plots.bar_panels(probes, x="probe", y="accuracy", panel="domain", ylabel="accuracy (%)",
                             title="Zero-shot attribute probes of the tiny CLIP")

# %%
metrics = {d: {k: v for k, v in q.items() if isinstance(v, float)} for d, q in quality.items()}
save_run(cfg, "world", metrics, figures={"unlabeled": grid, "queries": queries_fig, "pretraining": loss_fig,
                                         "probes": probe_fig}, tables={"quality": qtable},
         extra={"manifest_counts": manifest["counts"], "pretraining": {k: record.get(k) for k in
                                                                      ("pairs", "steps", "seconds", "source")}})
