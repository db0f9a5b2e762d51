"""FashionIQ (Wu et al., CVPR 2021) in its official layout, as SEARLE evaluates it (reference section 7.1).

Each category (dress, shirt, toptee) is ranked against its **own** gallery, ``image_splits/split.<cat>.<split>.json``,
with the reference image left in; the paper reports R@10 and R@50 per category and their arithmetic mean.

- ``fashioniq(root, split, category)`` loads one category: the official protocol for that category.
- ``fashioniq(root, split)`` (no category) loads all three together: queries of every category, ``groups`` mapping
  each category to its query ids, and the **union** of the three galleries. Use it to list every reference image
  once (SEARLE-OTI inverts the references of all three categories together), not for official numbers, since a
  query is then ranked against other categories' images too.
- ``fashioniq_categories(root, split)`` returns the three per-category splits; score each and average them with
  ``searle_lib.metrics.average_scores`` for the paper's protocol.

Captions are kept verbatim (both of them); composing them into a prompt is the method's job.
"""
from __future__ import annotations

from pathlib import Path

from ._layout import Layout, check_on_missing, drop_queries, listing, report_missing, unique
from .base import CIRQuery, CIRSplit, ImageSet, register_dataset

CATEGORIES = ("dress", "shirt", "toptee")
SPLITS = ("train", "val", "test")
IMAGE_EXTS = (".jpg", ".png")  # the official download is JPEG; some mirrors re-encode to PNG
METRICS = ("recall_at_10", "recall_at_50")

TREE = """  captions/cap.<category>.<split>.json        list of {"candidate", "target", "captions": [c1, c2]} (ASINs)
  image_splits/split.<category>.<split>.json  list of ASINs (the gallery)
  images/<ASIN>.jpg (or .png)
  with <category> in dress, shirt, toptee and <split> in train, val, test ("target" is absent in test)"""
FIX = ("download captions/ and image_splits/ from https://github.com/XiaoxiaoGuo/fashion-iq and the images (its "
       "issue #18, or the Hugging Face mirror Plachta/FashionIQ), and point data.root at the folder that holds "
       "captions/, image_splits/ and images/")


def _layout(root: str | Path | None) -> Layout:
    if root is None:
        raise Layout("fashioniq", Path("<data.root>"), TREE, FIX).error("no dataset root given (data.root is null)")
    root = Path(root).expanduser()
    layout = Layout("fashioniq", root, TREE, FIX)
    layout.require_dir(root)
    return layout


def _check_args(split: str, category: str | None) -> None:
    if split not in SPLITS:
        raise ValueError(f"fashioniq split {split!r}: expected one of {SPLITS}")
    if category is not None and category not in CATEGORIES:
        raise ValueError(f"fashioniq category {category!r}: expected one of {CATEGORIES} or None for all three")


def _read_category(layout: Layout, category: str, split: str) -> tuple[list[CIRQuery], list[str]]:
    """Queries and gallery ASINs of one category, with every record checked."""
    root = layout.root
    layout.require_dir(root / "captions")
    layout.require_dir(root / "image_splits")
    cap_path = root / "captions" / f"cap.{category}.{split}.json"
    records = layout.expect_list(layout.read_json(cap_path), cap_path, "caption triplets")
    fields: dict = {"candidate": str, "captions": list}
    if split != "test":
        fields["target"] = str
    queries = []
    for i, rec in enumerate(records):
        layout.check_record(rec, cap_path, i, fields)
        caps = rec["captions"]
        if len(caps) != 2 or not all(isinstance(c, str) for c in caps):
            raise layout.error(f"{cap_path}, record {i}: 'captions' should be a list of two strings, "
                               f"found {caps!r:.120}")
        target = rec.get("target") if split != "test" else None
        queries.append(CIRQuery(query_id=f"{category}-{i}", reference_id=rec["candidate"], captions=tuple(caps),
                                target_id=target, category=category))
    split_path = root / "image_splits" / f"split.{category}.{split}.json"
    gallery = layout.expect_list(layout.read_json(split_path), split_path, "image names (ASINs)")
    for i, name in enumerate(gallery):
        if not isinstance(name, str) or not name:
            raise layout.error(f"{split_path}, entry {i}: expected an ASIN string, found {name!r:.80}")
    if split != "test":  # the official evaluation asserts that every target is in its category's gallery
        listed = set(gallery)
        for i, q in enumerate(queries):
            if q.target_id not in listed:
                raise layout.error(f"{cap_path}, record {i}: target {q.target_id!r} is not in {split_path.name}; "
                                   "the two files come from different releases")
    # A repeated ASIN would be one image ranked twice; the official gallery has none, so keep the first.
    return queries, unique(gallery)


