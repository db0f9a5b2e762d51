"""The host's share of a whole fast OTI run: everything but the text tower, timed part by part.

On a GPU the fast path's steps are kernels the host only launches; what the host itself computes (tokenizing the
drawn phrases, the per-batch plans, phrase rows, token tables and packed step rows) either overlaps the GPU's
work or adds to it. This script runs ``run_oti`` for real with the text tower replaced by a stand-in (a fixed
function of the pseudo-token, so the loss, backward and optimiser still run), so its time is the host's alone:
``images / host_seconds`` (the run less the stand-in's steps) bounds a whole run's rate from above on this host,
whatever the GPU. Conservative: with the stand-in the next batch's phrases are tokenized in the worker processes
while this batch's steps take almost no time, so waiting for them counts here; on a GPU the steps hide it. The
parts are timed inclusively (a part's time includes the parts it calls; ``TokenCache.ensure`` includes waiting for
the worker processes) and counted per call.

    python benchmarks/oti_host.py --model ViT-B-32 --images 2048 --batch 1024 --workers 2
    python benchmarks/oti_host.py --model ViT-L-14 --images 4096 --batch 2048 --workers 8   # a GPU host
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import time
from collections import defaultdict
from unittest import mock

import torch

from _common import Timer, add_out_args, base_record, emit, peak_rss_mib
from oti import load_templates, synthetic_inputs

import searle_lib._oti_fast as fast_module
import searle_lib.oti as oti_module
from searle_lib.backbones import create_backbone
from searle_lib.config import ModelConfig, OTIConfig

# (owner, attribute, label): the host work of a fast run, timed inclusively
PARTS = [
    (oti_module, "invert_batch", "invert_batch: set-up and steps"),
    (oti_module, "prepare_fast_batch", "per-batch set-up"),
    (oti_module, "plan_image", "plans"),
    (oti_module, "_phrase_rows", "phrase rows"),
    (fast_module.TokenCache, "prefetch", "tokenize: queue the next batch's phrases"),
    (fast_module.TokenCache, "ensure", "tokenize: wait or tokenize here"),
    (fast_module.TokenCache, "stack", "token stack, with ensure"),
    (fast_module.TokenCache, "_ready_pool", "waiting for the worker processes to start"),
    (fast_module.TokenTable, "__init__", "token tables"),
    (fast_module.StepRows, "__init__", "step rows (packing)"),
    (fast_module.FeatureCache, "get", "plain-phrase lookup, with its token table"),
]


def stand_in_tower(feature_dim: int):
    """``FastTextTower.__call__`` / ``encode_all`` replacements: the pseudo-token itself (cut or zero-padded to the
    feature width) as the feature, so the loss, backward and optimiser still run at almost no cost."""
    def call(self, table, rows, length, pseudo_tokens=None, pack=None):
        if pseudo_tokens is None:
            return torch.ones(len(rows), feature_dim, device=rows.device)
        pad = max(0, feature_dim - pseudo_tokens.shape[-1])
        return torch.nn.functional.pad(pseudo_tokens.float(), (0, pad))[:, :feature_dim]

    def encode_all(self, table, batch_size=1024):
        return torch.ones(len(table), feature_dim, device=table.tokens.device)
    return call, encode_all


@contextlib.contextmanager
def timed_parts(parts=PARTS):
    """Patch each part to add its wall time and calls to the yielded dict."""
    totals: dict[str, list] = defaultdict(lambda: [0.0, 0])
    patches = []
    for owner, attr, label in parts:
        original = getattr(owner, attr)

        def wrapper(*a, _f=original, _label=label, **kw):
            t = time.perf_counter()
            try:
                return _f(*a, **kw)
            finally:
                totals[_label][0] += time.perf_counter() - t
                totals[_label][1] += 1
        patches.append(mock.patch.object(owner, attr, functools.wraps(original)(wrapper)))
    with contextlib.ExitStack() as stack:
        for p in patches:
            stack.enter_context(p)
        yield totals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-32", help="sets the tokenizer, token width and context length")
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=350)
    ap.add_argument("--workers", type=int, default=2, help="tokenizer processes (run_oti uses up to 8 on CUDA)")
    ap.add_argument("--concepts", type=int, default=2000)
    ap.add_argument("--phrases", type=int, default=256)
    ap.add_argument("--templates", default=None)
    ap.add_argument("--device", default="cpu", help="where the tables go (the stand-in tower runs there too)")
    ap.add_argument("--threads", type=int, default=0)
    add_out_args(ap)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    b = create_backbone(ModelConfig(name=args.model, pretrained=None), args.device)
    templates, template_kind = load_templates(args.templates)
    ids, feats, ranked, phrases = synthetic_inputs(args.images, b.feature_dim, args.concepts, args.phrases)
    cfg = OTIConfig(steps=args.steps, batch_size=args.batch, mode="fast")
    call, encode_all = stand_in_tower(b.feature_dim)
    with mock.patch.object(fast_module.FastTextTower, "__call__", call), \
            mock.patch.object(fast_module.FastTextTower, "encode_all", encode_all):
        with timed_parts() as parts, Timer(args.device) as t:
            oti_module.run_oti(b, ids, feats, ranked, phrases, templates, cfg, progress=False,
                               tokenizer_workers=args.workers)
    # the stand-in's steps (loss, backward, optimiser) are device work on a GPU, not host work
    steps = parts["invert_batch: set-up and steps"][0] - parts["per-batch set-up"][0]
    record = base_record(
        "oti-host", args.device, model=args.model, weights="random init (only its tokenizer and shapes are used)",
        tower="stand-in (the pseudo-token as its feature): host work only", images=args.images,
        batch=args.batch, steps=args.steps, tokenizer_workers=args.workers, templates=template_kind,
        concepts=args.concepts, phrases_per_concept=args.phrases, seconds=round(t.seconds, 2),
        stand_in_steps_seconds=round(steps, 2), host_seconds=round(t.seconds - steps, 2),
        host_bound_images_per_s=round(args.images / (t.seconds - steps), 1),
        parts_inclusive={k: {"seconds": round(s, 3), "calls": n} for k, (s, n) in parts.items()},
        peak_rss_mib=peak_rss_mib())
    emit(record, f"oti-host-{args.model}", args.device, args)


if __name__ == "__main__":
    main()
