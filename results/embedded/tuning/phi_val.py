import sys, time, json
from searle_lib import pipeline, reports
from searle_lib.config import load_config, apply_overrides
variants = json.loads(sys.argv[1]); split = sys.argv[2] if len(sys.argv) > 2 else "val"
cfg = pipeline.prepare(load_config("embedded"), progress=False)
bb = pipeline.backbone(cfg)
sp = pipeline.split(cfg, split)
rows = {}
for name, v in variants.items():
    t = time.time()
    c = apply_overrides(cfg, v)
    run = pipeline.phi(c, bb, progress=False)
    r = pipeline.evaluate(c, bb, sp, ["searle", "image"] if name == "base" else ["searle"], run.phi, progress=False)
    for m, x in r.items():
        rows[f"{m} {name}"] = x.metrics
    print(name, round(time.time() - t), "s", round(r["searle"].metrics["map_at_10"], 2), flush=True)
print(reports.metrics_table(rows, reports.HEADLINE["embedded"]).round(2).to_string())
