"""Where the embedded world keeps its files (shared by the builder and the loaders; imports nothing of the library).

Layout under the world root (also written to ``<root>/README.md`` by the builder)::

    manifest.json                 version, config, config hash, held-out pairs, counts, build time (written last)
    README.md                     this layout, in words
    <domain>/images/<id>.png      every image of the domain; id = "<domain>-<split>-<index>"
    <domain>/scenes.json          {image id: scene}; scene = [[shape, colour, size, cell], ...], cell = 3*row + col
    <domain>/pretrain.jsonl       one line per pretraining image: {"image", "family", "captions", "meanings",
                                  "negatives", "negative_meanings"}
    <domain>/unlabeled.json       [image id, ...]: the ImageNet analogue (no captions, no labels)
    <domain>/<split>.json         split in val | test | heldout: {"queries": [...], "gallery": [image id, ...]}
"""
from __future__ import annotations

from pathlib import Path

MANIFEST = "manifest.json"
QUERY_SPLITS: tuple[str, ...] = ("val", "test", "heldout")
METRICS: tuple[str, ...] = ("map_at_5", "map_at_10", "map_at_25", "map_at_50",
                            "recall_at_1", "recall_at_5", "recall_at_10", "recall_at_50",
                            "recall_subset_at_1", "recall_subset_at_2", "recall_subset_at_3")

README = """# The embedded world (searle-study)

A procedural composed-image-retrieval benchmark with exact ground truth, written by
`searle_lib.world.build_world`. Do not edit by hand: the builder deletes and rewrites this folder whenever the
world config (hash in `manifest.json`) or the world version changes.

## Files

- `manifest.json`: world version, the full world config and its hash, the held-out (shape, colour) pairs, image
  and query counts per domain and split, and the build time. Written last: a folder without it is incomplete.
- `<domain>/images/<id>.png`: every image of a visual domain (`flat`, `night`, `sketch`), RGB, square.
  Ids are `<domain>-<split>-<index>`, unique over the whole world.
- `<domain>/scenes.json`: `{id: scene}` for every image. A scene is a list of objects
  `[shape, colour, size, cell]`, cell = 3 * row + column of the 3x3 grid (row 0 at the top).
- `<domain>/pretrain.jsonl`: one JSON object per line: (image, captions) pairs for pretraining the tiny CLIP.
  `{"image": id, "family": int, "captions": [...], "meanings": [...], "negatives": [...], "negative_meanings":
  [...]}`. Images of one `family` show a scene and variants one edit away from it (hard negatives for each other).
  `meanings[i]` is what `captions[i]` asserts: `[[[shape, colour, size or null, cell or null], ...], domain or
  null]` (exactly these objects; null where the caption does not say), so which images a caption is true of is
  exact. `negatives[i]` is a hard negative of `captions[i]`: the same phrasing of a scene one edit away ("" and
  null if none). Captions describe one scene; no relative caption is ever in here.
- `<domain>/unlabeled.json`: list of ids, the ImageNet analogue used by OTI and phi (no captions).
- `<domain>/{val,test,heldout}.json`: `{"queries": [...], "gallery": [ids]}`. A query is
  `{"query_id", "kind" (change|add|remove), "attribute" (colour|shape|size|position or ""), "caption" (relative
  caption), "reference" (id), "target" (designated target id), "gt" (ids), "group" (ids), "reference_scene",
  "target_scene"}`.

## Ground truth

Two images *match* when their scenes are equal: the same set of (shape, colour, size, cell) objects (order,
rendering jitter, noise and domain do not count). `gt` is every gallery image whose scene equals the target scene
(several renderings per target, as CIRCO; for mAP@K); `target` is one of them (for Recall@K). `group` holds the
reference, the designated target, another rendering of the reference and near misses one edit away from the target
(as CIRR's image sets; for Recall_subset@K); it holds exactly one positive. The reference is in the gallery and is
never a positive: rank without it.

## Splits

`pretrain` and `unlabeled` never contain a held-out (shape, colour) pair (`manifest.json: heldout_pairs`), nor do
`val` and `test` (queries, near misses and distractors alike). `heldout` queries have a held-out pair in the
reference or the target scene.
"""


def domain_dir(root: str | Path, domain: str) -> Path:
    return Path(root) / domain


def image_path(root: str | Path, domain: str, image_id: str) -> Path:
    return Path(root) / domain / "images" / f"{image_id}.png"


def domain_of(image_id: str) -> str:
    return image_id.split("-", 1)[0]
