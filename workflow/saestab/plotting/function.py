"""Figures of the functional and surface-form analysis (claims C3, C4), trained and random weights
side by side. A configuration is a dict with ``model, weights, hook, variant`` and ``dir``, the
directory the masking and surface rules wrote (``masking.parquet``, ``features.parquet``, ...).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .. import stability
from ..masking import SET_ORDER
from ..surface import frequency_bins
from .base import WEIGHTS_ORDER, Config, finish_panels, label, save, style, weights_panels

SET_LABELS = {
    "stable": "all stable", "unstable": "all unstable", "stable_matched": "stable (mass)",
    "unstable_matched": "unstable (mass-matched)", "stable_energy_matched": "stable (energy)",
    "unstable_energy_matched": "unstable (energy-matched)", "null_stable": "null: random",
    "null_matched": "null: random (mass-matched)",
    "null_energy_matched": "null: random (energy-matched)", "random_n_stable": "random, n(stable)",
    "random_n_unstable": "random, n(unstable)",
}


PAIR_LABELS = {"mass": "stable /\nmass-matched",
               "energy": "stable /\nenergy-matched",
               "null_mass": "null: random /\nmass-matched",
               "null_energy": "null: random /\nenergy-matched"}
METRIC_NAMES = {"delta_ev": "ΔEV", "delta_ce_err": "ΔCE (error kept)"}


def _summary(c: Config) -> dict:
    return json.loads((Path(c["dir"]) / "masking_summary.json").read_text())


def _bars(configs: Sequence[Config], out: str | Path, metrics: Sequence[tuple[str, str]],
          ) -> None:
    """Grouped bars of ``metric`` per feature set (mean and t-interval over anchors): one row
    per metric, one column per weights, one colour per configuration."""
    style()
    weights = [w for w in WEIGHTS_ORDER if any(c["weights"] == w for c in configs)]
    fig, axes = plt.subplots(len(metrics) + 1, len(weights), figsize=(7.5 * len(weights),
                             3.3 * (len(metrics) + 1)), squeeze=False)
    x = np.arange(len(SET_ORDER))
    for col, w in enumerate(weights):
        cs = [c for c in configs if c["weights"] == w]
        width = 0.8 / max(len(cs), 1)
        for row, (metric, ylabel) in enumerate(metrics):
            ax = axes[row, col]
            for i, c in enumerate(cs):
                sets = _summary(c)["sets"]
                if metric not in sets.get("none", {}):
                    continue
                nan = {"mean": np.nan, "ci_low": np.nan, "ci_high": np.nan}
                shown = [sets.get(s, {}).get(metric, nan) for s in SET_ORDER]
                mean = np.array([v["mean"] for v in shown])
                lo = np.array([v["ci_low"] for v in shown])
                hi = np.array([v["ci_high"] for v in shown])
                err = np.nan_to_num(np.vstack([mean - lo, hi - mean]))
                ax.bar(x + (i - (len(cs) - 1) / 2) * width, mean, width, yerr=err, capsize=2,
                       color=f"C{i}", label=label(c))
            ax.axhline(0, color="k", lw=0.6)
            ax.set_xticks(x, [SET_LABELS[s] for s in SET_ORDER] if row == len(metrics) - 1
                          else [""] * len(x), rotation=30, ha="right")
            ax.set_ylabel(ylabel)
            if row == 0:
                ax.set_title(f"{w} weights")
                if ax.get_legend_handles_labels()[0]:
                    ax.legend(fontsize=8)
        _ratios(axes[len(metrics), col], cs, metrics[0][0])
    fig.tight_layout()
    save(fig, out)


def _ratios(ax: plt.Axes, configs: Sequence[Config], metric: str) -> None:
    """The C3 ratios (stable side / matched side, ratio of means over anchors with the
    leave-one-anchor-out jackknife interval) for the mass- and energy-matched pairs and the null
    pairs of equal effect, which should sit at 1."""
    pairs = list(PAIR_LABELS)
    x = np.arange(len(pairs))
    width = 0.8 / max(len(configs), 1)
    for i, c in enumerate(configs):
        c3 = _summary(c).get("c3", {})
        blocks = {"mass": c3.get("mass"), "energy": c3.get("energy"),
                  "null_mass": (c3.get("null") or {}).get("mass"),
                  "null_energy": (c3.get("null") or {}).get("energy")}
        got = [((blocks[p] or {}).get(metric) or {}).get("ratio") for p in pairs]
        if not any(got):
            continue
        nan = {"mean": np.nan, "ci_low": np.nan, "ci_high": np.nan}
        r = [g or nan for g in got]
        mean = np.array([v["mean"] for v in r])
        err = np.nan_to_num(np.abs(np.vstack([mean - np.array([v["ci_low"] for v in r]),
                                               np.array([v["ci_high"] for v in r]) - mean])))
        ax.bar(x + (i - (len(configs) - 1) / 2) * width, mean, width, yerr=err, capsize=2,
               color=f"C{i}", label=label(c))
    ax.axhline(1, color="k", lw=0.8, ls="--")
    ax.set_xticks(x, [PAIR_LABELS[p] for p in pairs])
    ax.set_ylabel(f"{METRIC_NAMES.get(metric, metric)} ratio, ratio of means\n"
                  "(jackknife over anchors)")


def masking_ev(configs: Sequence[Config], out: str | Path) -> None:
    """Drop in explained variance when each feature set is masked."""
    _bars(configs, out, [("delta_ev", "ΔEV (eval split)")])


def masking_ce(configs: Sequence[Config], out: str | Path) -> None:
    """Rise in next-token cross-entropy with the masked reconstruction spliced in, with the SAE
    error term kept (only the features' effect) and without it."""
    _bars(configs, out, [("delta_ce_err", "ΔCE, error term kept (nats)"),
                         ("delta_ce_noerr", "ΔCE, reconstruction only (nats)")])


def _features(c: Config) -> pd.DataFrame:
    """The surface table's live features (dead ones enter no stable/unstable comparison)."""
    df = stability.read_table(Path(c["dir"]) / "features.parquet")
    return df[df["live"]] if "live" in df else df


def frequency(configs: Sequence[Config], out: str | Path) -> None:
    """Distribution of log10 firing frequency of stable and unstable features (all anchors)."""
    style()
    fig, panels = weights_panels(configs)
    for i, c in enumerate(configs):
        df = _features(c)
        live = df[df["frequency"] > 0]
        edges = np.linspace(np.log10(live["frequency"].min()), 0, 30)
        for lab, ls in (("stable", "-"), ("unstable", "--")):
            v = np.log10(live.loc[live["label"] == lab, "frequency"])
            if len(v):
                panels[c["weights"]].hist(v, bins=edges, density=True, histtype="step", ls=ls,
                                          color=f"C{i}", lw=1.4, label=f"{label(c)} {lab}")
    finish_panels(fig, panels, out, xlabel="log10 firing frequency", ylabel="density",
                  ylim=(0, None), legend_size=7)


def surface_form(configs: Sequence[Config], out: str | Path) -> None:
    """Top-token share and punctuation share of stable and unstable features within
    log-frequency bins (the frequency-matched view of surface form)."""
    style()
    weights = [w for w in WEIGHTS_ORDER if any(c["weights"] == w for c in configs)]
    metrics = [("top_token_share", "share of top activations\non the most common token"),
               ("punct_share", "share of top activations\non punctuation")]
    fig, axes = plt.subplots(len(metrics), len(weights), figsize=(4.8 * len(weights), 6.4),
                             squeeze=False, sharey="row")
    for i, c in enumerate(configs):
        df = _features(c)
        col = weights.index(c["weights"])
        bins, edges = frequency_bins(df["frequency"].to_numpy(), 8)
        centres = 0.5 * (edges[1:] + edges[:-1])
        for row, (metric, ylabel) in enumerate(metrics):
            ax = axes[row, col]
            for lab, marker, ls in (("stable", "o", "-"), ("unstable", "x", "--")):
                sel = df["label"].to_numpy() == lab
                means = [df.loc[sel & (bins == b), metric].mean() if np.sum(sel & (bins == b))
                         >= 3 else np.nan for b in range(len(centres))]
                ax.plot(centres, means, marker=marker, ls=ls, color=f"C{i}", ms=4,
                        label=f"{label(c)} {lab}")
            ax.set(ylim=(-0.02, 1.02), ylabel=ylabel if col == 0 else "")
            if row == 0:
                ax.set_title(f"{c['weights']} weights")
            if row == len(metrics) - 1:
                ax.set_xlabel("log10 firing frequency (bin centre)")
    for ax in axes.ravel():
        if ax.lines:
            ax.legend(fontsize=7)
    save(fig, out)


FIGURES: dict[str, Callable[[Sequence[Config], str | Path], None]] = {
    "masking_ev": masking_ev,
    "masking_ce": masking_ce,
    "frequency": frequency,
    "surface_form": surface_form,
}
