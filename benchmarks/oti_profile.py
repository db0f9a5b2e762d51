"""Where the fast OTI path spends its time: run-wide set-up, per-batch set-up and the steps, with a kernel profile.

``benchmarks/oti.py`` times whole runs; this script splits one batch into its phases (synchronising CUDA around
each), so the figures say what to make faster:

- run-wide, once per run: tokenizing the drawn phrases (with the template and phrase caches cold) and the plain
  phrases' concept lists, and encoding those lists (a later batch encodes only concepts new to the run);
- per batch, caches warm: plans, phrase rows, the phrase table;
- per step: ``invert_batch`` with the caches warm, at several batch sizes, with packed rows (the default) and
  with ``--unpacked`` also without (every step's rows at the step's longest prompt), eager and optionally
  ``torch.compile``;
- a ``torch.profiler`` table of a few steps (less the batch's set-up, profiled on its own): the kernels that
  take the GPU's time, host time against device time (a step whose host time exceeds its device time is
  launch-bound) and operators launched per step.

    python benchmarks/oti_profile.py --model test-tiny-vit --batches 64 128 --steps 5
    python benchmarks/oti_profile.py --model ViT-B-32 --device cuda --batches 1024 2048 4096 --steps 30
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace

import torch

from _common import Timer, add_out_args, base_record, emit, peak_rss_mib
from oti import load_templates, synthetic_inputs

from searle_lib.backbones import create_backbone
from searle_lib.config import ModelConfig, OTIConfig
from searle_lib.oti import (FastContext, _phrase_lists, _phrase_rows, invert_batch, plan_image, phrase_pool,
                            replace_concept)


def step_time(b, feats, plans, templates, cfg, ctx, device: str, steps: int) -> dict:
    """Seconds of ``invert_batch`` at 0 steps (per-batch set-up, caches warm) and at ``steps``; ms per step."""
    invert_batch(b, feats, plans, templates, replace(cfg, steps=3), fast_context=ctx)  # warm
    with Timer(device) as t0:
        invert_batch(b, feats, plans, templates, replace(cfg, steps=0), fast_context=ctx)
    with Timer(device) as t:
        invert_batch(b, feats, plans, templates, replace(cfg, steps=steps), fast_context=ctx)
    ms = 1000 * (t.seconds - t0.seconds) / steps
    return {"batch": len(plans), "batch_setup_s": round(t0.seconds, 3), "ms_per_step": round(ms, 2),
            "images_per_s_at_350_steps_only": round(len(plans) / (0.350 * ms), 2),
            "images_per_s_at_350_with_batch_setup": round(len(plans) / (t0.seconds + 0.350 * ms), 2)}


def _profiled(run, n: int, acts, cuda: bool) -> dict[str, tuple[int, float, float]]:
    """Per operator of ``run(n)``: calls, self host microseconds, self device microseconds."""
    from torch.profiler import profile
    with profile(activities=acts) as prof:
        run(n)
        if cuda:
            torch.cuda.synchronize()
    return {e.key: (e.count, e.self_cpu_time_total, getattr(e, "self_device_time_total", 0))
            for e in prof.key_averages()}


def _aten_calls(ops: dict) -> int:
    return round(sum(v[0] for k, v in ops.items() if k.startswith("aten::")))


def kernel_profile(b, feats, plans, templates, cfg, ctx, device: str, steps: int, rows: int = 15) -> dict:
    """The operators of ``steps`` steps alone: a profile of ``invert_batch`` at ``steps`` less one at 0 steps.

    The 0-step run is the batch's set-up (on a GPU mostly small host-to-device copies: every step's packing is
    built before the loop, for all its planned steps), which a few profiled steps must not be charged with.
    """
    from torch.profiler import ProfilerActivity
    cuda = device.startswith("cuda")
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    run = lambda n: invert_batch(b, feats, plans, templates, replace(cfg, steps=n),  # noqa
                                 fast_context=ctx)
    run(0)
    setup = _profiled(run, 0, acts, cuda)
    both = _profiled(run, steps, acts, cuda)
    per_step = {k: [(x - y) / steps for x, y in zip(v, setup.get(k, (0, 0, 0)))] for k, v in both.items()}
    by = 2 if cuda else 1
    top = sorted(per_step.items(), key=lambda kv: kv[1][by], reverse=True)[:rows]
    for name, (calls, host, dev) in top:
        print(f"{name[:70]:70s} {calls:9.1f} calls {host / 1000:9.3f} host ms {dev / 1000:9.3f} device ms "
              "per step", file=sys.stderr)
    return {"steps": steps,
            "host_ms_per_step": round(sum(v[1] for v in per_step.values()) / 1000, 2),
            "device_ms_per_step": round(sum(v[2] for v in per_step.values()) / 1000, 2),
            "ops_per_step": _aten_calls(per_step), "setup_ops": _aten_calls(setup),
            "top": [{"name": k[:90], "ms_per_step": round(v[by] / 1000, 3), "calls_per_step": round(v[0], 1)}
                    for k, v in top]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="test-tiny-vit")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batches", type=int, nargs="+", default=[64])
    ap.add_argument("--steps", type=int, default=20, help="timed steps per batch size")
    ap.add_argument("--unpacked", action="store_true",
                    help="also time and profile the steps without packed rows (run_oti's pack_rows=False)")
    ap.add_argument("--profile-steps", type=int, default=3)
    ap.add_argument("--plan-steps", type=int, default=350,
                    help="steps each image's plan draws phrases for (the per-batch set-up encodes them all); "
                         "fewer makes a CPU run affordable but understates the set-up")
    ap.add_argument("--concepts", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=None, help="tokenizer processes (default 8 on CUDA, 0 on CPU)")
    ap.add_argument("--compile", nargs="*", default=[], help="torch.compile modes to time too ('default', ...)")
    ap.add_argument("--threads", type=int, default=0)
    add_out_args(ap)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    b = create_backbone(ModelConfig(name=args.model, pretrained=None), args.device)
    templates, template_kind = load_templates(None)
    n = max(args.batches)
    ids, feats, ranked, phrases = synthetic_inputs(n, b.feature_dim, args.concepts)
    cfg = OTIConfig(batch_size=n, mode="fast", steps=max(args.plan_steps, args.steps, 3))
    workers = args.workers if args.workers is not None else (8 if cuda else 0)
    ctx = FastContext(b, templates, tokenizer_workers=workers)
    phases = {}
    with Timer(args.device) as t:
        plans = [plan_image(i, 42, b.token_dim, len(templates), phrase_pool(ranked[i][:15], phrases), cfg)
                 for i in ids]
    phases["plans_s"] = t.seconds
    with Timer(args.device) as t:
        keys, _ = _phrase_rows(plans)
    phases["phrase_rows_s"] = t.seconds
    lists = _phrase_lists(plans)  # plain phrases are encoded with their concept's whole list
    texts = [replace_concept(p, c) for p, c in keys] + ctx.plain.unencoded(lists)
    with Timer(args.device) as t:
        ctx.tokens.ensure(texts)
    phases.update(tokenize_s=t.seconds, strings_tokenized=len(texts), tokenizer_workers=workers)
    with Timer(args.device) as t:
        ctx.table(ctx.tokens.stack(texts[:len(keys)]))
    phases["phrase_table_s"] = t.seconds
    with Timer(args.device) as t, torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=cuda):
        ctx.plain.get(keys, lists)
    phases["plain_features_s"] = t.seconds
    phases = {k: round(v, 3) if isinstance(v, float) else v for k, v in phases.items()}
    print(phases, file=sys.stderr)

    eager, profiles = {}, {}
    for packed in [True, False] if args.unpacked else [True]:
        ctx.pack_rows = packed
        suffix = "" if packed else "_unpacked"
        for bs in args.batches:
            eager[f"{bs}{suffix}"] = {"packed": packed, **step_time(b, feats[:bs], plans[:bs], templates, cfg, ctx,
                                                                    args.device, args.steps)}
            print(f"{bs}{suffix}", eager[f"{bs}{suffix}"], file=sys.stderr)
        bs0 = min(args.batches)
        profiles["profile" + suffix] = kernel_profile(b, feats[:bs0], plans[:bs0], templates, cfg, ctx, args.device,
                                                      args.profile_steps)
    ctx.pack_rows = True
    compiled = {}
    for mode in args.compile:
        cctx = FastContext(b, templates, compile=True if mode == "default" else mode, tokenizer_workers=0)
        cctx.tokens, cctx.plain.tokens = ctx.tokens, ctx.tokens
        bs = max(args.batches)
        try:
            with Timer(args.device) as tc:
                invert_batch(b, feats[:bs], plans[:bs], templates, replace(cfg, steps=20),
                             fast_context=cctx)
            compiled[mode] = {"first_20_steps_s": round(tc.seconds, 1),
                              **step_time(b, feats[:bs], plans[:bs], templates, cfg, cctx, args.device, args.steps)}
        except Exception as e:  # a compile failure is a finding, not a crash of the whole profile
            compiled[mode] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        print(mode, compiled[mode], file=sys.stderr)
    ctx.close()
    record = base_record("oti_profile", args.device, model=args.model, weights="random init",
                         templates=template_kind, concepts=args.concepts, plan_steps=cfg.steps, phases=phases,
                         eager=eager, compiled=compiled,
                         **{k: {"batch": min(args.batches), **v} for k, v in profiles.items()},
                         peak_rss_mib=peak_rss_mib())
    if cuda:
        record["cuda_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    emit(record, f"oti-profile-{args.model}", args.device, args)


if __name__ == "__main__":
    main()
