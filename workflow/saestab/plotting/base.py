"""Shared style and layout of the workflow's figures (trained and random weights side by side)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import seaborn as sns

from .. import io
from ..figures import vector

Config = dict[str, Any]
WEIGHTS_ORDER = ("trained", "random")


def style() -> None:
    sns.set_theme(context="paper", style="whitegrid", font_scale=1.05)


def label(c: Config) -> str:
    return f"{c['variant']}" if c.get("single_model", True) else \
        f"{c['model']} {c['hook']} {c['variant']}"


def save(fig: plt.Figure, out: str | Path) -> None:
    """Write ``fig`` to ``out`` (PNG) and its vector copy beside it, each atomically."""
    for path in (Path(out), Path(vector(out))):
        fmt = path.suffix.lstrip(".")
        # no creation date in the vector file, so that a redrawn figure is the same file
        meta = {"CreationDate": None} if fmt == "pdf" else None
        with io.atomic_path(path, suffix=path.suffix) as tmp:
            fig.savefig(tmp, dpi=130, bbox_inches="tight", format=fmt, metadata=meta)
    plt.close(fig)


def weights_panels(configs: Sequence[Config]) -> tuple[plt.Figure, dict[str, plt.Axes]]:
    weights = [w for w in WEIGHTS_ORDER if any(c["weights"] == w for c in configs)]
    fig, axes = plt.subplots(1, len(weights), figsize=(4.6 * len(weights), 3.6), squeeze=False,
                             sharey=True)
    return fig, dict(zip(weights, axes[0], strict=True))


def finish_panels(fig: plt.Figure, panels: dict[str, plt.Axes], out: str | Path, *,
                   xlabel: str, ylabel: str, ylim: tuple[float, float] = (-0.02, 1.02),
                   legend_size: int = 8, **axes_kw: Any) -> None:
    """Title, labels and legend of each weights panel; the y label on the first; save."""
    for w, ax in panels.items():
        ax.set(title=f"{w} weights", xlabel=xlabel, ylim=ylim, **axes_kw)
        ax.legend(loc="best", fontsize=legend_size)
    next(iter(panels.values())).set_ylabel(ylabel)
    save(fig, out)