def _build(root: str | Path | None, split: str, categories: tuple[str, ...], on_missing: str) -> CIRSplit:
    check_on_missing(on_missing)
    layout = _layout(root)
    queries: list[CIRQuery] = []
    gallery: list[str] = []
    for cat in categories:
        q, g = _read_category(layout, cat, split)
        queries += q
        gallery += g
    gallery = unique(gallery)
    used = unique(gallery + [q.reference_id for q in queries] + [q.target_id for q in queries if q.target_id])

    image_dir = layout.require_dir(layout.root / "images")
    present = listing(image_dir)
    paths: dict[str, Path] = {}
    missing: dict[str, Path] = {}
    for asin in used:
        hit = next((asin + ext for ext in IMAGE_EXTS if asin + ext in present), None)
        if hit is None:
            missing[asin] = image_dir / f"{asin}.jpg"
        else:
            paths[asin] = image_dir / hit
    report_missing(layout, missing, on_missing, f"captions/ and image_splits/ ({split}, {'/'.join(categories)})")
    if missing:
        queries = drop_queries(queries, set(missing))
        gallery = [g for g in gallery if g not in missing]
        layout.require_gallery(gallery, layout.root / "image_splits")
        used = [u for u in used if u not in missing]

    tag = categories[0] if len(categories) == 1 else "all"
    name = f"fashioniq/{tag}/{split}"
    return CIRSplit(
        dataset="fashioniq", split=split, queries=tuple(queries),
        gallery=ImageSet(tuple(gallery), tuple(paths[g] for g in gallery), name + "/gallery"),
        images=ImageSet(tuple(used), tuple(paths[u] for u in used), name + "/images"),
        exclude_reference=False, metrics=METRICS, has_ground_truth=split != "test", root=layout.root,
        groups={cat: tuple(q.query_id for q in queries if q.category == cat) for cat in categories})


@register_dataset("fashioniq")
def fashioniq(root: str | Path | None, split: str = "val", category: str | None = None, *,
              on_missing: str = "error") -> CIRSplit:
    """Load FashionIQ ``split`` for one ``category`` (official protocol) or, with ``category=None``, all three.

    Args:
        root: folder holding ``captions/``, ``image_splits/`` and ``images/``.
        split: ``train``, ``val`` or ``test`` (test captions have no target, so no metrics).
        category: ``dress``, ``shirt``, ``toptee``, or None for all three over the union of their galleries.
        on_missing: ``"error"`` (default) when a listed image is absent, or ``"drop"`` it and the queries using it.

    Returns:
        A ``CIRSplit``; query ids are ``"<category>-<index in the caption file>"``; ``groups`` maps category to ids.
    """
    _check_args(split, category)
    return _build(root, split, (category,) if category else CATEGORIES, on_missing)


def fashioniq_categories(root: str | Path | None, split: str = "val", *, on_missing: str = "error") -> list[CIRSplit]:
    """The three per-category splits (dress, shirt, toptee), each with its own gallery: the paper's protocol."""
    _check_args(split, None)
    return [_build(root, split, (cat,), on_missing) for cat in CATEGORIES]
