"""Benchmarks in their official layouts (FashionIQ, CIRR, CIRCO), unlabeled sets (ImageNet1K test) and the
embedded world, all behind one interface (``base``). Importing this package registers every loader."""
from .base import (CIRQuery, CIRSplit, DatasetError, ImageSet, list_datasets, load_split, load_unlabeled,
                   register_dataset, register_unlabeled)
from . import circo, cirr, embedded, fashioniq, imagenet  # noqa: F401  (register loaders)

__all__ = ["CIRQuery", "CIRSplit", "DatasetError", "ImageSet", "list_datasets", "load_split", "load_unlabeled",
           "register_dataset", "register_unlabeled"]
