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

from .base import Config, save, style

SET_COLORS = {"unstable": "C3", "stable": "C0", "random": "0.5"}
TRANSFER_BARS = (("cross", "cross-seed", "C3"), ("within", "within-seed (held out)", "C1"),
                 ("pca", "PCA of activations", "C2"), ("stable", "stable subspace", "C0"),
                 ("random", "random (r/d)", "0.6"))


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


def _grid(n: int, width: float = 3.6, height: float = 3.0,
          max_cols: int = 4) -> tuple[plt.Figure, list[plt.Axes]]:
    cols = min(n, max_cols)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def spectra(configs: Sequence[Config], out: str | Path) -> None:
    """Cumulative singular-value energy of each seed's unit decoder directions: unstable vs
    stable features vs random unit vectors as many as the unstable ones (one line per seed)."""
    style()
    fig, axes = _grid(len(configs))
    for ax, c in zip(axes, configs, strict=True):
        sp = _read(c, "spectra.parquet")
        s = _summary(c)
        for name, color in SET_COLORS.items():
            sub = sp[sp["set"] == name]
            n_mean = sub.groupby("seed")["n"].first().mean() if len(sub) else 0
            for i, (_, g) in enumerate(sub.groupby("seed")):
                ax.plot(g["index"], g["cumulative"], color=color, lw=0.8, alpha=0.7,
                        label=f"{name} (mean n={n_mean:.0f})" if i == 0 else None)
        ax.axhline(s["energy"], color="k", ls=":", lw=0.8)
        ax.axvline(s["d"], color="k", ls="--", lw=0.6)
        ax.set(title=config_label(c), xlabel="singular direction", ylim=(0, 1.02))
        ax.legend(fontsize=7, loc="lower right")
    axes[0].set_ylabel("cumulative share of squared norm")
    save(fig, out)


def rank_vs_count(configs: Sequence[Config], out: str | Path) -> None:
    """Energy-threshold rank against the number of directions, for subsamples of each set."""
    style()
    fig, axes = _grid(len(configs))
    for ax, c in zip(axes, configs, strict=True):
        rk = _read(c, "ranks.parquet")
        s = _summary(c)
        for name, color in SET_COLORS.items():
            sub = rk[rk["set"] == name]
            if len(sub):
                ax.scatter(sub["n"], sub["energy_rank"], s=10, color=color, alpha=0.7,
                           label=name)
                mean = sub.groupby("fraction")[["n", "energy_rank"]].mean()
                ax.plot(mean["n"], mean["energy_rank"], color=color, lw=1)
        lim = max(rk["n"].max(), 1) if len(rk) else 1
        ax.plot([0, lim], [0, lim], color="k", lw=0.5, ls=":")
        ax.axhline(s["d"], color="k", ls="--", lw=0.6)
        ax.set(title=config_label(c), xlabel="number of features",
               ylim=(0, min(s["d"], lim) * 1.08))
        ax.legend(fontsize=7, loc="upper left")
    axes[0].set_ylabel(f"rank at {_summary(configs[0])['energy']:.0%} energy")
    save(fig, out)


def transfer(configs: Sequence[Config], out: str | Path) -> None:
    """Share of seed b's held-out unstable directions (left) and of their reconstruction
    contribution (right) inside seed a's unstable subspace, beside the baselines; bootstrap 95%
    intervals over seeds."""
    style()
    fig, axes = plt.subplots(1, 2, figsize=(max(6.0, 1.6 * len(configs) + 2) * 2, 3.8),
                             sharey=True)
    width = 0.8 / len(TRANSFER_BARS)
    for ax, level in zip(axes, ("directions", "activations"), strict=True):
        for k, (kind, name, color) in enumerate(TRANSFER_BARS):
            xs, ys, lo, hi = [], [], [], []
            for i, c in enumerate(configs):
                st = _summary(c)["transfer"].get(level, {}).get(kind)
                if st is None or not np.isfinite(st["mean"]):
                    continue
                xs.append(i + (k - (len(TRANSFER_BARS) - 1) / 2) * width)
                ys.append(st["mean"])
                lo.append(st["mean"] - st["ci_low"] if np.isfinite(st["ci_low"]) else 0)
                hi.append(st["ci_high"] - st["mean"] if np.isfinite(st["ci_high"]) else 0)
            ax.bar(xs, ys, width, color=color, label=name, yerr=[lo, hi], capsize=2,
                   error_kw={"lw": 0.8})
        ax.set_xticks(range(len(configs)), [config_label(c) for c in configs], rotation=20,
                      ha="right", fontsize=8)
        ax.set(title=f"{level}: share captured", ylim=(0, 1.02))
    axes[0].set_ylabel("share of squared norm in the subspace")
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    save(fig, out)


