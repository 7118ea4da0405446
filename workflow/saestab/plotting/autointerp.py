"""Figure of the optional auto-interp stage: share of surface-form explanations.

A configuration is a dict with ``model, weights, hook, variant`` and ``dir`` (its auto-interp
directory holding ``summary.json``, as written by :func:`saestab.autointerp.write_outputs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .. import io
from .base import Config, finish_panels, label, style, weights_panels

LABEL_STYLE = {"stable": ("C0", "o"), "unstable": ("C3", "s")}


def surface_share(configs: Sequence[Config], out: str | Path) -> None:
    """Share of surface-form explanations (Wilson 95% CI) among stable and unstable features,
    one column per configuration, trained and random weights side by side."""
    style()
    fig, panels = weights_panels(configs)
    ticks: dict[str, list[str]] = {w: [] for w in panels}
    for c in configs:
        s = io.read_json(Path(c["dir"]) / "summary.json", "auto-interp summary")
        ax, names = panels[c["weights"]], ticks[c["weights"]]
        x = len(names)
        names.append(label(c))
        for j, (lab, (color, marker)) in enumerate(LABEL_STYLE.items()):
            d = s["labels"].get(lab)
            if d is None or d["surface_share"] is None:
                continue
            p = d["surface_share"]
            err = np.clip([[p - d["ci_low"]], [d["ci_high"] - p]], 0, None)  # rounding at 0, 1
            ax.errorbar(x + (j - 0.5) * 0.25, p, yerr=err, color=color, marker=marker,
                        capsize=3, linestyle="none",
                        label=f"{lab} features" if x == 0 else None)
            ax.annotate(f"n={d['n_surface'] + d['n_semantic']}", (x + (j - 0.5) * 0.25, p),
                        textcoords="offset points", xytext=(4, -10), fontsize=6)
    for w, ax in panels.items():
        ax.set_xticks(range(len(ticks[w])), ticks[w])
        ax.set_xlim(-0.6, len(ticks[w]) - 0.4)
    finish_panels(fig, panels, out, xlabel="SAE configuration",
                  ylabel="share of surface-form explanations")
