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

from .. import stability
from ..pooling import KINDS
from .base import WEIGHTS_ORDER, Config, label, save, style

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
    """CDF of the best cross-subset match cosine, pools vs standard SAEs (one panel per weights
    setting, one colour per variant), and a panel of EV per configuration and kind."""
    style()
    weights = [w for w in WEIGHTS_ORDER if any(c["weights"] == w for c in configs)]
    fig, axes = plt.subplots(1, len(weights) + 1, figsize=(4.6 * (len(weights) + 1), 3.8),
                             squeeze=False)
    panels = dict(zip(weights, axes[0][:len(weights)], strict=True))
    theta = None
    for i, c in enumerate(configs):
        s = _summary(c)
        theta = s["theta"]
        cross = stability.read_table(Path(c["dir"]) / "cross_maxcos.parquet",
                                     what="pool cross max-cosine table")
        ax = panels[c["weights"]]
        for kind in ("standard", "pool_before", "pool_after"):
            x, F = stability.ecdf(cross.loc[cross["kind"] == kind, "max_cos"].to_numpy())
            ax.step(np.r_[x[:1], x], np.r_[0, F], where="post", color=f"C{i}",
                    ls=KIND_STYLE[kind], label=f"{label(c)}: {KIND_LABELS[kind]}")
    for w, ax in panels.items():
        if theta is not None:
            ax.axvline(theta, color="0.5", lw=0.8)
        ax.set(title=f"{w} weights", xlabel="best match cosine in the other subset",
               ylim=(0, 1.01), xlim=(-0.02, 1.02))
        ax.legend(loc="upper left", fontsize=6)
    next(iter(panels.values())).set_ylabel("fraction of features ≤ cosine")

    ax = axes[0][-1]  # EV: colour = configuration (as in the CDFs), marker = kind
    names = []
    for i, c in enumerate(configs):
        s = _summary(c)
        names.append(f"{c['weights']}\n{label(c)}")
        for j, kind in enumerate(KINDS):
            e = s["ev"][kind]
            sd = e["std"] if np.isfinite(e["std"]) else 0.0
            ax.errorbar(i + (j - 1.5) * 0.15, e["mean"], yerr=sd, marker=KIND_MARKER[kind],
                        color=f"C{i}", ls="none")
    for kind in KINDS:
        ax.plot([], [], marker=KIND_MARKER[kind], color="0.3", ls="none",
                label=KIND_LABELS[kind])
    ax.set_xticks(range(len(configs)), names, fontsize=7)
    ax.set(ylabel="explained variance (eval)", title="explained variance",
           xlim=(-0.6, len(configs) - 0.4))
    ax.legend(fontsize=6, loc="best")
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
