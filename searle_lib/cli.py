"""``searle``: one command per SEARLE stage (official scripts: gpt_phrases_generation, image_concepts_association,
oti_inversion, train_phi, validate / generate_test_submission), driven by a preset plus ``--set key=value``.

    searle config  --preset paper-vitb32 --set oti.steps=100      # print the resolved config
    searle world   --preset embedded                               # build the embedded world + train its tiny CLIP
    searle phrases --preset paper-vitb32
    searle concepts --preset paper-vitb32 --set data.unlabeled_root=/data/ImageNet1K
    searle oti     --preset paper-vitb32 --images cirr:val
    searle train-phi --preset paper-vitb32 --set data.unlabeled_root=/data/ImageNet1K
    searle eval    --preset paper-vitb32 --dataset cirr --root /data/CIRR --split test --method searle --phi phi.pt
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import yaml

from .config import ConfigError, StudyConfig, list_presets, load_config


def _parse_sets(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. oti.steps=100")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def _config(args: argparse.Namespace) -> StudyConfig:
    sets = _parse_sets(args.set)
    if getattr(args, "device", None):
        sets["run.device"] = args.device
    for attr, key in (("dataset", "data.dataset"), ("root", "data.root"), ("split", "eval.split")):
        if getattr(args, attr, None):
            sets[key] = getattr(args, attr)
    if getattr(args, "method", None):
        sets["eval.methods"] = args.method
    return load_config(args.preset, sets)


def _image_set(cfg: StudyConfig, spec: str):
    """``unlabeled`` or ``<dataset>:<split>`` (the split's reference images, deduplicated, as the official code)."""
    from . import pipeline
    if spec == "unlabeled":
        return pipeline.unlabeled_images(cfg)
    dataset, _, split = spec.partition(":")
    from dataclasses import replace
    sp = pipeline.split(replace(cfg, data=replace(cfg.data, dataset=dataset)), split or cfg.eval.split)
    return sp.images.subset(list(dict.fromkeys(q.reference_id for q in sp.queries)))


def cmd_config(args, cfg: StudyConfig) -> None:
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def cmd_world(args, cfg: StudyConfig) -> None:
    from . import pipeline
    cfg = pipeline.prepare(cfg)
    print(json.dumps({"world": str(pipeline.world_root(cfg)), "clip_checkpoint": cfg.model.checkpoint}, indent=1))


def cmd_phrases(args, cfg: StudyConfig) -> None:
    from . import pipeline
    bank = pipeline.phrases(cfg)
    print(json.dumps({"usable_concepts": len(bank) if bank else 0, "generator": cfg.phrases.generator}))


def cmd_concepts(args, cfg: StudyConfig) -> None:
    from . import pipeline
    cfg = pipeline.prepare(cfg)
    bb = pipeline.backbone(cfg)
    images = _image_set(cfg, args.images)
    ranked = pipeline.image_concepts(cfg, bb, images, pipeline.features(cfg, bb, images, skip_bad=True))
    print(json.dumps({"images": len(ranked)}))


def cmd_oti(args, cfg: StudyConfig) -> None:
    from . import pipeline
    from .oti import export_official_oti
    cfg = pipeline.prepare(cfg)
    bb = pipeline.backbone(cfg)
    res = pipeline.oti(cfg, bb, _image_set(cfg, args.images), force_restart=args.force_restart)
    if args.export_official:
        export_official_oti(res, args.export_official)
    print(json.dumps({"images": len(res.ids), "mean_final_loss": float(res.loss.mean())}))


def cmd_train_phi(args, cfg: StudyConfig) -> None:
    from . import pipeline
    from .phi import save_phi
    cfg = pipeline.prepare(cfg)
    bb = pipeline.backbone(cfg)
    val = pipeline.split(cfg, args.val_split) if args.val_split else None
    run = pipeline.phi(cfg, bb, validate_split=val, force_restart=args.force_restart)
    out = save_phi(run.phi, args.out or run.folder / "phi_final.pt")
    print(json.dumps({"checkpoint": str(out), "epochs": len(run.history.epochs),
                      "selected_epoch": run.history.selected_epoch}))


def cmd_eval(args, cfg: StudyConfig) -> None:
    from .evaluate import run_evaluation
    result = run_evaluation(cfg, phi_path=args.phi, out_dir=args.out)
    print(json.dumps(result, indent=1))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="searle", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, fn, help: str) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help)
        s.add_argument("--preset", default="embedded", help=f"one of {', '.join(list_presets())} or a YAML path")
        s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key (repeatable), e.g. --set oti.steps=100")
        s.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: the preset's run.device)")
        s.set_defaults(fn=fn)
        return s

    add("config", cmd_config, "print the resolved configuration")
    add("world", cmd_world, "build the embedded world and train its tiny CLIP")
    add("phrases", cmd_phrases, "generate (or load) the regularisation phrases")
    s = add("concepts", cmd_concepts, "associate each image with its top-k concepts (official CSV)")
    s.add_argument("--images", default="unlabeled", help="'unlabeled' or <dataset>:<split> (reference images)")
    s = add("oti", cmd_oti, "optimisation-based textual inversion")
    s.add_argument("--images", default="unlabeled", help="'unlabeled' or <dataset>:<split> (reference images)")
    s.add_argument("--force-restart", action="store_true", help="discard earlier partial results of this run")
    s.add_argument("--export-official", default=None, help="also write the official .pkl/.pt layout to this folder")
    s = add("train-phi", cmd_train_phi, "distil phi from the OTI tokens of the unlabeled set")
    s.add_argument("--val-split", default=None, help="validate each epoch on this split of data.dataset")
    s.add_argument("--out", default=None, help="where to save the final phi checkpoint")
    s.add_argument("--force-restart", action="store_true", help="discard the checkpoint of an earlier run")
    s = add("eval", cmd_eval, "evaluate methods on a benchmark split; writes metrics (and test submissions)")
    s.add_argument("--dataset", default=None, help="embedded, fashioniq, cirr or circo")
    s.add_argument("--root", default=None, help="dataset root folder")
    s.add_argument("--split", default=None, help="val or test")
    s.add_argument("--method", action="append", default=None, help="repeatable; default: the preset's methods")
    s.add_argument("--phi", default=None, help="phi checkpoint (default: train one with the preset)")
    s.add_argument("--out", default=None, help="output folder (default: results/<preset>/eval-<dataset>-<split>)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import pickle

    from .methods import CaptionTooLongError
    from .phrases import PhrasesError
    from .submissions import SubmissionError
    try:
        cfg = _config(args)
        args.fn(args, cfg)
    except (ConfigError, FileNotFoundError, KeyError, PhrasesError, SubmissionError, CaptionTooLongError,
            pickle.UnpicklingError) as e:
        print(f"searle {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
