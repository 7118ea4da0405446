"""Figures of the stability census; each function reads census outputs and writes one file.

A *configuration* is a dict with ``model, weights, hook, variant`` and ``dir`` (its census
directory, as written by :func:`saestab.census.write_census`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .. import stability
from .base import Config, finish_panels, label, save, style, weights_panels


def _features(c: Config) -> pd.DataFrame:
    """The census table of a configuration, live latents only (dead ones sit at their
    initialisation and are a label of their own, reported beside the shares)."""
    df = stability.read_table(Path(c["dir"]) / "features.parquet")
    return df[df["label"].astype(str) != "dead"]


def stability_cdf(configs: Sequence[Config], out: str | Path) -> None:
    """Empirical CDF of p̂ over live features (all anchors pooled), trained and random side by
    side."""
    style()
    fig, panels = weights_panels(configs)
    for c in configs:
        df = _features(c)
        x, F = stability.ecdf(df["p_hat"].to_numpy())
        panels[c["weights"]].step(np.r_[0, x], np.r_[0, F], where="post", label=label(c))
    finish_panels(fig, panels, out, xlabel="stability p̂ (share of other seeds with a match)",
                   ylabel="fraction of live features ≤ p̂", ylim=(0, 1.01), xlim=(-0.02, 1.02))


def p_hat_hist(configs: Sequence[Config], out: str | Path) -> None:
    """Histogram of p̂ per configuration (U-shape: stable and unstable modes)."""
    style()
    n = len(configs)
    fig, axes = plt.subplots(1, n, figsize=(3.4 * n, 3.0), squeeze=False, sharey=False)
    for ax, c in zip(axes[0], configs, strict=True):
        df = _features(c)
        N = int(df["N"].iloc[0])
        ax.hist(df["p_hat"], bins=np.linspace(-0.5 / N, 1 + 0.5 / N, N + 2), color="C0")
        ax.set(title=f"{c['weights']}: {c['variant']}", xlabel="p̂", ylabel="features")
    save(fig, out)


def stability_vs_frequency(configs: Sequence[Config], out: str | Path) -> None:
    """Mean p̂ within log-frequency bins (eval-split firing frequency of each anchor feature)."""
    style()
    fig, panels = weights_panels(configs)
    for c in configs:
        df = _features(c)
        f = df["firing_frequency"].to_numpy()
        live = f > 0
        logf = np.log10(f[live])
        edges = np.linspace(logf.min(), logf.max(), 13)
        idx = np.clip(np.digitize(logf, edges) - 1, 0, len(edges) - 2)
        p = df["p_hat"].to_numpy()[live]
        centers = 0.5 * (edges[1:] + edges[:-1])
        means = [p[idx == i].mean() if np.any(idx == i) else np.nan for i in range(len(centers))]
        panels[c["weights"]].plot(centers, means, marker="o", ms=3, label=label(c))
    finish_panels(fig, panels, out, xlabel="log10 firing frequency (eval)",
                   ylabel="mean p̂ in bin")


def theta_sweep(configs: Sequence[Config], out: str | Path) -> None:
    """Stable and unstable fractions as the match threshold θ varies (mean over anchors)."""
    style()
    fig, panels = weights_panels(configs)
    for i, c in enumerate(configs):
        sw = stability.read_table(Path(c["dir"]) / "sweeps.parquet")
        sw = sw[sw["sweep"] == "theta"].groupby("theta")[["stable", "unstable"]].mean()
        ax = panels[c["weights"]]
        ax.plot(sw.index, sw["stable"], color=f"C{i}", label=f"{label(c)} stable")
        ax.plot(sw.index, sw["unstable"], color=f"C{i}", ls="--", label=f"{label(c)} unstable")
    finish_panels(fig, panels, out, xlabel="match threshold θ", ylabel="fraction of features",
                   legend_size=7)


def labels_vs_n(configs: Sequence[Config], out: str | Path) -> None:
    """Agreement of labels from n seeds with the labels from all N (how many seeds suffice)."""
    style()
    fig, panels = weights_panels(configs)
    for c in configs:
        ns = stability.read_table(Path(c["dir"]) / "n_subsample.parquet")
        g = ns.groupby("n")["agreement"]
        m, sd = g.mean(), g.std(ddof=1).fillna(0)
        ax = panels[c["weights"]]
        ax.errorbar(m.index, m.values, yerr=sd.values, marker="o", ms=3, capsize=2,
                    label=label(c))
    finish_panels(fig, panels, out, xlabel="seeds used for p̂ (n)",
                   ylabel="label agreement with all N seeds", ylim=(0, 1.02))


def training_length(configs: Sequence[Config], out: str | Path) -> None:
    """Stable / unstable fractions and EV against training epochs (snapshots)."""
    style()
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.6))
    for i, c in enumerate(configs):
        tl = pd.read_csv(Path(c["dir"]) / "training_length.csv")
        if tl.empty:
            continue
        lab = f"{c['weights']} {c['variant']}"
        axes[0].plot(tl["epoch"], tl["stable"], marker="o", color=f"C{i}", label=f"{lab} stable")
        axes[0].plot(tl["epoch"], tl["unstable"], marker="x", ls="--", color=f"C{i}",
                     label=f"{lab} unstable")
        axes[1].plot(tl["epoch"], tl["ev"], marker="o", color=f"C{i}", label=lab)
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("epochs trained")
    axes[0].set(ylabel="fraction of features", ylim=(-0.02, 1.02),
                title="stability vs training length")
    axes[1].set(ylabel="explained variance (eval)", title="EV vs training length")
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    save(fig, out)


FIGURES: dict[str, Callable[[Sequence[Config], str | Path], None]] = {
    "stability_cdf": stability_cdf,
    "p_hat_hist": p_hat_hist,
    "stability_vs_frequency": stability_vs_frequency,
    "theta_sweep": theta_sweep,
    "labels_vs_n": labels_vs_n,
    "training_length": training_length,
}


def table1(configs: Sequence[Config]) -> pd.DataFrame:
    """The Table-1 analogue: per configuration, stable %, unstable %, EV, L0, dead % with the
    spread across anchors/seeds, and Hungarian IoU."""
    rows = []
    for c in configs:
        s = json.loads((Path(c["dir"]) / "summary.json").read_text())
        rows.append({
            "model": c["model"], "weights": c["weights"], "hook": c["hook"],
            "variant": c["variant"], "seeds": s["n_seeds"], "latents": s["n_features"],
            "stable_pct": 100 * s["stable"]["mean"], "stable_sd": 100 * s["stable"]["std"],
            "unstable_pct": 100 * s["unstable"]["mean"],
            "unstable_sd": 100 * s["unstable"]["std"],
            "EV": s["ev"]["mean"], "EV_sd": s["ev"]["std"], "L0": s["l0"]["mean"],
            "dead_pct": 100 * s["dead_fraction"]["mean"],
            "hungarian_IoU": s["hungarian_iou"]["mean"],
            "init_cos": (s.get("decoder_init_cosine") or {}).get("mean", float("nan")),
        })
    return pd.DataFrame(rows)


def table1_markdown(df: pd.DataFrame) -> str:
    lines = ["| model | weights | hook | variant | seeds | latents | stable % | unstable % | EV | "
             "L0 | dead % | Hungarian IoU | cos to init |", "|" + "---|" * 13]
    for r in df.itertuples(index=False):
        lines.append(
            f"| {r.model} | {r.weights} | {r.hook} | {r.variant} | {r.seeds} | {r.latents} | "
            f"{r.stable_pct:.1f} ± {r.stable_sd:.1f} | "
            f"{r.unstable_pct:.1f} ± {r.unstable_sd:.1f} | "
            f"{r.EV:.3f} ± {r.EV_sd:.3f} | {r.L0:.1f} | {r.dead_pct:.1f} | {r.hungarian_IoU:.3f} | "
            f"{r.init_cos:.2f} |")
    return "\n".join(lines) + "\n"


def table1_figure(df: pd.DataFrame, out: str | Path) -> None:
    """Stable/unstable % against EV, one point per configuration (the paper's trade-off)."""
    style()
    fig, ax = plt.subplots(figsize=(5, 3.8))
    for i, r in enumerate(df.itertuples(index=False)):
        ax.errorbar(r.EV, r.stable_pct, yerr=r.stable_sd, xerr=r.EV_sd, marker="o", color=f"C{i}",
                    label=f"{r.weights} {r.variant} stable")
        ax.errorbar(r.EV, r.unstable_pct, yerr=r.unstable_sd, xerr=r.EV_sd, marker="x",
                    color=f"C{i}",
                    ls="none", label=f"{r.weights} {r.variant} unstable")
    ax.set(xlabel="explained variance (eval)", ylabel="% of features",
           title="stability vs explained variance")
    ax.legend(fontsize=7)
    save(fig, out)
