"""OTI throughput: the official-cost ``reference`` loop vs our ``fast`` path, same run, same machine.

Random-init weights (they cost the same as trained ones), synthetic image features, the 24 PALAVRA templates when
``--templates`` is given (else 24 generated ones of similar length), and offline-grammar phrases over 15 concepts
per image. Prints one JSON object: images/s of each path, the speed-up, and the largest difference between the two
paths' EMA tokens on the images both inverted (per-image random streams make that comparison exact).

    python benchmarks/oti.py --model test-tiny-vit --steps 20 --ref-images 32 --fast-images 256 --fast-batch 256
    python benchmarks/oti.py --model ViT-B-32 --device cuda --steps 350 --ref-images 32 --fast-images 4096 \
        --fast-batch 1024
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from searle_lib.backbones import create_backbone
from searle_lib.config import ModelConfig, OTIConfig
from searle_lib.oti import run_oti
from searle_lib.phrases import offline_phrases


def synthetic_inputs(n: int, dim: int, n_concepts: int = 60, n_phrases: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    words = ["red", "blue", "small", "large", "wooden", "shiny", "old", "striped", "green", "round"]
    nouns = ["chair", "car", "dog", "lamp", "boat", "tree", "house", "cup", "shoe", "clock"]
    concepts = [f"{words[i % 10]} {nouns[(i // 10) % 10]}" for i in range(n_concepts)]
    phrases = {c: offline_phrases(c, n_phrases, seed=seed) for c in concepts}
    ids = [f"img{i:07d}" for i in range(n)]
    ranked = {i: [concepts[int(j)] for j in torch.randperm(n_concepts, generator=g)[:15]] for i in ids}
    return ids, torch.randn(n, dim, generator=g), ranked, phrases


def timed(backbone, ids, feats, ranked, phrases, templates, cfg):
    if backbone.device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    res = run_oti(backbone, ids, feats, ranked, phrases, templates, cfg, progress=False)
    if backbone.device.type == "cuda":
        torch.cuda.synchronize()
    return res, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="test-tiny-vit")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=350)
    ap.add_argument("--ref-images", type=int, default=32)
    ap.add_argument("--ref-batch", type=int, default=32)
    ap.add_argument("--fast-images", type=int, default=256)
    ap.add_argument("--fast-batch", type=int, default=256)
    ap.add_argument("--templates", default=None, help="PALAVRA template file (one per line)")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    b = create_backbone(ModelConfig(name=args.model, pretrained=None), args.device)
    if args.templates:
        templates = [t for t in open(args.templates).read().splitlines() if t.strip()]
    else:
        templates = [f"{p} {{}}{s}" for p in ("This is a photo of a", "A sketch of a", "We see a", "")
                     for s in ("", " in this image", " photo", " illustration", " image", " here")]
    n = max(args.ref_images, args.fast_images)
    ids, feats, ranked, phrases = synthetic_inputs(n, b.feature_dim)
    ref_cfg = OTIConfig(steps=args.steps, batch_size=args.ref_batch, mode="reference")
    fast_cfg = OTIConfig(steps=args.steps, batch_size=args.fast_batch, mode="fast")
    # warm-up (CUDA context, kernels) on a few images, not timed
    run_oti(b, ids[:2], feats[:2], ranked, phrases, templates, OTIConfig(steps=2, mode="fast"), progress=False)
    ref, t_ref = timed(b, ids[:args.ref_images], feats[:args.ref_images], ranked, phrases, templates, ref_cfg)
    fast, t_fast = timed(b, ids[:args.fast_images], feats[:args.fast_images], ranked, phrases, templates, fast_cfg)
    m = min(args.ref_images, args.fast_images)
    diff = (ref.ema_tokens[:m] - fast.ema_tokens[:m]).abs().max().item()
    rel = diff / ref.ema_tokens[:m].abs().max().item()
    out = {
        "benchmark": "oti", "model": args.model, "weights": "random init", "device": str(b.device),
        "device_name": torch.cuda.get_device_name(b.device) if b.device.type == "cuda" else platform.processor()
        or platform.machine(), "threads": torch.get_num_threads(), "steps": args.steps,
        "reference": {"images": args.ref_images, "batch": args.ref_batch, "seconds": round(t_ref, 3),
                      "images_per_s": round(args.ref_images / t_ref, 4)},
        "fast": {"images": args.fast_images, "batch": args.fast_batch, "seconds": round(t_fast, 3),
                 "images_per_s": round(args.fast_images / t_fast, 4)},
        "speedup": round((args.fast_images / t_fast) / (args.ref_images / t_ref), 2),
        "max_abs_token_diff": diff, "max_rel_token_diff": rel, "torch": torch.__version__,
    }
    if b.device.type == "cuda":
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(b.device) / 2**30, 2)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
