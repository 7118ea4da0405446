"""Figure and table of the feature pools (C7).

A configuration is a dict with ``model, weights, hook, variant`` and ``dir`` (its pool directory,
as written by :func:`saestab.pooling.write_pools`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from .. import stability
from ..pooling import KINDS, split_intervals
from .base import (
    WEIGHTS_ORDER,
    WIDTH,
    Config,
    colour_key,
    errorbars,
    label,
    legend_below,
    save,
    style,
)

KIND_LABELS = {
    "standard": "standard SAEs (cross-seed)",
    "standard_continued": "standard, continued",
    "pool_before": "pool, before post-training",
    "pool_after": "pool, post-trained",
}
KIND_STYLE = {"standard": "--", "standard_continued": ":", "pool_before": "-.",
              "pool_after": "-"}
KIND_MARKER = {"standard": "o", "standard_continued": "s", "pool_before": "v",
               "pool_after": "D"}


def _summary(c: Config) -> dict:
    return json.loads((Path(c["dir"]) / "summary.json").read_text())


def pool_stability(configs: Sequence[Config], out: str | Path) -> None:
    """Top: CDF of the best cross-subset match cosine, pools vs standard SAEs, on the first seed
    split (one panel per weights setting, one colour per configuration; the share right of θ is
    the mutual stability), and beside θ one minus the mutual stability over all seed splits with
    its interval. Bottom: explained variance per configuration and kind (mean over the
    SAEs of the first split with a t interval over them) and mutual stability (mean over all
    seed splits with a t interval over them, :func:`saestab.pooling.split_intervals`)."""
    weights = [w for w in WEIGHTS_ORDER if any(c["weights"] == w for c in configs)]
    top = weights if len(weights) > 1 else weights * 2
    style()
    fig, axes = plt.subplot_mosaic([top, ["ev", "stability"]], figsize=(WIDTH, 6.4),
                                   layout="constrained")
    theta = None
    for i, c in enumerate(configs):
        s = _summary(c)
        theta = s["theta"]
        cross = stability.read_table(Path(c["dir"]) / "cross_maxcos.parquet",
                                     what="pool cross max-cosine table")
        ax = axes[c["weights"]]
        mutual = split_intervals(s["splits"])["mutual_stability"]
        shown = ("standard", "pool_before", "pool_after")
        for j, kind in enumerate(shown):
            x, F = stability.ecdf(cross.loc[cross["kind"] == kind, "max_cos"].to_numpy())
            ax.step(np.r_[x[:1], x], np.r_[0, F], where="post", color=f"C{i}",
                    ls=KIND_STYLE[kind])
            if kind in mutual:  # 1 − mutual stability over all splits, beside θ
                m = mutual[kind]
                at = theta + (j - (len(shown) - 1) / 2) * 0.02
                errorbars(ax, [at], [{"mean": 1 - m["mean"], "ci_low": 1 - m["ci_high"],
                                      "ci_high": 1 - m["ci_low"]}], color=f"C{i}", ms=4,
                          marker=KIND_MARKER[kind])
    for j, w in enumerate(weights):
        ax = axes[w]
        if theta is not None:
            ax.axvline(theta, color="0.5", lw=0.8)
        ax.set(title=f"{w} weights (curves: first seed split)",
               xlabel="best match cosine in the other subset", ylim=(0, 1.01), xlim=(-0.02, 1.02))
        if j == 0:
            ax.set_ylabel("fraction of features ≤ cosine")

    names = [label(c).replace(" ", "\n", 1) for c in configs]
    for key, title, ylabel in (("ev", "explained variance", "explained variance (eval)"),
                               ("stability", "mutual stability over seed splits",
                                "share of features matched\nin the other subset (≥ θ)")):
        ax = axes[key]
        for i, c in enumerate(configs):
            s = _summary(c)
            got = s["ev"] if key == "ev" else split_intervals(s["splits"])["mutual_stability"]
            shown = [k for k in KINDS if k in got]
            for j, kind in enumerate(shown):
                errorbars(ax, [i + (j - (len(shown) - 1) / 2) * 0.15], [got[kind]],
                          marker=KIND_MARKER[kind], color=f"C{i}", ms=5)
        ax.set_xticks(range(len(configs)), names)
        ax.set(ylabel=ylabel, title=title, xlim=(-0.6, len(configs) - 0.4))
    legend_below(fig, extra=colour_key(configs) + [
        Line2D([], [], marker=KIND_MARKER[k], ls=KIND_STYLE[k], color="0.3", label=KIND_LABELS[k])
        for k in KINDS],
                 title="whiskers: 95% intervals (EV: over the SAEs of the first split; mutual "
                       "stability, and 1 − it at θ: over seed splits, which share seeds)")
    save(fig, out)


def pool_table(configs: Sequence[Config]) -> pd.DataFrame:
    """Per configuration and kind: EV and mutual stability (mean, sd) and the pools' size."""
    rows = []
    for c in configs:
        s = _summary(c)
        unique = [p["n_unique"] for p in s["pools"]]
        for kind in KINDS:
            rows.append({
                "model": c["model"], "weights": c["weights"], "hook": c["hook"],
                "variant": c["variant"], "kind": kind, "seeds": s["n_seeds"],
                "pools": s["n_pools"], "latents": s["d_sae"],
                "post_train_tokens": s["post_train_tokens"],
                "ev": s["ev"][kind]["mean"], "ev_sd": s["ev"][kind]["std"],
                "n_saes": s["ev"][kind]["n"],
                "mutual_stability": s["mutual_stability"][kind]["mean"],
                "mutual_stability_sd": s["mutual_stability"][kind]["std"],
                "n_pairs": s["mutual_stability"][kind]["n"],
                "n_unique_min": min(unique), "n_unique_max": max(unique),
            })
    return pd.DataFrame(rows)


def pool_table_markdown(df: pd.DataFrame) -> str:
    """The pool table as markdown: one row per configuration, kinds side by side."""
    def cell(mean: float, sd: float, digits: int = 3) -> str:
        out = f"{mean:.{digits}f}"
        return out if not np.isfinite(sd) else f"{out} ± {sd:.{digits}f}"

    head = ["model", "weights", "hook", "variant", "unique / latents"]
    head += [f"EV {k}" for k in KINDS] + [f"mutual stab. {k}" for k in KINDS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, g in df.groupby(["model", "weights", "hook", "variant"], sort=False):
        r = g.set_index("kind")
        first = g.iloc[0]
        cells = [first["model"], first["weights"], first["hook"], first["variant"],
                 f"{first['n_unique_min']}–{first['n_unique_max']} / {first['latents']}"]
        cells += [cell(r.loc[k, "ev"], r.loc[k, "ev_sd"]) for k in KINDS]
        cells += [cell(r.loc[k, "mutual_stability"], r.loc[k, "mutual_stability_sd"])
                  for k in KINDS]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines) + "\n"
