"""phi training throughput (``searle_lib.phi.train_phi``): optimisation steps/s at batch 256 from precomputed
random features, with and without the GPT-phrase loss, same run; the GPT loss both on the default fast path and
on the per-step reference path (``train_phi(fast=False)``, the implementation before the fast one), so
``gpt_speedup`` compares them in the same run.

Random image features and OTI targets (the cost does not depend on their values), a random-init backbone for the
GPT loss (phrases with " $ " go through its text tower with phi's output injected), offline-grammar phrases,
each image ranked against ``--concepts`` concepts (the official loss draws from each image's top 150). Every run
trains ``--epochs`` epochs of ``--steps`` steps. Prints one JSON object and writes
``results/benchmarks/phi-<model>-<device>.json``.

The fast path encodes each plain phrase once per run, together with its concept's whole phrase list
(``FeatureCache``): a one-off cost that grows with the concepts a run touches, not with its steps. A short
benchmark touches far more concepts per step than a real run (100 epochs over 100k images touch each of at most
20,931 Open Images concepts once), so that encoding is timed apart (``plain_encode``) and the official-run
estimate adds it once, for every concept (``--official-concepts``, an upper bound), to the steps' own rate.

    python benchmarks/phi.py --model test-tiny-vit --steps 20
    python benchmarks/phi.py --model ViT-B-32 --device cuda --steps 100 --epochs 2
"""
from __future__ import annotations

import argparse
import sys

import torch

from _common import Timer, add_out_args, base_record, emit, peak_rss_mib, plain_encoding
from oti import synthetic_inputs

from searle_lib.backbones import create_backbone
from searle_lib.config import ModelConfig, PhiConfig
from searle_lib.phi import train_phi


OFFICIAL_STEPS = 100 * 390  # 100 epochs x 390 steps (100k ImageNet images, batch 256)
OFFICIAL_PHRASES = 256  # GPT phrases per concept (num_return_sequences, reference section 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="test-tiny-vit")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20, help="steps per epoch")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--concepts", type=int, default=200)
    ap.add_argument("--phrases", type=int, default=256)
    ap.add_argument("--official-concepts", type=int, default=20931,
                    help="concepts whose phrases an official run encodes once (the Open Images list; an upper bound)")
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
        with Timer(args.device) as t, plain_encoding(args.device) as enc:
            train_phi(b, feats, targets, concepts, phrases, cfg, progress=False, fast=fast)
        steps = args.steps * args.epochs
        rate = steps / (t.seconds - enc["seconds"])  # the steps' own rate, without the one-off encoding
        runs[name] = {"lambda_gpt": lam, "path": "fast" if fast else "reference", "steps": steps,
                      "seconds": round(t.seconds, 3),
                      "steps_per_s": round(steps / t.seconds, 3),
                      "images_per_s": round(steps * args.batch / t.seconds, 1)}
        hours = OFFICIAL_STEPS / rate / 3600
        if enc["rows"]:
            encode_rate = enc["rows"] / enc["seconds"]
            runs[name].update(plain_encode={"rows": enc["rows"], "seconds": round(enc["seconds"], 3),
                                            "rows_per_s": round(encode_rate, 1)},
                              steps_per_s_without_plain_encode=round(rate, 3))
            hours += args.official_concepts * OFFICIAL_PHRASES / encode_rate / 3600
        runs[name]["official_epochs_hours"] = round(hours, 2)
        if cuda:
            runs[name]["cuda_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        print(f"{name}: {runs[name]['steps_per_s']} steps/s", file=sys.stderr)
    record = base_record("phi", args.device, model=args.model, weights="random init", batch=args.batch,
                         precision="fp16 autocast" if cuda else "fp32", epochs=args.epochs,
                         steps_per_epoch=args.steps, concepts=args.concepts, phrases_per_concept=args.phrases,
                         official_concepts=args.official_concepts, **runs,
                         gpt_loss_cost=round(runs["with_gpt"]["official_epochs_hours"] /
                                             runs["without_gpt"]["official_epochs_hours"], 2),
                         **({"gpt_speedup": round(runs["with_gpt_reference"]["official_epochs_hours"] /
                                                  runs["with_gpt"]["official_epochs_hours"], 2)}
                            if args.reference else {}),
                         peak_rss_mib=peak_rss_mib(),
                         note="official_epochs_hours: 100 epochs x 390 steps (100k ImageNet images, batch 256) at "
                              "the steps' own rate, plus, for the fast path, encoding the 256 phrases of each of "
                              "official_concepts concepts once at plain_encode's rows/s; without validation. "
                              "with_gpt: the default fast GPT-loss path; with_gpt_reference: the per-step path it "
                              "replaced (same draws, same numbers to rounding; it encodes the drawn phrases every "
                              "epoch, within its steps); gpt_speedup and gpt_loss_cost: ratios of those hours, "
                              "same run")
    emit(record, f"phi-{args.model}", args.device, args)


if __name__ == "__main__":
    main()
