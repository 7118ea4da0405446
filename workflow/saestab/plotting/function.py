"""Figures of the functional and surface-form analysis (claims C3, C4), trained and random weights
side by side. A configuration is a dict with ``model, weights, hook, variant`` and ``dir``, the
directory the masking and surface rules wrote (``masking.parquet``, ``features.parquet``, ...).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter

from .. import stability
from ..masking import SET_ORDER
from ..surface import binned_profile
from .base import (
    INTERVAL_ALPHA,
    LABEL_STYLES,
    WEIGHTS_ORDER,
    Config,
    band,
    colour_key,
    colours,
    interval_errors,
    label,
    label_key,
    legend_below,
    panels,
    save,
    weights_panels,
)

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


RATIO_LINEAR_LIMIT = 10.0  # ratio axes switch to symlog past this, so that 1 stays readable


def _summary(c: Config, name: str = "masking_summary.json") -> dict:
    return json.loads((Path(c["dir"]) / name).read_text())


def _set_bars(ax: plt.Axes, configs: Sequence[Config], metric: str, sets: Sequence[str],
              colour: Mapping[str, str]) -> None:
    """Horizontal bars of ``metric`` per feature set, one colour per configuration: the mean
    over anchor SAEs with its 95% t interval over them (each anchor SAE is one unit)."""
    y = np.arange(len(sets))
    height = 0.8 / max(len(configs), 1)
    for i, c in enumerate(configs):
        got = _summary(c)["sets"]
        mean, err = interval_errors([got.get(s, {}).get(metric) for s in sets])
        ax.barh(y + (i - (len(configs) - 1) / 2) * height, mean, height, xerr=err,
                color=colour[label(c)], label=label(c),
                error_kw={"capsize": 2, "elinewidth": 0.9})
    ax.axvline(0, color="k", lw=0.6)
    ax.set_yticks(y, [SET_LABELS[s] for s in sets])
    ax.set_ylim(len(sets) - 0.5, -0.5)  # first set on top


def _ratio_bars(ax: plt.Axes, configs: Sequence[Config], metric: str,
                colour: Mapping[str, str]) -> None:
    """The C3 ratios (stable side / matched side, ratio of means over anchors with the
    leave-one-anchor-out jackknife interval) for the mass- and energy-matched pairs and the null
    pairs of equal effect, which should sit at 1 (dashed)."""
    pairs = list(PAIR_LABELS)
    y = np.arange(len(pairs))
    height = 0.8 / max(len(configs), 1)
    reach = 0.0
    for i, c in enumerate(configs):
        c3 = _summary(c).get("c3", {})
        blocks = {"mass": c3.get("mass"), "energy": c3.get("energy"),
                  "null_mass": (c3.get("null") or {}).get("mass"),
                  "null_energy": (c3.get("null") or {}).get("energy")}
        got = [((blocks[p] or {}).get(metric) or {}).get("ratio") for p in pairs]
        mean, err = interval_errors(got)
        ax.barh(y + (i - (len(configs) - 1) / 2) * height, mean, height, xerr=err,
                color=colour[label(c)], label=label(c),
                error_kw={"capsize": 2, "elinewidth": 0.9})
        ends = np.abs(np.r_[mean - err[0], mean + err[1]])
        reach = max(reach, float(np.nanmax(ends)) if np.isfinite(ends).any() else 0.0)
    ax.axvline(1, color="k", lw=0.8, ls="--")
    ax.axvline(0, color="k", lw=0.6)
    if reach > RATIO_LINEAR_LIMIT:  # a ratio of two near-zero effects: keep 1 readable
        ax.set_xscale("symlog", linthresh=1)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_yticks(y, [PAIR_LABELS[p] for p in pairs])
    ax.set_ylim(len(pairs) - 0.5, -0.5)


def _masking_figure(configs: Sequence[Config], out: str | Path,
                    metrics: Sequence[tuple[str, str, str]], ratio_metric: str) -> None:
    """One row per weights setting: a panel per ``(metric, title, axis label)`` over the feature
    sets (the first with the set names, the others sharing its rows) and the C3 ratio panel of
    ``ratio_metric``."""
    weights = [w for w in WEIGHTS_ORDER if any(c["weights"] == w for c in configs)]
    colour = colours(configs)
    ncols = len(metrics) + 1
    fig, axes = panels(len(weights), ncols, 3.4,
                       gridspec_kw={"width_ratios": [1.0] * len(metrics) + [0.8]})
    for row, w in enumerate(weights):
        cs = [c for c in configs if c["weights"] == w]
        for col, (metric, title, xlabel) in enumerate(metrics):
            ax = axes[row, col]
            _set_bars(ax, cs, metric, SET_ORDER, colour)
            ax.set(xlabel=xlabel, title=f"{w} weights\n{title}")
            if col:
                ax.sharey(axes[row, 0])
                ax.tick_params(labelleft=False)
        ax = axes[row, -1]
        _ratio_bars(ax, cs, ratio_metric, colour)
        ax.set(xlabel=f"{METRIC_NAMES.get(ratio_metric, ratio_metric)} ratio",
               title=f"{w} weights\nC3 ratios")
    legend_below(fig, title="bars: mean over anchor SAEs with 95% interval over them (ratios: "
                            "ratio of means, jackknife over anchors); dashed: ratio 1")
    save(fig, out)


def masking_ev(configs: Sequence[Config], out: str | Path) -> None:
    """Drop in explained variance when each feature set is masked, and the C3 ratios."""
    _masking_figure(configs, out, [("delta_ev", "ΔEV per set", "ΔEV (eval split)")],
                    "delta_ev")


def masking_ce(configs: Sequence[Config], out: str | Path) -> None:
    """Rise in next-token cross-entropy with the masked reconstruction spliced in, with the SAE
    error term kept (only the features' effect) for every set and without it (the
    reconstruction alone) for the sets measured that way, and the C3 ratios of the former."""
    _masking_figure(configs, out, [("delta_ce_err", "error term kept", "ΔCE (nats)"),
                                   ("delta_ce_noerr", "reconstruction only", "ΔCE (nats)")],
                    "delta_ce_err")


def _features(c: Config) -> pd.DataFrame:
    """The surface table's live features (dead ones enter no stable/unstable comparison)."""
    df = stability.read_table(Path(c["dir"]) / "features.parquet")
    return df[df["live"]] if "live" in df else df


