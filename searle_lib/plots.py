"""Shared plotting: one style for the whole book, fixed colours per method, and figures that carry their data.

Every figure made here remembers the data it plots (``figure_data(fig)``), so ``save_figure`` (and
``provenance.save_run``) can write ``<name>.png`` with ``<name>.json`` beside it (style guide rule 16).
Metric keys stay snake_case in data; ``metric_label`` turns them into the labels the paper uses, for display only.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

DPI = 110  # keeps committed PNGs small (results/ is in git)

# One colour per method across every chapter (colour-blind safe, from seaborn's "colorblind" palette).
METHOD_COLORS = {
    "image": "#949494",
    "text": "#ca9161",
    "image+text": "#fbafe4",
    "palavra": "#cc78bc",
    "pic2word": "#56b4e9",
    "searle-oti": "#029e73",
    "searle": "#0173b2",
    "ours": "#d55e00",
    "paper": "#0173b2",
}
_FALLBACK = ["#de8f05", "#d55e00", "#ece133", "#56b4e9", "#029e73", "#cc78bc"]

_LABELS = [
    (r"^recall_subset_at_(\d+)$", r"R$_s$@\1"),
    (r"^recall_at_(\d+)$", r"R@\1"),
    (r"^map_at_(\d+)$", r"mAP@\1"),
]


def metric_label(key: str, mathtext: bool = False) -> str:
    """Display label of a metric key: ``recall_at_10`` -> ``R@10``, ``dress_recall_at_10`` -> ``dress R@10``.

    ``mathtext=True`` gives matplotlib's subscript for Recall_subset (``R$_s$@1``); otherwise ``Rs@1``.
    """
    prefix, _, rest = key.partition("_recall") if "_recall" in key else ("", "", key)
    core = "recall" + rest if prefix else key
    for pattern, repl in _LABELS:
        if re.match(pattern, core):
            label = re.sub(pattern, repl, core)
            if not mathtext:
                label = label.replace("R$_s$", "Rs")
            return f"{prefix} {label}" if prefix else label
    return key


def use_style() -> None:
    """The book's matplotlib style: white grid, readable sizes, small PNGs."""
    import seaborn as sns
    sns.set_theme(style="whitegrid", context="notebook", palette="colorblind")
    plt.rcParams.update({"figure.dpi": DPI, "savefig.dpi": DPI, "savefig.bbox": "tight",
                         "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9,
                         "xtick.labelsize": 9, "ytick.labelsize": 9})


