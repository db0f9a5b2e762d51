"""Reading benchmark and unlabeled images safely, and a torch ``Dataset`` over an ``ImageSet``
(reference section 2, preprocessing; section 5, the official loader's collate that drops unreadable images).

The official code opens every image with ``PIL.Image.open(path).convert("RGB")``. ``open_image`` does the same,
so EXIF orientation is **not** applied (as in the official features), and adds what a hand-assembled dataset needs:
an error naming the file for a missing, corrupt or truncated image, a refusal of decompression bombs, and a fresh
RGB image with no metadata attached. One deliberate difference: 16-bit grayscale is scaled to 8 bits, where a plain
``convert("RGB")`` would saturate it to white (no official benchmark image is 16-bit).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .datasets.base import DatasetError, ImageSet

MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485  # Pillow's own bomb threshold (~89.5 Mpx; 9459 x 9459)


class ImageError(DatasetError):
    """An image that is absent, unreadable, truncated or too large; the message names the file and the fix."""


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I;16") or (image.mode == "I" and image.getextrema()[1] > 255):
        image = image.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    rgb = image.convert("RGB")  # L, LA, P, PA, RGBA (alpha dropped, as the official code), CMYK, YCbCr, 1 ...
    rgb.info = {}  # no EXIF, ICC profile or other metadata travels with the pixels
    return rgb


def open_image(path: str | Path, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode ``path`` into an RGB ``PIL.Image`` (EXIF orientation not applied, as in the official code).

    Args:
        path: image file.
        max_pixels: refuse images with more pixels than this (decompression-bomb guard; Pillow itself refuses
            anything over twice its ``Image.MAX_IMAGE_PIXELS``).

    Raises:
        ImageError: the file is absent, not an image, corrupt, truncated, or larger than ``max_pixels``.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # we apply our own pixel limit below; palette-transparency notices are irrelevant once converted
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.simplefilter("ignore", UserWarning)
            with Image.open(path) as image:
                w, h = image.size
                if max_pixels and w * h > max_pixels:
                    raise ImageError(f"image {path} is {w}x{h} = {w * h:,} pixels, over the limit of "
                                     f"{max_pixels:,} (a decompression bomb or a mistaken file); shrink it or "
                                     "raise max_pixels if it is genuine")
                image.load()
                return _to_rgb(image)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"image {path} does not exist; re-download the dataset's images or fix the path") from None
    except IsADirectoryError:
        raise ImageError(f"image path {path} is a folder, not an image file") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"image {path} refused as a decompression bomb ({e}); shrink it if it is genuine") from None
    except UnidentifiedImageError:
        raise ImageError(f"image {path} is not a readable image (unknown or corrupt format); re-download it") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"image {path} is corrupt or truncated ({e}); re-download it") from None


class ImageDataset(Dataset):
    """``ImageSet`` images, preprocessed; items are ``(index, tensor)``, or ``None`` for a bad image when
    ``skip_bad`` (the official unlabeled-set behaviour: the collate drops it and the caller reports the count).

    With ``skip_bad=False`` (benchmarks: every gallery image must be encoded) a bad image raises ``ImageError``.
    """

    def __init__(self, images: ImageSet, preprocess: Callable[[Image.Image], torch.Tensor], *,
                 skip_bad: bool = False, max_pixels: int = MAX_PIXELS):
        self.images, self.preprocess, self.skip_bad, self.max_pixels = images, preprocess, skip_bad, max_pixels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor] | None:
        try:
            image = open_image(self.images.paths[index], max_pixels=self.max_pixels)
        except ImageError:
            if self.skip_bad:
                return None
            raise
        return index, self.preprocess(image)


def collate_images(batch: list[tuple[int, torch.Tensor] | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack the good items of ``batch`` into ``(indices [B], images [B, 3, H, W])``; bad ``None`` items are dropped."""
    good = [item for item in batch if item is not None]
    if not good:
        return torch.empty(0, dtype=torch.long), torch.empty(0)
    return torch.tensor([i for i, _ in good], dtype=torch.long), torch.stack([x for _, x in good])