def frequency(configs: Sequence[Config], out: str | Path) -> None:
    """Distribution of log10 firing frequency of stable and unstable features (all anchors), and
    each label's median frequency: the mean over anchor SAEs of their medians with its 95%
    interval over them (shaded; each anchor's ratio of these medians is the C4 statistic)."""
    fig, axes = weights_panels(configs)
    for i, c in enumerate(configs):
        df = _features(c)
        s = _summary(c, "surface_summary.json")
        live = df[df["frequency"] > 0]
        edges = np.linspace(np.log10(live["frequency"].min()), 0, 30)
        ax = axes[c["weights"]]
        for lab, ls in LABEL_STYLES:
            v = np.log10(live.loc[live["label"] == lab, "frequency"])
            if not len(v):
                continue
            ax.hist(v, bins=edges, density=True, histtype="step", ls=ls, color=f"C{i}", lw=1.4)
            med = s[f"median_frequency_{lab}"]
            ax.axvline(np.log10(med["mean"]), color=f"C{i}", ls=ls, lw=0.9)
            if np.isfinite(med["ci_low"]) and med["ci_low"] > 0:
                ax.fill_betweenx([0, 1], np.log10(med["ci_low"]), np.log10(med["ci_high"]),
                                 transform=ax.get_xaxis_transform(), color=f"C{i}",
                                 alpha=INTERVAL_ALPHA, lw=0)
    for w, ax in axes.items():
        ax.set(title=f"{w} weights", xlabel="log10 firing frequency (train split)", ylim=(0, None))
    next(iter(axes.values())).set_ylabel("density")
    legend_below(fig, extra=colour_key(configs) + label_key(),
                 title="vertical lines: each label's median frequency, mean over anchor SAEs; "
                       "shaded: its 95% interval over them")
    save(fig, out)


def surface_form(configs: Sequence[Config], out: str | Path) -> None:
    """Top-token share and punctuation share of stable and unstable features within
    log-frequency bins (the frequency-matched view of surface form): the mean over anchor SAEs
    of each anchor's bin mean, with its 95% interval over them
    (:func:`saestab.surface.binned_profile`)."""
    weights = [w for w in WEIGHTS_ORDER if any(c["weights"] == w for c in configs)]
    metrics = [("top_token_share", "share of top activations\non the most common token"),
               ("punct_share", "share of top activations\non punctuation")]
    fig, axes = panels(len(metrics), len(weights), 3.0, sharey="row")
    for i, c in enumerate(configs):
        df = _features(c)
        col = weights.index(c["weights"])
        for row, (metric, ylabel) in enumerate(metrics):
            ax = axes[row, col]
            prof = binned_profile(df, metric)
            for lab, ls in LABEL_STYLES:
                p = prof[prof["label"] == lab]
                ax.plot(p["log10_freq_centre"], p["mean"], marker="o", ls=ls, color=f"C{i}",
                        ms=4)
                band(ax, p["log10_freq_centre"], p["ci_low"], p["ci_high"], f"C{i}")
            ax.set(ylim=(-0.02, 1.02), ylabel=ylabel if col == 0 else "")
            if row == 0:
                ax.set_title(f"{c['weights']} weights")
            if row == len(metrics) - 1:
                ax.set_xlabel("log10 firing frequency (bin centre)")
    legend_below(fig, extra=colour_key(configs) + label_key(),
                 title="shaded: 95% interval over anchor SAEs")
    save(fig, out)


FIGURES: dict[str, Callable[[Sequence[Config], str | Path], None]] = {
    "masking_ev": masking_ev,
    "masking_ce": masking_ce,
    "frequency": frequency,
    "surface_form": surface_form,
}
