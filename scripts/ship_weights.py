#!/usr/bin/env python
"""Write the embedded preset's tiny-CLIP weights to ``weights/`` (see ``searle_lib/weights.py``).

Trains each CLIP (or reuses the local cache in data/checkpoints) and stores its compact copy and training record.
Run it after changing the world, a tiny-CLIP config or the pretraining config, and commit ``weights/``:

    python scripts/ship_weights.py                       # the embedded preset's two backbones
    python scripts/ship_weights.py --retrain             # train from scratch even when a checkpoint is cached
"""
from __future__ import annotations

import argparse

from searle_lib.config import apply_overrides, load_config
from searle_lib.pretrain import pretrain_clip
from searle_lib.weights import SHIPPED_MODELS, WEIGHTS_DIR, ship


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="embedded")
    p.add_argument("--models", nargs="+", default=list(SHIPPED_MODELS))
    p.add_argument("--retrain", action="store_true", help="train from scratch even when a checkpoint is cached")
    args = p.parse_args()
    for name in args.models:
        cfg = apply_overrides(load_config(args.preset), {"model.name": name, "pretrain.shipped": False})
        ckpt = pretrain_clip(cfg, force=args.retrain, log=print)
        for old in WEIGHTS_DIR.glob(f"{name}-*"):
            if not old.name.startswith(ckpt.stem):
                old.unlink()
                print(f"removed the stale {old}")
        print(f"wrote {ship(cfg, ckpt)}")


if __name__ == "__main__":
    main()
