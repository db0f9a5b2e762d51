"""Render scenes to small RGB images in several visual domains (the embedded world's pixels).

Each image is drawn with PIL at 2x resolution and box-downsampled (anti-aliasing), then gets a low-frequency
texture. All randomness (background tint and gradient; object jitter of position, size, rotation and colour; stars;
texture) comes from one seed per image, so an image depends only on (scene, domain, size, seed): rendering in
parallel, in any order, gives the same bytes. The same scene with another seed is visibly different.

Domains (the study's domain-shift axis): ``flat`` (filled shapes on a light background), ``night`` (neon outlines
and dim fills on a dark starry background, brighter palette), ``sketch`` (coloured ink outlines on ruled paper).
"""
from __future__ import annotations

import math
import multiprocessing as mp
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from .scenes import Scene

SUPERSAMPLE = 2
LARGE, SMALL = 0.40, 0.24  # circumradius as a fraction of the cell side
JITTER = 0.08  # centre jitter as a fraction of the cell side; LARGE * 1.06 + JITTER stays inside the cell

_FLAT = {"gray": (128, 128, 128), "red": (220, 40, 40), "blue": (40, 80, 225), "green": (40, 165, 60),
         "brown": (135, 82, 40), "purple": (140, 60, 195), "cyan": (40, 200, 215), "yellow": (240, 205, 30)}
_NEON = {"gray": (175, 175, 185), "red": (255, 75, 75), "blue": (85, 125, 255), "green": (80, 240, 105),
         "brown": (195, 130, 75), "purple": (205, 105, 255), "cyan": (75, 240, 255), "yellow": (255, 240, 85)}


@dataclass(frozen=True)
class Domain:
    name: str
    palette: dict[str, tuple[int, int, int]]
    texture: float  # amplitude of the low-frequency mottling over the whole image, in 0..255 units


DOMAINS: dict[str, Domain] = {
    "flat": Domain("flat", _FLAT, 9.0),
    "night": Domain("night", _NEON, 7.0),
    "sketch": Domain("sketch", {k: tuple(int(0.85 * c) for c in v) for k, v in _FLAT.items()}, 6.0),
}


def check_domains(domains: Iterable[str]) -> None:
    for d in domains:
        if d not in DOMAINS:
            raise ValueError(f"unknown world domain {d!r}; available: {', '.join(DOMAINS)}")


def shape_polygon(shape: str, cx: float, cy: float, r: float, rot_deg: float) -> list[tuple[float, float]]:
    """Vertices of ``shape`` with circumradius ``r`` centred at (cx, cy), rotated by ``rot_deg``."""
    if shape == "circle":
        pts = [(math.cos(t), math.sin(t)) for t in np.linspace(0, 2 * math.pi, 28, endpoint=False)]
    elif shape == "square":
        h = 1 / math.sqrt(2)
        pts = [(-h, -h), (h, -h), (h, h), (-h, h)]
    elif shape == "triangle":
        # equilateral, pointing up, lowered so that its bounding box is centred
        pts = [(0.0, -0.93), (0.93 * math.sqrt(3) / 2, 0.47), (-0.93 * math.sqrt(3) / 2, 0.47)]
    elif shape == "diamond":
        pts = [(0.0, -1.0), (0.62, 0.0), (0.0, 1.0), (-0.62, 0.0)]
    elif shape == "star":
        pts = [((1.0 if i % 2 == 0 else 0.45) * math.sin(i * math.pi / 5),
                -(1.0 if i % 2 == 0 else 0.45) * math.cos(i * math.pi / 5)) for i in range(10)]
    elif shape == "cross":
        a, w = 0.95, 0.32
        pts = [(-w, -a), (w, -a), (w, -w), (a, -w), (a, w), (w, w), (w, a), (-w, a), (-w, w), (-a, w), (-a, -w),
               (-w, -w)]
    else:
        raise ValueError(f"unknown shape {shape!r}")
    c, s = math.cos(math.radians(rot_deg)), math.sin(math.radians(rot_deg))
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]


def _smooth_field(rng: np.random.Generator, n: int, amplitude: float, cells: int = 6) -> np.ndarray:
    """Low-frequency texture: a ``cells`` x ``cells`` random field upsampled bilinearly to n x n (cheap to draw,
    and PNG still compresses it, unlike per-pixel noise)."""
    low = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
    img = Image.fromarray(low, mode="F").resize((n, n), Image.BILINEAR)
    return np.asarray(img)[..., None] * amplitude


