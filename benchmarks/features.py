"""Image feature extraction throughput (``searle_lib.features.extract_features``): images/s with 0 and 2 (or
``--workers``) data-loader processes, same run, on synthetic JPEG files written to a temporary folder.

The images are random-noise JPEGs of ImageNet's typical size (500 x 375, quality 90), so decoding and the
``targetpad`` preprocessing cost what they cost on real photographs; the model has random weights (same cost as
trained ones). No feature cache is used (every run encodes). Prints one JSON object and writes
``results/benchmarks/features-<model>-<device>.json``.

    python benchmarks/features.py --model test-tiny-vit --images 256
    python benchmarks/features.py --model ViT-L-14 --device cuda --images 4096 --batch 256 --workers 0 8
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from _common import Timer, add_out_args, base_record, emit, peak_rss_mib

from searle_lib.backbones import create_backbone
from searle_lib.config import ModelConfig
from searle_lib.datasets.base import ImageSet
from searle_lib.features import extract_features


def write_images(folder: Path, n: int, size: tuple[int, int] = (500, 375), distinct: int = 32) -> ImageSet:
    """``n`` JPEG files (``distinct`` different noise images, copied), as an ``ImageSet``."""
    rng = np.random.default_rng(0)
    blobs = []
    for k in range(min(n, distinct)):
        path = folder / f"src{k}.jpg"
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=90)
        blobs.append(path.read_bytes())
    paths = []
    for i in range(n):
        p = folder / f"img{i:06d}.jpg"
        p.write_bytes(blobs[i % len(blobs)])
        paths.append(str(p))
    return ImageSet(tuple(f"img{i:06d}" for i in range(n)), tuple(paths), "synthetic-jpeg")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="test-tiny-vit")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32, help="official: 32")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--threads", type=int, default=0)
    add_out_args(ap)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    b = create_backbone(ModelConfig(name=args.model, pretrained=None), args.device)
    cuda = args.device.startswith("cuda")
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        images = write_images(Path(tmp), args.images)
        extract_features(b, images.subset(list(images.ids[:args.batch])), batch_size=args.batch,
                         progress=False)  # warm-up
        first = None
        for w in args.workers:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            with Timer(args.device) as t:
                fs = extract_features(b, images, batch_size=args.batch, num_workers=w, progress=False)
            if first is None:
                first = fs.features
            runs[f"workers_{w}"] = {"workers": w, "seconds": round(t.seconds, 3),
                                    "images_per_s": round(args.images / t.seconds, 2),
                                    "same_features_as_first": bool(torch.equal(fs.features, first))}
            if cuda:
                runs[f"workers_{w}"]["cuda_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            print(f"workers {w}: {runs[f'workers_{w}']['images_per_s']} images/s", file=sys.stderr)
    record = base_record("features", args.device, model=args.model, weights="random init", images=args.images,
                         image_size="500x375 JPEG", batch=args.batch, preprocess="targetpad", **runs,
                         peak_rss_mib=peak_rss_mib())
    emit(record, f"features-{args.model}", args.device, args)


if __name__ == "__main__":
    main()