def method_colors(methods: Sequence[str]) -> list[str]:
    """Colours for ``methods`` (fixed ones for known methods, then a fallback cycle)."""
    fallback = iter(_FALLBACK * (len(methods) // len(_FALLBACK) + 1))
    return [METHOD_COLORS.get(str(m).lower(), None) or next(fallback) for m in methods]


def attach_data(fig: Figure, data: Any) -> Figure:
    """Remember the data a figure plots, for ``save_figure``."""
    fig._searle_data = data  # type: ignore[attr-defined]
    return fig


def figure_data(fig: Figure) -> Any:
    """The data attached by ``attach_data`` (``None`` if there is none)."""
    return getattr(fig, "_searle_data", None)


def data_to_json(data: Any) -> Any:
    """DataFrames become ``{"columns": [...], "records": [...]}``; mappings and lists pass through."""
    from .provenance import to_jsonable
    if isinstance(data, pd.Series):
        data = data.reset_index()
    if isinstance(data, pd.DataFrame):
        frame = data.reset_index() if not isinstance(data.index, pd.RangeIndex) else data
        frame = frame.astype(object).where(frame.notna(), None)
        return {"columns": [str(c) for c in frame.columns], "records": to_jsonable(frame.to_dict("records"))}
    return to_jsonable(data, "figure data")


def save_figure(fig: Figure, path: str | Path, data: Any = None) -> tuple[Path, Path]:
    """Write ``path`` (PNG) and the plotted data as JSON beside it; return both paths.

    ``data`` defaults to what the figure carries (``attach_data``); a figure without data is an error, so that
    every committed image can be checked against numbers.
    """
    path = Path(path).with_suffix(".png")
    data = figure_data(fig) if data is None else data
    if data is None:
        raise ValueError(f"figure {path.stem!r} has no data: make it with searle_lib.plots or pass (fig, data)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    meta = {"figure": path.name, "title": fig._suptitle.get_text() if fig._suptitle else
            (fig.axes[0].get_title() if fig.axes else ""), "data": data_to_json(data)}
    json_path = path.with_suffix(".json")
    json_path.write_text(json.dumps(meta, indent=1, allow_nan=False) + "\n")
    return path, json_path


def bar_panels(data: pd.DataFrame, *, x: str, y: str, panel: str | None = None, color_by: str | None = None,
               hatch_by: str | None = None, ylabel: str = "", title: str = "", panel_titles: Mapping[str, str]
               | None = None, annotate: bool = True, ncols: int = 3) -> Figure:
    """One bar per row of ``data`` (``x`` labels, ``y`` heights), one panel per value of ``panel``.

    Bars are coloured by ``color_by`` (method keys get the fixed method colours) and hatched where ``hatch_by``
    is truthy (e.g. the ViT-L/14 rows). Missing values are drawn as an empty bar labelled "n/a".
    """
    use_style()
    groups = list(dict.fromkeys(data[panel])) if panel else [None]
    ncols = min(ncols, len(groups))
    nrows = -(-len(groups) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
    for ax, group in zip(axes.flat, groups):
        sub = data if group is None else data[data[panel] == group]
        colors = method_colors(list(sub[color_by])) if color_by else None
        heights = sub[y].astype(float)
        bars = ax.bar(range(len(sub)), heights.fillna(0), color=colors, edgecolor="#333333", linewidth=0.6)
        for bar, hatch, value in zip(bars, sub[hatch_by] if hatch_by else [False] * len(sub), heights):
            if hatch:
                bar.set_hatch("//")
            if annotate:
                ax.annotate("n/a" if pd.isna(value) else f"{value:.1f}", (bar.get_x() + bar.get_width() / 2,
                            0 if pd.isna(value) else value), ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(sub)), list(sub[x]), rotation=45, ha="right")
        ax.set_ylabel(ylabel)
        if group is not None:
            ax.set_title((panel_titles or {}).get(group, str(group)))
    for ax in list(axes.flat)[len(groups):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return attach_data(fig, data.reset_index(drop=True))


def line_curves(data: pd.DataFrame, *, x: str, y: str, hue: str, xlabel: str = "", ylabel: str = "",
                title: str = "", logx: bool = False, legend_outside: bool = False) -> Figure:
    """One line per value of ``hue`` (e.g. a metric against the number of images phi sees); the legend to the
    right of the axes with ``legend_outside`` (for curves that fill the whole plot)."""
    use_style()
    fig, ax = plt.subplots(figsize=(8, 3.6) if legend_outside else (5.5, 3.6))
    keys = list(dict.fromkeys(data[hue]))
    for key, color in zip(keys, method_colors(keys)):
        sub = data[data[hue] == key].sort_values(x)
        ax.plot(sub[x], sub[y], marker="o", label=str(key), color=color)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or y)
    ax.legend(frameon=False, **({"loc": "center left", "bbox_to_anchor": (1.0, 0.5)} if legend_outside else {}))
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return attach_data(fig, data.reset_index(drop=True))


def paired_scatter(data: pd.DataFrame, *, x: str, y: str, label: str, title: str = "",
                   xlabel: str = "paper", ylabel: str = "ours") -> Figure:
    """Ours against the paper, one point per number, with the y = x line."""
    use_style()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    lo = float(min(data[x].min(), data[y].min(), 0))
    hi = float(max(data[x].max(), data[y].max(), 1))
    ax.plot([lo, hi], [lo, hi], color="#999999", linewidth=0.8, linestyle="--")
    ax.scatter(data[x], data[y], color=METHOD_COLORS["ours"], s=18)
    for _, row in data.iterrows():
        ax.annotate(str(row[label]), (row[x], row[y]), fontsize=6, xytext=(2, 2), textcoords="offset points")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return attach_data(fig, data.reset_index(drop=True))


def image_grid(paths: Sequence[str | Path], titles: Sequence[str], *, ncols: int = 6, title: str = "",
               size: float = 1.9) -> Figure:
    """Images in a grid with a (wrapped) title under each; the figure's data is the list of paths and titles."""
    import textwrap

    from PIL import Image
    use_style()
    nrows = -(-len(paths) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, (size + 0.5) * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, path, text in zip(axes.flat, paths, titles):
        with Image.open(path) as im:
            ax.imshow(im.convert("RGB"))
        ax.set_title("\n".join(textwrap.wrap(text, 26)), fontsize=6.5)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return attach_data(fig, pd.DataFrame({"path": [str(p) for p in paths], "title": list(titles)}))


def histograms(data: pd.DataFrame, *, x: str, hue: str | None = None, bins: int = 30, xlabel: str = "",
               title: str = "") -> Figure:
    """Overlaid histograms of ``x`` (one per ``hue`` value)."""
    use_style()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    keys = list(dict.fromkeys(data[hue])) if hue else [None]
    for key, color in zip(keys, method_colors([str(k) for k in keys])):
        sub = data if key is None else data[data[hue] == key]
        ax.hist(sub[x], bins=bins, alpha=0.6, color=color, label=None if key is None else str(key))
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel("count")
    if hue:
        ax.legend(frameon=False)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return attach_data(fig, data.reset_index(drop=True))
