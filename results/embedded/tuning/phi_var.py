import sys, time, json, torch
from searle_lib import pipeline, reports
from searle_lib.config import load_config, apply_overrides
ov = json.loads(sys.argv[1]); tag = sys.argv[2]; variants = json.loads(sys.argv[3])
base = {"world.root": f"/tmp/e/{tag}/world", "run.out_dir": f"/tmp/e/{tag}/res", "run.cache_dir": f"/tmp/e/{tag}/cache",
        "pretrain.out_dir": f"/tmp/e/ckpt"}
cfg = pipeline.prepare(load_config("embedded", {**base, **ov}), progress=False)
bb = pipeline.backbone(cfg)
sp = pipeline.split(cfg, "test")
rows = {}
for name, v in variants.items():
    t = time.time()
    c = apply_overrides(cfg, v)
    run = pipeline.phi(c, bb, progress=False)
    r = pipeline.evaluate(c, bb, sp, ["searle", "searle-oti"] if "oti" in name else ["searle"], run.phi, progress=False)
    for m, x in r.items():
        rows[f"{m} {name}"] = x.metrics
    print(name, round(time.time() - t), [round(e.get("distil", 0), 2) for e in run.history.epochs][::20], flush=True)
print(reports.metrics_table(rows, reports.HEADLINE["embedded"]).round(2).to_string())
