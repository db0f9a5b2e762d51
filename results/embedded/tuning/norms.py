import torch
from searle_lib import pipeline
from searle_lib.config import load_config
from searle_lib.phi import phi_tokens
cfg = pipeline.prepare(load_config("embedded"), progress=False)
bb = pipeline.backbone(cfg)
run = pipeline.phi(cfg, bb, progress=False)
sp = pipeline.split(cfg, "test")
from searle_lib.datasets.base import ImageSet
refs = sorted({q.reference_id for q in sp.queries})
idx = {i: k for k, i in enumerate(sp.gallery.ids)}
imgs = ImageSet(tuple(refs), tuple(sp.gallery.paths[idx[r]] for r in refs), name="refs")
oti = pipeline.oti(cfg, bb, imgs, progress=False)
feats = pipeline.features(cfg, bb, imgs, skip_bad=True, progress=False)
p = phi_tokens(run.phi, feats.select(oti.ids))
o = oti.ema_tokens
print("norm phi", p.norm(dim=-1).mean().item(), "norm oti", o.norm(dim=-1).mean().item())
print("cos phi-oti", torch.nn.functional.cosine_similarity(p, o).mean().item())
w = bb.model.token_embedding.weight
print("word emb norm", w.norm(dim=-1).median().item())
from searle_lib import reports
class Scaled(torch.nn.Module):
    def __init__(self, phi, norm):
        super().__init__(); self.phi, self.norm = phi, norm
    def forward(self, x):
        return torch.nn.functional.normalize(self.phi(x), dim=-1) * self.norm
rows = {}
for n in (0.8, 1.26, 1.8):
    r = pipeline.evaluate(cfg, bb, sp, ["searle"], Scaled(run.phi, n).eval(), progress=False)["searle"]
    rows[f"searle norm {n}"] = r.metrics
print(reports.metrics_table(rows, reports.HEADLINE["embedded"]).round(2).to_string())