def _background(domain: str, rng: np.random.Generator, n: int) -> Image.Image:
    """A ``n`` x ``n`` background: tinted base colour, a linear gradient, and the domain's decoration."""
    k = 4  # the gradient is drawn at k x k and upsampled: it is linear, so nothing is lost
    yy, xx = (np.mgrid[0:k, 0:k].astype(np.float32) + 0.5) / k - 0.5
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy)[..., None]
    if domain == "night":
        low = np.array([18, 20, 40]) + rng.uniform(-6, 6, 3) + ramp * rng.uniform(10, 25)
    elif domain == "sketch":
        low = np.array([244, 238, 222]) + rng.uniform(-5, 5, 3) + ramp * 8
    else:
        low = np.array([232, 232, 226]) + rng.uniform(-10, 8, 3) + ramp * rng.uniform(6, 16)
    img = Image.fromarray(np.clip(low, 0, 255).astype(np.uint8)).resize((n, n), Image.BILINEAR)
    draw = ImageDraw.Draw(img)
    if domain == "night":  # faint stars
        for x, y, v in zip(rng.integers(0, n, 30), rng.integers(0, n, 30), rng.integers(90, 200, 30)):
            draw.point((int(x), int(y)), fill=(int(v),) * 3)
    elif domain == "sketch":  # ruled paper
        step = int(rng.integers(14, 20))
        for y in range(int(rng.integers(0, step)), n, step):
            draw.line([(0, y), (n, y)], fill=(212, 210, 200), width=1)
    return img


def render_scene(scene: Scene, domain: str, size: int = 64, seed: int = 0) -> np.ndarray:
    """Render ``scene`` in ``domain`` as a ``size`` x ``size`` x 3 uint8 array, deterministically from ``seed``."""
    dom = DOMAINS[domain]
    rng = np.random.default_rng(seed)
    n = size * SUPERSAMPLE
    img = _background(domain, rng, n)
    draw = ImageDraw.Draw(img)
    cell = n / 3
    for o in scene:
        row, col = divmod(o.cell, 3)
        cx = (col + 0.5 + rng.uniform(-JITTER, JITTER)) * cell
        cy = (row + 0.5 + rng.uniform(-JITTER, JITTER)) * cell
        r = (LARGE if o.size == "large" else SMALL) * cell * rng.uniform(0.94, 1.06)
        pts = shape_polygon(o.shape, cx, cy, r, rng.uniform(-15, 15))
        colour = tuple(min(255, max(0, int(v + rng.uniform(-14, 14)))) for v in dom.palette[o.colour])
        line = max(2, round(0.2 * r))
        if domain == "night":
            dim = tuple(int(0.45 * v) for v in colour)
            draw.polygon(pts, fill=dim, outline=colour, width=line)
        elif domain == "sketch":
            draw.polygon(pts, outline=colour, width=line)
        else:
            edge = tuple(int(0.65 * v) for v in colour)
            draw.polygon(pts, fill=colour, outline=edge, width=SUPERSAMPLE)
    img = img.resize((size, size), Image.BOX)
    arr = np.asarray(img, dtype=np.float32) + _smooth_field(rng, size, dom.texture)
    return np.clip(arr + 0.5, 0, 255).astype(np.uint8)


# A render job: (output path, scene as JSON list, domain, image size, seed).
Job = tuple[str, list, str, int, int]


def _run_job(job: Job) -> None:
    path, scene, domain, size, seed = job
    Image.fromarray(render_scene(Scene.from_json(scene), domain, size, seed)).save(path, compress_level=1)


def render_jobs(jobs: list[Job], workers: int = 2, desc: str = "render") -> None:
    """Render and write every job's PNG, with ``workers`` processes (results do not depend on ``workers``)."""
    for d in {os.path.dirname(j[0]) for j in jobs}:
        Path(d).mkdir(parents=True, exist_ok=True)
    if workers <= 1 or len(jobs) < 200:
        for job in tqdm(jobs, desc=desc, leave=False):
            _run_job(job)
        return
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(workers) as pool:
        for _ in tqdm(pool.imap_unordered(_run_job, jobs, chunksize=64), total=len(jobs), desc=desc, leave=False):
            pass
