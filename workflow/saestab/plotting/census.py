"""Figures of the stability census; each function reads census outputs and writes one file.

A *configuration* is a dict with ``model, weights, hook, variant`` and ``dir`` (its census
directory, as written by :func:`saestab.census.write_census`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from .. import stability
from .base import (
    LABEL_STYLES,
    SEED_ALPHA,
    WIDTH,
    Config,
    band,
    colour_key,
    errorbars,
    finish_panels,
    interval_errors,
    label,
    label_key,
    legend_below,
    panels,
    save,
    weights_panels,
)


def _features(c: Config) -> pd.DataFrame:
    """The census table of a configuration, live latents only (dead ones sit at their
    initialisation and are a label of their own, reported beside the shares)."""
    df = stability.read_table(Path(c["dir"]) / "features.parquet")
    return df[df["label"].astype(str) != "dead"]


def _summary(c: Config) -> dict:
    return json.loads((Path(c["dir"]) / "summary.json").read_text())


def stability_cdf(configs: Sequence[Config], out: str | Path) -> None:
    """Empirical CDF of p̂ over live features: all anchors pooled (thick), each anchor SAE
    (thin), and at p̂ = ε and 1 − ε the unstable share and 1 − the stable share with their
    leave-one-seed-out jackknife intervals (the C1 statistics)."""
    fig, axes = weights_panels(configs)
    for i, c in enumerate(configs):
        df, s = _features(c), _summary(c)
        ax, color = axes[c["weights"]], f"C{i}"
        for _, g in df.groupby("anchor"):
            x, F = stability.ecdf(g["p_hat"].to_numpy())
            ax.step(np.r_[0, x], np.r_[0, F], where="post", color=color, lw=0.6,
                    alpha=SEED_ALPHA)
        x, F = stability.ecdf(df["p_hat"].to_numpy())
        ax.step(np.r_[0, x], np.r_[0, F], where="post", color=color, lw=1.6)
        eps, st = s["eps"], s["stable"]
        complement = {"mean": 1 - st["mean"], "ci_low": 1 - st["ci_high"],
                      "ci_high": 1 - st["ci_low"]}
        errorbars(ax, [eps, 1 - eps], [s["unstable"], complement], color=color, marker="o",
                  ms=4, zorder=3)
    handles = [Line2D([], [], color="0.3", lw=0.6, alpha=SEED_ALPHA, label="one anchor SAE"),
               Line2D([], [], color="0.3", lw=1.6, label="all anchors"),
               Line2D([], [], color="0.3", marker="o", ms=4, ls="none",
                      label="unstable share at ε; 1 − stable share at 1 − ε")]
    finish_panels(fig, axes, out, xlabel="stability p̂ (share of other seeds with a match)",
                  ylabel="fraction of live features ≤ p̂", ylim=(0, 1.01), xlim=(-0.02, 1.02),
                  extra=colour_key(configs) + handles,
                  legend_title="whiskers: 95% intervals, jackknife over seeds")


def p_hat_hist(configs: Sequence[Config], out: str | Path) -> None:
    """Share of live features at each value of p̂ per configuration, all anchors pooled, with
    the range over anchor SAEs (a spread, not an interval: anchors share their reference seeds);
    the seed-level intervals of the endpoint shares are in the panel titles."""
    n = len(configs)
    cols = min(n, 3)
    fig, axes = panels(-(-n // cols), cols, 2.8)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    for i, (ax, c) in enumerate(zip(flat, configs, strict=False)):
        df, s = _features(c), _summary(c)
        N = int(df["N"].iloc[0])
        k = np.rint(df["p_hat"].to_numpy() * N).astype(int)
        per = pd.crosstab(df["anchor"], k, normalize="index").reindex(columns=range(N + 1),
                                                                       fill_value=0.0)
        pooled = np.bincount(k, minlength=N + 1) / len(k)
        err = np.vstack([pooled - per.min().to_numpy(), per.max().to_numpy() - pooled])
        ax.bar(np.arange(N + 1) / N, pooled, width=0.8 / N, color=f"C{i}",
               yerr=np.clip(err, 0, None), capsize=2, ecolor="0.25",
               label="share of live features (bars: range over anchor SAEs)")
        st, un = s["stable"], s["unstable"]
        ax.set_title(f"{label(c)}\nstable {st['mean']:.2f} [{st['ci_low']:.2f}, "
                     f"{st['ci_high']:.2f}]\nunstable {un['mean']:.2f} [{un['ci_low']:.2f}, "
                     f"{un['ci_high']:.2f}]")
        ax.set(xlabel="p̂", xlim=(-0.6 / N, 1 + 0.6 / N))
    flat[0].set_ylabel("share of live features")
    legend_below(fig)
    save(fig, out)


def stability_vs_frequency(configs: Sequence[Config], out: str | Path) -> None:
    """Mean p̂ within bins of log10 eval-split firing frequency, with a leave-one-seed-out
    jackknife interval per bin (:func:`saestab.census.p_hat_by_frequency`)."""
    fig, axes = weights_panels(configs)
    for i, c in enumerate(configs):
        rows = _summary(c)["p_hat_by_frequency"]
        x = [0.5 * (r["log10_freq_low"] + r["log10_freq_high"]) for r in rows]
        iv = [r["p_hat"] for r in rows]
        ax = axes[c["weights"]]
        ax.plot(x, [v["mean"] for v in iv], marker="o", ms=3, color=f"C{i}", label=label(c))
        band(ax, x, [v["ci_low"] for v in iv], [v["ci_high"] for v in iv], f"C{i}")
    finish_panels(fig, axes, out, xlabel="log10 firing frequency (eval)",
                  ylabel="mean p̂ in bin",
                  legend_title="shaded: 95% intervals, jackknife over seeds")


def theta_sweep(configs: Sequence[Config], out: str | Path) -> None:
    """Stable and unstable shares of live features as the match threshold θ varies, with
    leave-one-seed-out jackknife intervals (:func:`saestab.census.sweep_intervals`)."""
    fig, axes = weights_panels(configs)
    for i, c in enumerate(configs):
        rows = [r for r in _summary(c)["sweeps"] if r["sweep"] == "theta"]
        x = [r["theta"] for r in rows]
        ax = axes[c["weights"]]
        for lab, ls in LABEL_STYLES:
            iv = [r[lab] for r in rows]
            ax.plot(x, [v["mean"] for v in iv], color=f"C{i}", ls=ls, marker="o", ms=3)
            band(ax, x, [v["ci_low"] for v in iv], [v["ci_high"] for v in iv], f"C{i}")
    finish_panels(fig, axes, out, xlabel="match threshold θ", ylabel="share of live features",
                  extra=colour_key(configs) + label_key(),
                  legend_title="shaded: 95% intervals, jackknife over seeds")


def labels_vs_n(configs: Sequence[Config], out: str | Path) -> None:
    """Agreement of labels from n seeds with the labels from all N (how many seeds suffice):
    mean over random draws of n seeds and anchors, ± their standard deviation (the spread over
    which seeds are drawn)."""
    fig, axes = weights_panels(configs)
    for i, c in enumerate(configs):
        ns = stability.read_table(Path(c["dir"]) / "n_subsample.parquet")
        g = ns.groupby("n")["agreement"]
        m, sd = g.mean(), g.std(ddof=1)
        axes[c["weights"]].errorbar(m.index, m.values, yerr=sd.values, marker="o", ms=3,
                                    capsize=2, color=f"C{i}", label=label(c))
    finish_panels(fig, axes, out, xlabel="seeds used for p̂ (n)",
                  ylabel="label agreement with all N seeds", ylim=(0, 1.02),
                  legend_title="mean ± sd over random draws of n seeds and anchors")


def training_length(configs: Sequence[Config], out: str | Path) -> None:
    """Stable / unstable shares and EV of the epoch snapshots, with leave-one-seed-out jackknife
    intervals of the shares and t intervals over seeds of EV."""
    fig, axes = panels(1, 2, 3.4)
    ax_s, ax_ev = axes[0]
    for i, c in enumerate(configs):
        tl = pd.read_csv(Path(c["dir"]) / "training_length.csv")
        if tl.empty:
            continue
        color = f"C{i}"
        for name, ls in LABEL_STYLES:
            ax_s.plot(tl["epoch"], tl[name], marker="o", ls=ls, color=color, ms=4)
            band(ax_s, tl["epoch"], tl[f"{name}_ci_low"], tl[f"{name}_ci_high"], color)
        ax_ev.plot(tl["epoch"], tl["ev"], marker="o", color=color, ms=4)
        band(ax_ev, tl["epoch"], tl["ev_ci_low"], tl["ev_ci_high"], color)
    for ax in (ax_s, ax_ev):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("epochs trained")
    ax_s.set(ylabel="share of features", ylim=(-0.02, 1.02), title="stability vs training length")
    ax_ev.set(ylabel="explained variance (eval)", title="EV vs training length")
    legend_below(fig, extra=colour_key(configs) + label_key(),
                 title="shaded: 95% intervals over seeds (jackknife for the shares, t for EV)")
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
    spread across anchors/seeds (``*_sd``) and 95% intervals over seeds (``*_ci_low``,
    ``*_ci_high``: leave-one-seed-out jackknife for the shares, t for EV), and Hungarian IoU."""
    rows = []
    for c in configs:
        s = json.loads((Path(c["dir"]) / "summary.json").read_text())
        rows.append({
            "model": c["model"], "weights": c["weights"], "hook": c["hook"],
            "variant": c["variant"], "seeds": s["n_seeds"], "latents": s["n_features"],
            "stable_pct": 100 * s["stable"]["mean"], "stable_sd": 100 * s["stable"]["std"],
            "stable_ci_low": 100 * s["stable"]["ci_low"],
            "stable_ci_high": 100 * s["stable"]["ci_high"],
            "unstable_pct": 100 * s["unstable"]["mean"],
            "unstable_sd": 100 * s["unstable"]["std"],
            "unstable_ci_low": 100 * s["unstable"]["ci_low"],
            "unstable_ci_high": 100 * s["unstable"]["ci_high"],
            "EV": s["ev"]["mean"], "EV_sd": s["ev"]["std"], "EV_ci_low": s["ev"]["ci_low"],
            "EV_ci_high": s["ev"]["ci_high"], "L0": s["l0"]["mean"],
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
    """Stable and unstable % against EV, one colour per configuration (the paper's trade-off),
    with 95% intervals over seeds on both axes."""
    fig, axes = panels(1, 1, 4.0, width=WIDTH * 0.75)
    ax = axes[0, 0]
    for i, r in enumerate(df.itertuples(index=False)):
        ev = {"mean": r.EV, "ci_low": r.EV_ci_low, "ci_high": r.EV_ci_high}
        for name, marker in (("stable", "o"), ("unstable", "X")):
            share = {"mean": getattr(r, f"{name}_pct"), "ci_low": getattr(r, f"{name}_ci_low"),
                     "ci_high": getattr(r, f"{name}_ci_high")}
            _, xerr = interval_errors([ev])
            errorbars(ax, [r.EV], [share], xerr=xerr, marker=marker, ms=6, color=f"C{i}")
        ax.plot([], [], color=f"C{i}", lw=6, label=f"{r.weights} {r.variant}")
    ax.set(xlabel="explained variance (eval)", ylabel="% of live features",
           title="stability vs explained variance")
    legend_below(fig, extra=[
        Line2D([], [], color="0.3", marker=m, ls="none", ms=6, label=f"{name} share")
        for name, m in (("stable", "o"), ("unstable", "X"))],
        title="bars: 95% intervals over seeds (jackknife for the shares, t for EV)")
    save(fig, out)
