"""ImageNet1K (ILSVRC2012) test images: the unlabeled set SEARLE inverts with OTI and trains phi on
(reference sections 6 and 7.4).

The official code collects ``<root>/test/**/*.JPEG`` with an unsorted recursive glob. We sort by path relative to
``test/``: OTI tokens are matched to images by file name, so the order changes no result, and sorting makes runs
reproducible across file systems. Ids are file names (``ILSVRC2012_test_00000001.JPEG``), as in the official
``image_names.pkl``.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from ._layout import Layout
from .base import ImageSet, register_unlabeled

TREE = """  test/ILSVRC2012_test_00000001.JPEG ... test/ILSVRC2012_test_00100000.JPEG"""
FIX = ("download 'Test images (all tasks)' of ILSVRC2012 from https://image-net.org (Download -> 2012), unpack it so "
       "the JPEG files are in <root>/test/, and point data.unlabeled_root at <root>")


@register_unlabeled("imagenet")
def imagenet(root: str | Path | None, split: str = "test", *, limit: int | None = None) -> ImageSet:
    """The ``*.JPEG`` files under ``<root>/<split>/`` (recursive), sorted by relative path.

    Args:
        root: the ImageNet1K folder holding ``test/``.
        split: sub-folder to read; SEARLE uses ``test``.
        limit: keep only the first ``limit`` images of the sorted list (``data.max_unlabeled``); None keeps all.
    """
    layout = Layout("imagenet", Path(root).expanduser() if root is not None else Path("<data.unlabeled_root>"),
                    TREE, FIX)
    if root is None:
        raise layout.error("no dataset root given (data.unlabeled_root is null)")
    folder = layout.require_dir(layout.require_dir(layout.root) / split)
    files = sorted((p for p in folder.rglob("*.JPEG") if p.is_file()), key=lambda p: p.relative_to(folder).as_posix())
    if not files:
        raise layout.error(f"{folder} holds no *.JPEG files")
    names = [p.name for p in files]
    if len(set(names)) != len(names):
        dup = next(n for n, c in Counter(names).items() if c > 1)
        raise layout.error(f"{folder}: file name {dup!r} appears in two sub-folders; tokens are matched by file "
                           "name, so each name must be unique")
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit={limit}: expected a positive number of images or None")
        files, names = files[:limit], names[:limit]
    return ImageSet(tuple(names), tuple(files), f"imagenet/{split}")
