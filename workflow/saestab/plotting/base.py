"""Shared style, layout and output of the workflow's figures.

Every figure is drawn for the README's width (:data:`saestab.figures.README_WIDTH_PX`): at most
:data:`WIDTH` inches wide with no text under :data:`MIN_FONT_PT`, so that shown at that width
every label is at least :data:`MIN_TEXT_PX` pixels high. Legends sit outside the axes (below them,
in space that constrained layout reserves), so they never cover data. :func:`save` writes the PNG
and a vector copy beside it (:func:`saestab.figures.vector`). Intervals are drawn by
:func:`errorbars` and :func:`band` from the interval dicts the stages write (``mean``,
``ci_low``, ``ci_high``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.artist import Artist
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .. import io
from ..figures import vector

Config = dict[str, Any]
WEIGHTS_ORDER = ("trained", "random")

MIN_TEXT_PX = 9  # smallest text, in pixels, once a figure is shown at the README's width
WIDTH = 8.0  # inches: the widest a figure is drawn
DPI = 150
MIN_FONT_PT = 8.0
# 8 pt on an 8-inch figure shown 800 px wide is ~11 px: above MIN_TEXT_PX with room for the
# labels that widen a figure's tight bounding box
FONTS = {"font.size": 9.0, "axes.titlesize": 9.5, "axes.labelsize": 9.0,
         "xtick.labelsize": MIN_FONT_PT, "ytick.labelsize": MIN_FONT_PT,
         "legend.fontsize": MIN_FONT_PT, "legend.title_fontsize": 9.0, "figure.titlesize": 10.0}
INTERVAL_ALPHA = 0.2  # shaded 95% intervals
SEED_ALPHA = 0.35  # thin per-seed lines


def style() -> None:
    sns.set_theme(context="paper", style="whitegrid", rc=FONTS)


def label(c: Config) -> str:
    """A configuration's name in legends: weights and variant (and model and hook when the study
    has several), so that one legend below all panels names every line."""
    name = c["variant"] if c.get("single_model", True) else \
        f"{c['model']} {c['hook']} {c['variant']}"
    return f"{c['weights']} {name}"


LABEL_STYLES = (("stable", "-"), ("unstable", "--"))  # line style of each stability label


def label_key() -> list[Artist]:
    """Legend proxies naming the line style of each stability label."""
    return [Line2D([], [], color="0.3", ls=ls, label=f"{lab} features")
            for lab, ls in LABEL_STYLES]


def colours(configs: Sequence[Config]) -> dict[str, str]:
    """One colour per configuration (by :func:`label`), the same in every panel of a figure."""
    return {label(c): f"C{i}" for i, c in enumerate(configs)}


def colour_key(configs: Sequence[Config]) -> list[Artist]:
    """Legend proxies naming the colour of each configuration (for figures whose line styles or
    markers name something else)."""
    return [Patch(color=col, label=name) for name, col in colours(configs).items()]


def panels(nrows: int, ncols: int, row_height: float, *, width: float = WIDTH,
           **kw: Any) -> tuple[plt.Figure, np.ndarray]:
    """A ``nrows`` x ``ncols`` grid of axes, :data:`WIDTH` wide, in constrained layout (which
    keeps room for a legend placed outside the axes by :func:`legend_below`)."""
    style()
    return plt.subplots(nrows, ncols, figsize=(width, row_height * nrows), squeeze=False,
                        layout="constrained", **kw)


def weights_panels(configs: Sequence[Config], row_height: float = 3.4
                   ) -> tuple[plt.Figure, dict[str, plt.Axes]]:
    """One panel per weights setting present (trained, random), side by side, sharing y."""
    weights = [w for w in WEIGHTS_ORDER if any(c["weights"] == w for c in configs)]
    fig, axes = panels(1, len(weights), row_height, sharey=True)
    return fig, dict(zip(weights, axes[0], strict=True))


def legend_below(fig: plt.Figure, ncol: int | None = None, extra: Sequence[Artist] = (),
                 **kw: Any) -> plt.Legend | None:
    """One legend for the whole figure, below every axes (``outside lower center`` of
    constrained layout), from the labelled artists of all axes (duplicate labels shown once)
    and the proxy artists ``extra`` (e.g. what a thin line or a whisker means); None when
    nothing is labelled."""
    handles, labels = [], []
    found = [(h, lab) for ax in fig.axes for h, lab in zip(*ax.get_legend_handles_labels(),
                                                           strict=True)]
    for h, lab in found + [(h, h.get_label()) for h in extra]:
        if lab not in labels:
            handles.append(h)
            labels.append(lab)
    if not labels:
        return None
    if ncol is None:
        # columns that fit the figure's width: a label's width from its length at the legend
        # font (~0.55 em per character, FONTS) plus the handle and padding (inches)
        longest = max(len(s) for s in labels) * 0.55 * MIN_FONT_PT / 72 + 0.7
        ncol = int(max(1, min(len(labels), fig.get_figwidth() // longest)))
    return fig.legend(handles, labels, loc="outside lower center", ncol=ncol, frameon=False,
                      **kw)


def finish_panels(fig: plt.Figure, axes: Mapping[str, plt.Axes], out: str | Path, *,
                  xlabel: str, ylabel: str, ylim: tuple[float | None, float | None] = (-0.02, 1.02),
                  extra: Sequence[Artist] = (), legend_title: str | None = None,
                  **axes_kw: Any) -> None:
    """Title and labels of each weights panel, the y label on the first, one legend below all
    panels (with the proxy artists ``extra``, under ``legend_title``); save."""
    for w, ax in axes.items():
        ax.set(title=f"{w} weights", xlabel=xlabel, ylim=ylim, **axes_kw)
    next(iter(axes.values())).set_ylabel(ylabel)
    legend_below(fig, extra=extra, title=legend_title)
    save(fig, out)


def interval_errors(intervals: Iterable[Mapping[str, float] | None]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(means, 2 x n error lengths) of interval dicts for ``errorbar``: NaN where an interval is
    missing or undefined (no whisker is drawn there, rather than a zero-length one that would
    read as certainty); rounding below zero clipped."""
    rows = [(np.nan, np.nan, np.nan) if iv is None else
            (iv["mean"], iv["ci_low"], iv["ci_high"]) for iv in intervals]
    a = np.array(rows, dtype=np.float64).reshape(-1, 3)
    err = np.vstack([a[:, 0] - a[:, 1], a[:, 2] - a[:, 0]])
    return a[:, 0], np.clip(err, 0, None)


