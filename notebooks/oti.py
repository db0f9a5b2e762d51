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
# # Optimization-based textual inversion (OTI)
#
# ## Overview
#
# OTI finds, for one image, the pseudo-word whose text features match the image (section 3.1): a free vector v in
# the token-embedding space is optimised with AdamW (lr 2e-2, weight decay 0.01) so that
#
# $$\mathcal{L} = \frac{\lambda_{cos}\,\mathcal{L}_{cos} + \lambda_{gpt}\,\mathcal{L}_{gpt}}{\lambda_{cos} +
# \lambda_{gpt}},\qquad \mathcal{L}_{cos} = 1 - \cos\big(E_T(\text{template}(v)),\, E_I(I)\big)$$
#
# with a template drawn each step and the GPT regulariser of the phrases chapter; the exponential moving average
# of v (decay 0.99) is the result. The tokens of the unlabeled set are phi's distillation targets; the tokens of a
# benchmark's reference images give the SEARLE-OTI method.
#
# Two implementations share every random draw (each image has its own random stream): `reference`, which costs
# what the official loop costs (strings tokenized every step, 77-token sequences, plain-phrase features recomputed
# every step), and `fast`, which cuts each batch at its longest prompt and encodes each phrase once. This chapter
# checks that they agree image by image, then inverts the unlabeled set with the fast path.

# %% tags=["parameters"]
preset = "embedded"
seed = 42
out_dir = "results"
n_check = 16  # images inverted by both paths for the equality check

# %%
import dataclasses
import time

import pandas as pd
import torch

from searle_lib import pipeline, plots
from searle_lib.config import load_config
from searle_lib.oti import run_oti
from searle_lib.provenance import save_run
from searle_lib.retrieval import topk_cosine
from searle_lib.text_encoding import encode_tokens

cfg = pipeline.prepare(load_config(preset, {"run.seed": seed, "run.out_dir": out_dir}))
bb = pipeline.backbone(cfg)
images = pipeline.unlabeled_images(cfg)
print(f"{len(images)} unlabeled images; OTI: {cfg.oti.steps} steps (official 350), batch {cfg.oti.batch_size}")

# %% [markdown]
# ## Reference and fast paths agree
#
# Both paths invert the same images with the same per-image random streams; the table gives the largest
# difference between their EMA tokens and the time each took (the performance chapter measures speed properly).

# %%
check = images.subset(list(images.ids[:n_check]))
feats = pipeline.features(cfg, bb, check, skip_bad=True)
bank = pipeline.phrases(cfg)
ranked = pipeline.image_concepts(cfg, bb, check, feats)
_, templates = pipeline.vocabulary(cfg)
runs = {}
for mode, batch in (("reference", 32), ("fast", cfg.oti.batch_size)):
    t = time.time()
    res = run_oti(bb, feats.ids, feats.features, ranked, bank, templates,
                  dataclasses.replace(cfg.oti, mode=mode, batch_size=batch), seed=cfg.run.seed, progress=False)
    runs[mode] = (res, time.time() - t)
diff = (runs["reference"][0].ema_tokens - runs["fast"][0].ema_tokens).abs().max().item()
pd.DataFrame({"seconds": {m: round(t, 2) for m, (_, t) in runs.items()},
              "max |token difference| vs reference": {m: (r.ema_tokens - runs["reference"][0].ema_tokens)
                                                      .abs().max().item() for m, (r, _) in runs.items()}})

# %% [markdown]
# ## The unlabeled set
#
# Final per-image loss, and a sanity check of what the tokens hold: each image's EMA token written into
# "a photo of $" should retrieve that very image among all unlabeled images.

# %%
t = time.time()
oti = pipeline.oti(cfg, bb, images)
oti_seconds = time.time() - t
all_feats = pipeline.features(cfg, bb, images, skip_bad=True, progress=False)
gallery = torch.nn.functional.normalize(all_feats.select(oti.ids), dim=-1)
prompt = bb.tokenize(["a photo of $"])
with torch.no_grad():
    queries = torch.cat([encode_tokens(bb, prompt.expand(len(chunk), -1), chunk)
                         for chunk in oti.ema_tokens.split(512)])
_, top = topk_cosine(torch.nn.functional.normalize(queries, dim=-1), gallery, 10)
own = torch.arange(len(oti.ids)).unsqueeze(1)
self_retrieval = {f"self_recall_at_{k}": 100 * (top[:, :k] == own).any(1).float().mean().item() for k in (1, 5, 10)}
loss_fig = plots.histograms(pd.DataFrame({"loss": oti.loss.tolist(), "set": "unlabeled"}), x="loss", hue="set",
                            xlabel="final OTI loss per image", title="OTI: last-step loss")
pd.Series({"images": len(oti.ids), "seconds (0 when cached)": round(oti_seconds, 1),
           "mean final loss": oti.loss.mean().item(), **self_retrieval}).to_frame("value")

# %%
save_run(cfg, "oti", {"fast_vs_reference_max_abs_diff": diff, "mean_final_loss": oti.loss.mean().item(),
                      **self_retrieval}, figures={"loss": loss_fig},
         extra={"n_images": len(oti.ids), "check_seconds": {m: t for m, (_, t) in runs.items()}})
