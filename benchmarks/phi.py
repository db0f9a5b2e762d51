"""phi training throughput (``searle_lib.phi.train_phi``): optimisation steps/s at batch 256 from precomputed
random features, with and without the GPT-phrase loss, same run; the GPT loss both on the default fast path and
on the per-step reference path (``train_phi(fast=False)``, the implementation before the fast one), so
``gpt_speedup`` compares them in the same run.

Random image features and OTI targets (the cost does not depend on their values), a random-init backbone for the
GPT loss (phrases with " $ " go through its text tower with phi's output injected), offline-grammar phrases,
each image ranked against ``--concepts`` concepts (the official loss draws from each image's top 150). Every run
trains ``--epochs`` epochs of ``--steps`` steps; the first epoch also encodes the drawn plain phrases. Prints one
JSON object and writes ``results/benchmarks/phi-<model>-<device>.json``.

    python benchmarks/phi.py --model test-tiny-vit --steps 20
    python benchmarks/phi.py --model ViT-B-32 --device cuda --steps 100 --epochs 2
"""
from __future__ import annotations

import argparse
import sys

import torch

from _common import Timer, add_out_args, base_record, emit, peak_rss_mib
from oti import synthetic_inputs

from searle_lib.backbones import create_backbone
from searle_lib.config import ModelConfig, PhiConfig
from searle_lib.phi import train_phi


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="test-tiny-vit")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20, help="steps per epoch")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--concepts", type=int, default=200)
    ap.add_argument("--phrases", type=int, default=256)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--reference", type=int, default=1, help="also time the reference GPT-loss path (0: skip)")
    add_out_args(ap)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    b = create_backbone(ModelConfig(name=args.model, pretrained=None), args.device)
    n = args.batch * args.steps
    ids, feats, ranked, phrases = synthetic_inputs(n, b.feature_dim, args.concepts, args.phrases,
                                                   per_image=150)
    targets = torch.randn(n, b.token_dim, generator=torch.Generator().manual_seed(1)) * 0.02
    concepts = [ranked[i] for i in ids]
    cuda = args.device.startswith("cuda")
    runs = {}
    variants = [("without_gpt", 0.0, True), ("with_gpt", 0.75, True)]
    if args.reference:
        variants.append(("with_gpt_reference", 0.75, False))
    for name, lam, fast in variants:
        cfg = PhiConfig(batch_size=args.batch, epochs=args.epochs, lambda_gpt=lam, validate_every=0)
        train_phi(b, feats[:args.batch], targets[:args.batch], concepts[:args.batch], phrases,
                  PhiConfig(batch_size=args.batch, epochs=1, lambda_gpt=lam, validate_every=0), progress=False,
                  fast=fast)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        with Timer(args.device) as t:
            train_phi(b, feats, targets, concepts, phrases, cfg, progress=False, fast=fast)
        steps = args.steps * args.epochs
        runs[name] = {"lambda_gpt": lam, "path": "fast" if fast else "reference", "steps": steps,
                      "seconds": round(t.seconds, 3),
                      "steps_per_s": round(steps / t.seconds, 3),
                      "images_per_s": round(steps * args.batch / t.seconds, 1),
                      "official_epochs_hours": round(100 * 390 / (steps / t.seconds) / 3600, 2)}
        if cuda:
            runs[name]["cuda_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        print(f"{name}: {runs[name]['steps_per_s']} steps/s", file=sys.stderr)
    record = base_record("phi", args.device, model=args.model, weights="random init", batch=args.batch,
                         precision="fp16 autocast" if cuda else "fp32", epochs=args.epochs,
                         steps_per_epoch=args.steps, concepts=args.concepts, phrases_per_concept=args.phrases,
                         **runs, gpt_loss_cost=round(runs["without_gpt"]["steps_per_s"] /
                                                     runs["with_gpt"]["steps_per_s"], 2),
                         **({"gpt_speedup": round(runs["with_gpt"]["steps_per_s"] /
                                                  runs["with_gpt_reference"]["steps_per_s"], 2)}
                            if args.reference else {}),
                         peak_rss_mib=peak_rss_mib(),
                         note="official_epochs_hours: 100 epochs x 390 steps (100k ImageNet images, batch 256) at "
                              "this rate, without validation. with_gpt: the default fast GPT-loss path; "
                              "with_gpt_reference: the per-step path it replaced (same draws, same numbers to "
                              "rounding); gpt_speedup: with_gpt / with_gpt_reference steps/s, same run")
    emit(record, f"phi-{args.model}", args.device, args)


if __name__ == "__main__":
    main()
