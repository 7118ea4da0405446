"""Figure of the optional auto-interp stage: share of surface-form explanations.

A configuration is a dict with ``model, weights, hook, variant`` and ``dir`` (its auto-interp
directory holding ``summary.json``, as written by :func:`saestab.autointerp.write_outputs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .. import io
from .base import MIN_FONT_PT, Config, errorbars, finish_panels, label, weights_panels

LABEL_STYLE = {"stable": ("C0", "o"), "unstable": ("C3", "s")}


def surface_share(configs: Sequence[Config], out: str | Path) -> None:
    """Share of surface-form explanations among stable and unstable features, one column per
    configuration, trained and random weights side by side: the 95% interval over anchor SAEs
    (each anchor's share one value; thick, where there are three anchors or more) beside the
    Wilson interval over the explained features (thin, grey)."""
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
            at = x + (j - 0.5) * 0.3
            wilson = {"mean": d["surface_share"], "ci_low": d["ci_low"], "ci_high": d["ci_high"]}
            errorbars(ax, [at + 0.06], [wilson], color="0.55", capsize=0, elinewidth=0.8,
                      marker="none")
            # None (no anchor column) draws no whisker rather than a certain-looking one
            errorbars(ax, [at], [d.get("seed_level")], color=color, marker="none", capsize=3)
            ax.plot([at], [d["surface_share"]], color=color, marker=marker, ls="none",
                    label=f"{lab} features")
            ax.annotate(f"n={d['n_surface'] + d['n_semantic']}", (at, d["surface_share"]),
                        textcoords="offset points", xytext=(4, -10), fontsize=MIN_FONT_PT)
    for w, ax in panels.items():
        ax.set_xticks(range(len(ticks[w])), ticks[w])
        ax.set_xlim(-0.6, len(ticks[w]) - 0.4)
    finish_panels(fig, panels, out, xlabel="SAE configuration",
                  ylabel="share of surface-form explanations",
                  legend_title="coloured whiskers: 95% interval over anchor SAEs; grey: Wilson "
                               "interval over features")
