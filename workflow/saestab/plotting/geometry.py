"""Figures of the subspace analysis (C5) and of the synthetic low-rank model (C6).

A geometry *configuration* is a dict with ``model, weights, hook, variant`` and ``dir`` (its
geometry directory, as written by :func:`saestab.subspaces.write_geometry`); a synthetic one has
``dir`` pointing at its recovery directory (:func:`saestab.synthetic.write_recovery`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from ..subspaces import median_angle_intervals
from .base import WIDTH, Config, errorbars, interval_errors, legend_below, panels, save

SET_COLORS = {"unstable": "C3", "stable": "C0", "random": "0.5"}
TRANSFER_BARS = (("cross", "cross-seed", "C3"), ("within", "within-seed (held out)", "C1"),
                 ("covariance", "covariance-matched random", "C4"),
                 ("pca", "PCA of activations", "C2"), ("stable", "stable subspace", "C0"),
                 ("random", "random (r/d)", "0.6"))
GRID_COLUMNS = 3  # per-configuration panels in rows of this many


def config_label(c: Config) -> str:
    """Short panel title: weights and variant (model and hook too when the study has several)."""
    base = f"{c['weights']} {c['variant']}"
    if c["weights"] == "synthetic" or not c.get("single_model", True):
        return f"{c['model']} {base}" if c["weights"] == "synthetic" else \
            f"{c['model']} {c['hook']} {base}"
    return base


def _read(c: Config, name: str) -> pd.DataFrame:
    return pd.read_parquet(Path(c["dir"]) / name)


def _summary(c: Config) -> dict:
    return json.loads((Path(c["dir"]) / "summary.json").read_text())


def _grid(n: int, row_height: float = 2.8) -> tuple[plt.Figure, list[plt.Axes]]:
    cols = min(n, GRID_COLUMNS)
    fig, axes = panels(-(-n // cols), cols, row_height)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def spectra(configs: Sequence[Config], out: str | Path) -> None:
    """Cumulative singular-value energy of each seed's unit decoder directions: unstable vs
    stable features vs random unit vectors as many as the unstable ones (one thin line per
    seed: the spread over seeds)."""
    fig, axes = _grid(len(configs))
    for ax, c in zip(axes, configs, strict=True):
        sp = _read(c, "spectra.parquet")
        s = _summary(c)
        for name, color in SET_COLORS.items():
            sub = sp[sp["set"] == name]
            for _, g in sub.groupby("seed"):
                ax.plot(g["index"], g["cumulative"], color=color, lw=0.8, alpha=0.7)
            if len(sub):
                ax.plot([], [], color=color, label=f"{name} features (one line per seed)"
                        if name != "random" else "random unit vectors (one line per seed)")
        ax.axhline(s["energy"], color="k", ls=":", lw=0.8)
        ax.axvline(s["d"], color="k", ls="--", lw=0.6)
        ax.set(title=config_label(c), xlabel="singular direction", ylim=(0, 1.02))
    axes[0].set_ylabel("cumulative share of squared norm")
    legend_below(fig, extra=[Line2D([], [], color="k", ls=":", lw=0.8,
                                    label="energy threshold setting the rank r"),
                             Line2D([], [], color="k", ls="--", lw=0.6, label="d")])
    save(fig, out)


def rank_vs_count(configs: Sequence[Config], out: str | Path) -> None:
    """Energy-threshold rank against the number of directions, for subsamples of each set: one
    point per seed and subsample (the spread over seeds), lines through their means."""
    fig, axes = _grid(len(configs))
    for ax, c in zip(axes, configs, strict=True):
        rk = _read(c, "ranks.parquet")
        s = _summary(c)
        for name, color in SET_COLORS.items():
            sub = rk[rk["set"] == name]
            if len(sub):
                ax.scatter(sub["n"], sub["energy_rank"], s=10, color=color, alpha=0.7,
                           label=f"{name}: one point per seed and subsample")
                mean = sub.groupby("fraction")[["n", "energy_rank"]].mean()
                ax.plot(mean["n"], mean["energy_rank"], color=color, lw=1)
        lim = max(rk["n"].max(), 1) if len(rk) else 1
        ax.plot([0, lim], [0, lim], color="k", lw=0.5, ls=":")
        ax.axhline(s["d"], color="k", ls="--", lw=0.6)
        ax.set(title=config_label(c), xlabel="number of features",
               ylim=(0, min(s["d"], lim) * 1.08))
    axes[0].set_ylabel(f"rank at {_summary(configs[0])['energy']:.0%} energy")
    legend_below(fig, extra=[Line2D([], [], color="k", ls=":", lw=0.5, label="rank = count"),
                             Line2D([], [], color="k", ls="--", lw=0.6, label="d")])
    save(fig, out)


def transfer(configs: Sequence[Config], out: str | Path) -> None:
    """Share of seed b's held-out unstable directions (top) and of their reconstruction
    contribution (bottom) inside seed a's unstable subspace, beside the baselines: means over
    seed pairs with 95% percentile-bootstrap intervals over seeds."""
    fig, axes = panels(2, 1, 2.9, sharex=True)
    width = 0.8 / len(TRANSFER_BARS)
    for ax, level in zip(axes[:, 0], ("directions", "activations"), strict=True):
        for k, (kind, name, color) in enumerate(TRANSFER_BARS):
            xs, shown = [], []
            for i, c in enumerate(configs):
                st = _summary(c)["transfer"].get(level, {}).get(kind)
                if st is None or not np.isfinite(st["mean"]):
                    continue
                xs.append(i + (k - (len(TRANSFER_BARS) - 1) / 2) * width)
                shown.append(st)
            mean, err = interval_errors(shown)
            ax.bar(xs, mean, width, color=color, label=name, yerr=err, capsize=1.5,
                   error_kw={"lw": 0.8})
        ax.set(title=f"{level}: share of b's held-out unstable {level} in a's subspace",
               ylim=(0, 1.02), ylabel="share of squared norm")
    ax.set_xticks(range(len(configs)), [config_label(c) for c in configs], rotation=15,
                  ha="right")
    legend_below(fig, title="bars: mean over seed pairs, 95% bootstrap interval over seeds")
    save(fig, out)


def angles(configs: Sequence[Config], out: str | Path) -> None:
    """Principal angles between two seeds' unstable subspaces (rank min(r_a, r_b)) vs between
    two random subspaces of the same dimension (all seed pairs pooled), and above them each
    kind's median angle per seed pair, averaged over pairs, with its leave-one-seed-out
    jackknife interval (:func:`saestab.subspaces.median_angle_intervals`)."""
    fig, axes = _grid(len(configs))
    bins = np.linspace(0, 90, 31)
    kinds = (("cross", "C3", "between seeds"), ("random", "0.5", "random subspaces"))
    for ax, c in zip(axes, configs, strict=True):
        an = _read(c, "angles.parquet")
        for kind, color, name in kinds:
            sub = an.loc[an["kind"] == kind, "angle_deg"]
            if len(sub):
                ax.hist(sub, bins=bins, color=color, alpha=0.55, density=True, label=name)
        top = ax.get_ylim()[1]
        medians = median_angle_intervals(an) if len(an) else {}
        for j, (kind, color, _) in enumerate(kinds):
            if kind in medians:
                errorbars(ax, [top * (1.08 + 0.1 * j)], [medians[kind]], horizontal=True,
                          color=color, marker="v", ms=5)
        ax.set_ylim(0, top * 1.3)
        r = int(an["r"].median()) if len(an) else 0
        ax.set(title=f"{config_label(c)} (r≈{r})", xlabel="principal angle (degrees)")
    axes[0].set_ylabel("density")
    legend_below(fig, extra=[Line2D([], [], color="0.3", marker="v", ms=5,
                                    label="median angle of a seed pair, mean over pairs")],
                 title="whiskers: 95% interval, jackknife over seeds")
    save(fig, out)


FIGURES: dict[str, Callable[[Sequence[Config], str | Path], None]] = {
    "spectra": spectra,
    "rank_vs_count": rank_vs_count,
    "transfer": transfer,
    "angles": angles,
}


# ------------------------------------------------------------------------------------------
# synthetic model
# ------------------------------------------------------------------------------------------
def _kind_label(kind: str, rank: int) -> str:
    return "point" if kind == "point" else f"r={rank}"


def _ordered(rows: Sequence[dict]) -> list[dict]:
    """Point features first, then groups by rank."""
    return sorted(rows, key=lambda r: (r["kind"] != "point", r["rank"]))


def recovery_by_rank(configs: Sequence[Config], out: str | Path) -> None:
    """Per component type (point features, groups of rank r): per-latent stability of the
    latents assigned to it vs how well the span of those latents recovers the true subspace and
    agrees across seeds, each with its 95% interval over SAE seeds
    (:func:`saestab.synthetic.recovery_intervals`; the ground truth itself is fixed)."""
    fig, axes = _grid(len(configs), row_height=3.2)
    quantities = (("latent_p_hat", "latent stability p̂ (mean)", "C3", "o"),
                  ("latent_stable_fraction", "latents labelled stable", "C1", "s"),
                  ("truth_overlap", "subspace recovery (mean cos² to truth)", "C0", "^"),
                  ("cross_seed_overlap", "cross-seed subspace agreement (mean cos²)", "C2",
                   "v"))
    for ax, c in zip(axes, configs, strict=True):
        rows = _ordered(_summary(c)["intervals"]["by_rank"])
        x = np.arange(len(rows))
        for k, (key, name, color, marker) in enumerate(quantities):
            shift = (k - (len(quantities) - 1) / 2) * 0.08  # whiskers side by side
            mean, _ = interval_errors([r[key] for r in rows])
            ax.plot(x + shift, mean, color=color, lw=1, label=name)
            errorbars(ax, x + shift, [r[key] for r in rows], color=color, marker=marker, ms=4)
        ax.set_xticks(x, [_kind_label(r["kind"], r["rank"]) for r in rows])
        ax.set(title=config_label(c), ylim=(-0.02, 1.05), ylabel="value",
               xlabel="ground-truth component: point feature or group of rank r")
    legend_below(fig, title="whiskers: 95% intervals over SAE seeds (jackknife; the ground "
                            "truth is one fixed draw)")
    save(fig, out)


def stability_vs_recovery(configs: Sequence[Config], out: str | Path) -> None:
    """One point per ground-truth component: mean stability p̂ of its latents against the
    largest principal angle between its recovered subspace and the truth, by rank, each with its
    95% interval over SAE seeds (:func:`saestab.synthetic.recovery_intervals`)."""
    fig, axes = _grid(len(configs), row_height=3.6)
    if len(configs) == 1:  # one square-ish panel rather than a full-width one
        fig.set_figwidth(WIDTH * 0.7)
    cmap = plt.get_cmap("viridis")
    for ax, c in zip(axes, configs, strict=True):
        comps = _summary(c)["intervals"]["components"]
        ranks = sorted({r["rank"] for r in comps if r["kind"] == "group"})
        for kind, rank, color in ([("point", 1, "k")] +
                                  [("group", r, cmap(i / max(len(ranks) - 1, 1)))
                                   for i, r in enumerate(ranks)]):
            sub = [r for r in comps if r["kind"] == kind and r["rank"] == rank]
            if not sub:
                continue
            p_hat, p_err = interval_errors([r["p_hat"] for r in sub])
            angle, angle_err = interval_errors([r["max_angle_deg"] for r in sub])
            ax.errorbar(p_hat, angle, xerr=p_err, yerr=angle_err, ls="none", color=color, ms=5,
                        capsize=2.5, elinewidth=1.0, marker="x" if kind == "point" else "o",
                        label="point" if kind == "point" else f"group r={rank}")
        ax.set(title=config_label(c), xlabel="mean stability p̂ of the component's latents",
               ylabel="largest principal angle to truth (°)", xlim=(-0.03, 1.03))
        ax.set_ylim(bottom=0)
    legend_below(fig, title="whiskers: 95% intervals over SAE seeds (the ground truth is one "
                            "fixed draw)")
    save(fig, out)


SYNTHETIC_FIGURES: dict[str, Callable[[Sequence[Config], str | Path], None]] = {
    "recovery_by_rank": recovery_by_rank,
    "stability_vs_recovery": stability_vs_recovery,
}
