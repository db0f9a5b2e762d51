import sys, time, json, torch
from searle_lib import pipeline, reports
from searle_lib.config import load_config, apply_overrides
ov = json.loads(sys.argv[1]); tag = sys.argv[2]; variants = json.loads(sys.argv[3])
base = {"world.root": f"/tmp/e/{tag}/world", "run.out_dir": f"/tmp/e/{tag}/res", "run.cache_dir": f"/tmp/e/{tag}/cache",
        "pretrain.out_dir": f"/tmp/e/ckpt"}
cfg = pipeline.prepare(load_config("embedded", {**base, **ov}), progress=False)
bb = pipeline.backbone(cfg)
sp = pipeline.split(cfg, "test")
res = pipeline.evaluate(cfg, bb, sp, ["image", "image+text"], progress=False)
rows = {k: r.metrics for k, r in res.items()}
for name, v in variants.items():
    t = time.time()
    c = apply_overrides(cfg, v)
    r = pipeline.evaluate(c, bb, sp, ["searle-oti"], progress=False)["searle-oti"]
    rows["oti " + name] = r.metrics
    print(name, round(time.time() - t), {g: round(x["map_at_10"], 1) for g, x in r.groups.items()}, flush=True)
print(reports.metrics_table(rows, reports.HEADLINE["embedded"]).round(2).to_string())