def angles(configs: Sequence[Config], out: str | Path) -> None:
    """Principal angles between two seeds' unstable subspaces (rank min(r_a, r_b)) vs between
    two random subspaces of the same dimension (all seed pairs pooled)."""
    style()
    fig, axes = _grid(len(configs))
    bins = np.linspace(0, 90, 31)
    for ax, c in zip(axes, configs, strict=True):
        an = _read(c, "angles.parquet")
        for kind, color, name in (("cross", "C3", "between seeds"),
                                  ("random", "0.5", "random subspaces")):
            sub = an.loc[an["kind"] == kind, "angle_deg"]
            if len(sub):
                ax.hist(sub, bins=bins, color=color, alpha=0.55, density=True, label=name)
        r = int(an["r"].median()) if len(an) else 0
        ax.set(title=f"{config_label(c)} (r≈{r})", xlabel="principal angle (degrees)")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("density")
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


def recovery_by_rank(configs: Sequence[Config], out: str | Path) -> None:
    """Per component type (point features, groups of rank r): per-latent stability of the
    latents assigned to it vs how well the span of those latents recovers the true subspace and
    agrees across seeds."""
    style()
    fig, axes = _grid(len(configs), width=5.0, height=3.6)
    for ax, c in zip(axes, configs, strict=True):
        br = _read(c, "by_rank.parquet")
        br = br.sort_values(["kind", "rank"], key=lambda s: s.map({"point": 0, "group": 1})
                            if s.name == "kind" else s)
        x = np.arange(len(br))
        for col, name, color, marker in (
                ("latent_p_hat", "latent stability p̂ (mean)", "C3", "o"),
                ("latent_stable_fraction", "latents labelled stable", "C1", "s"),
                ("truth_overlap", "subspace recovery (mean cos² to truth)", "C0", "^"),
                ("cross_seed_overlap", "cross-seed subspace agreement (mean cos²)", "C2",
                 "v")):
            ax.plot(x, br[col], marker=marker, color=color, label=name)
        ax.set_xticks(x, [_kind_label(k, r) for k, r in zip(br["kind"], br["rank"],
                                                              strict=True)])
        ax.set(title=config_label(c), ylim=(-0.02, 1.05), ylabel="value",
               xlabel="ground-truth component: point feature or group of rank r")
        ax.legend(fontsize=7, loc="lower left")
    save(fig, out)


def stability_vs_recovery(configs: Sequence[Config], out: str | Path) -> None:
    """One point per ground-truth component: mean stability p̂ of its latents (over seeds)
    against the principal-angle agreement of its recovered subspace with the truth, by rank."""
    style()
    fig, axes = _grid(len(configs), width=4.6, height=3.8)
    for ax, c in zip(axes, configs, strict=True):
        lat = _read(c, "latents.parquet")
        comp = _read(c, "components.parquet")
        p = lat[lat["component"] >= 0].groupby("component")["p_hat"].mean()
        per = comp.groupby(["component", "kind", "rank"], as_index=False)["max_angle_deg"].mean()
        per["p_hat"] = per["component"].map(p)
        ranks = sorted(per.loc[per.kind == "group", "rank"].unique())
        cmap = plt.get_cmap("viridis")
        for kind, rank, color in ([("point", 1, "k")] +
                                  [("group", r, cmap(i / max(len(ranks) - 1, 1)))
                                   for i, r in enumerate(ranks)]):
            sub = per[(per.kind == kind) & (per["rank"] == rank)]
            ax.scatter(sub["p_hat"], sub["max_angle_deg"], color=color, s=22,
                       marker="x" if kind == "point" else "o",
                       label="point" if kind == "point" else f"group r={rank}")
        ax.set(title=config_label(c), xlabel="mean stability p̂ of the component's latents",
               ylabel="largest principal angle to truth (°)", xlim=(-0.03, 1.03))
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    save(fig, out)


SYNTHETIC_FIGURES: dict[str, Callable[[Sequence[Config], str | Path], None]] = {
    "recovery_by_rank": recovery_by_rank,
    "stability_vs_recovery": stability_vs_recovery,
}