def errorbars(ax: plt.Axes, x: Sequence[float] | np.ndarray,
              intervals: Sequence[Mapping[str, float] | None], *, horizontal: bool = False,
              **kw: Any) -> Any:
    """Points at the intervals' means with 95%-interval whiskers (along y, or along x with
    ``horizontal``); ``x`` are the positions on the other axis."""
    mean, err = interval_errors(intervals)
    kw = {"ls": "none", "capsize": 2.5, "elinewidth": 1.0, **kw}
    if horizontal:
        return ax.errorbar(mean, x, xerr=err, **kw)
    return ax.errorbar(x, mean, yerr=err, **kw)


def band(ax: plt.Axes, x: Sequence[float] | np.ndarray, lo: Sequence[float] | np.ndarray,
         hi: Sequence[float] | np.ndarray, color: Any, **kw: Any) -> Any:
    """A shaded 95% interval between ``lo`` and ``hi`` (gaps where they are NaN)."""
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    return ax.fill_between(np.asarray(x, dtype=np.float64), lo, hi, color=color,
                           alpha=INTERVAL_ALPHA, lw=0, where=np.isfinite(lo) & np.isfinite(hi),
                           **kw)


def save(fig: plt.Figure, out: str | Path) -> None:
    """Write ``fig`` to ``out`` (PNG) and its vector copy beside it, each atomically."""
    for path in (Path(out), Path(vector(out))):
        fmt = path.suffix.lstrip(".")
        # no creation date in the vector file, so that a redrawn figure is the same file
        meta = {"CreationDate": None} if fmt == "pdf" else None
        with io.atomic_path(path, suffix=path.suffix) as tmp:
            fig.savefig(tmp, dpi=DPI, bbox_inches="tight", format=fmt, metadata=meta)
    plt.close(fig)
