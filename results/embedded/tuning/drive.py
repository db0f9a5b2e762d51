import sys, time, json, torch
from searle_lib import pipeline, reports
from searle_lib.config import load_config
ov = json.loads(sys.argv[1]); tag = sys.argv[2]
base = {"world.root": f"/tmp/e/{tag}/world", "run.out_dir": f"/tmp/e/{tag}/res", "run.cache_dir": f"/tmp/e/{tag}/cache",
        "pretrain.out_dir": f"/tmp/e/ckpt"}
cfg = load_config("embedded", {**base, **ov})
T = {}; t = time.time()
from searle_lib.world.build import build_world
build_world(cfg.world, pipeline.world_root(cfg)); T["world"] = time.time() - t; t = time.time()
cfg = pipeline.prepare(cfg, progress=False); T["pretrain"] = time.time() - t; t = time.time()
bb = pipeline.backbone(cfg)
from searle_lib.world.quality import clip_quality
q = clip_quality(bb, pipeline.world_root(cfg), cfg.world.domains[0], "test", n=300)
print("quality", {k: round(v, 2) for k, v in q.items() if isinstance(v, float)}, flush=True)
sp = pipeline.split(cfg, "test")
run = pipeline.phi(cfg, bb, progress=False); T["oti+phi"] = time.time() - t; t = time.time()
print("phi hist", [round(r.get("val_score", 0), 3) for r in run.history.epochs][::5], flush=True)
res = pipeline.evaluate(cfg, bb, sp, phi_model=run.phi); T["eval"] = time.time() - t
m = {k: r.metrics for k, r in res.items()}
print(reports.metrics_table(m, reports.HEADLINE["embedded"]).round(2).to_string())
print({k: {g: round(v["map_at_10"], 1) for g, v in r.groups.items()} for k, r in res.items()})
print("times", {k: round(v) for k, v in T.items()}, flush=True)
