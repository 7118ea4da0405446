"""Activation statistics and surface form of SAE features (claim C4).

Per feature, over a cache (the train split by default: rare features need many tokens):
``frequency`` ``P(f_j > 0)``, ``mean_activation`` (over the tokens where it fires),
``max_activation``, ``mass`` ``sum_t f_j(x_t) * ||d_j||``; and over its ``top_k`` strongest
activations (only tokens where it fires): the share taken by the single most common current
token (``top_token_share``), the entropy of the current-token distribution (``token_entropy``,
bits), and the shares whose current token is punctuation, whitespace, or digits. A feature is a
``single_token`` feature when one token string takes at least ``single_token_share`` of its top
activations. Stable and unstable features are compared overall and within log-frequency bins
(Kolmogorov–Smirnov statistics, and bin-weighted mean differences), so that "unstable features
are surface-form" is not merely "unstable features are rare".

Only live features enter the comparisons: a feature labelled ``dead`` by the census (never
active on the train split), or one that never fires on the scanned train split, is left out, as
its frequency and token measures say nothing about its character. Claim C4 is summarised per
anchor SAE (the independent unit) by :func:`c4_statistics`, with seed-level intervals and a
known-negative null: the same statistics after shuffling the stable/unstable labels among the
anchor's live stable and unstable features, which must give a ratio near 1 and a difference near 0.
"""

from __future__ import annotations

import dataclasses
import html
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats

from . import io, resampling
from .activations import ActivationCache
from .evaluation import FeatureScan, scan_sae
from .logs import get_logger
from .models import Tokenizer
from .sae import load_sae
from .stability import mean_interval

log = get_logger("surface")

METRICS = ("frequency", "mean_activation", "max_activation", "mass", "top_token_share",
           "token_entropy", "punct_share", "whitespace_share", "digit_share")


# ------------------------------------------------------------------------------------------
# token strings
# ------------------------------------------------------------------------------------------
def _is_punct(s: str) -> bool:
    s = s.strip()
    return bool(s) and all(unicodedata.category(c)[0] in "PS" for c in s)


@dataclass
class TokenInfo:
    """Decoded strings and classes of token ids."""

    text: dict[int, str]

    @classmethod
    def build(cls, tokenizer: Tokenizer, ids: Sequence[int] | np.ndarray) -> TokenInfo:
        return cls({int(i): tokenizer.decode([int(i)]) for i in np.unique(np.asarray(ids))})

    def classes(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """Boolean arrays (shape of ``ids``): punct, whitespace, digit."""
        flat = np.asarray(ids).ravel()
        texts = [self.text[int(i)] for i in flat]
        out = {
            "punct": np.array([_is_punct(t) for t in texts], dtype=bool),
            "whitespace": np.array([t.strip() == "" for t in texts], dtype=bool),
            "digit": np.array([t.strip().isdigit() for t in texts], dtype=bool),
        }
        return {k: v.reshape(np.shape(ids)) for k, v in out.items()}


def feature_table(acts: FeatureScan, token_ids: np.ndarray, tokens: TokenInfo,
                  single_token_share: float = 0.5) -> pd.DataFrame:
    """Per-feature activation statistics and surface-form measures (see module docstring)."""
    m = acts.count.size
    fired = acts.top_values > 0  # (K, m)
    ids = np.asarray(token_ids)[acts.top_rows]  # (K, m) current token of each top activation
    cls = tokens.classes(ids)
    n_top = fired.sum(0)
    top_share = np.zeros(m)
    entropy = np.zeros(m)
    top_token = np.full(m, -1, dtype=np.int64)
    for j in np.nonzero(n_top)[0]:
        vals, cnt = np.unique(ids[fired[:, j], j], return_counts=True)
        p = cnt / cnt.sum()
        top_share[j] = p.max()
        entropy[j] = float(-(p * np.log2(p)).sum())
        top_token[j] = vals[np.argmax(cnt)]
    with np.errstate(invalid="ignore", divide="ignore"):
        def share(mask: np.ndarray) -> np.ndarray:
            return np.where(n_top > 0, (mask & fired).sum(0) / np.maximum(n_top, 1), np.nan)

        table = pd.DataFrame({
            "feature": np.arange(m, dtype=np.int32),
            "frequency": acts.count / acts.n_tokens,
            "mean_activation": np.where(acts.count > 0, acts.total / np.maximum(acts.count, 1),
                                        np.nan),
            "max_activation": acts.max.astype(np.float64),
            "mass": acts.mass,
            "n_top": n_top.astype(np.int32),
            "top_token_id": top_token,
            "top_token": [tokens.text.get(int(t), "") if t >= 0 else "" for t in top_token],
            "top_token_share": np.where(n_top > 0, top_share, np.nan),
            "token_entropy": np.where(n_top > 0, entropy, np.nan),
            "punct_share": share(cls["punct"]),
            "whitespace_share": share(cls["whitespace"]),
            "digit_share": share(cls["digit"]),
        })
    table["single_token"] = table["top_token_share"] >= single_token_share
    return table


# ------------------------------------------------------------------------------------------
# stable vs unstable
# ------------------------------------------------------------------------------------------
def frequency_bins(frequency: np.ndarray, n_bins: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Equal-width bins of log10 frequency over the live features: (bin index per feature, -1
    for dead ones; bin edges)."""
    f = np.asarray(frequency, dtype=np.float64)
    live = f > 0
    if not live.any():
        return np.full(f.shape, -1), np.array([])
    logf = np.log10(f[live])
    edges = np.linspace(logf.min(), logf.max() + 1e-12, n_bins + 1)
    idx = np.full(f.shape, -1)
    idx[live] = np.clip(np.digitize(logf, edges) - 1, 0, n_bins - 1)
    return idx, edges


def compare_labels(table: pd.DataFrame, metrics: Sequence[str] = METRICS,
                   n_bins: int = 6) -> pd.DataFrame:
    """Stable vs unstable per metric: medians, KS statistic and p-value, overall (``bin`` = -1)
    and within each log-frequency bin (live features; bins with < 3 of either label skipped).
    ``table`` holds one anchor's features with ``label`` and the metrics."""
    rows = []
    bins, edges = frequency_bins(table["frequency"].to_numpy(), n_bins)
    table = table.assign(_bin=bins)
    groups = [(-1, table[table["_bin"] >= 0])] + [(b, table[table["_bin"] == b])
                                                   for b in range(len(edges) - 1)]
    for b, g in groups:
        st = g[g["label"] == "stable"]
        un = g[g["label"] == "unstable"]
        for metric in metrics:
            a, c = st[metric].dropna().to_numpy(), un[metric].dropna().to_numpy()
            if len(a) < 3 or len(c) < 3:
                continue
            ks = stats.ks_2samp(a, c)
            rows.append({"bin": b, "log10_freq_low": edges[b] if b >= 0 else np.nan,
                         "log10_freq_high": edges[b + 1] if b >= 0 else np.nan,
                         "metric": metric, "n_stable": len(a), "n_unstable": len(c),
                         "median_stable": float(np.median(a)),
                         "median_unstable": float(np.median(c)),
                         "mean_stable": float(a.mean()), "mean_unstable": float(c.mean()),
                         "ks": float(ks.statistic), "ks_p": float(ks.pvalue)})
    return pd.DataFrame(rows, columns=["bin", "log10_freq_low", "log10_freq_high", "metric",
                                       "n_stable", "n_unstable", "median_stable",
                                       "median_unstable", "mean_stable", "mean_unstable", "ks",
                                       "ks_p"])


def binned_profile(table: pd.DataFrame, metric: str, n_bins: int = 8, min_count: int = 3,
                   labels: Sequence[str] = ("stable", "unstable")) -> pd.DataFrame:
    """Mean of ``metric`` per label within log-frequency bins shared by every anchor (the edges
    span the live features of ``table``, which holds several anchors' rows: ``seed``, ``label``,
    ``frequency``, the metric), with an interval over the anchor SAEs: each anchor's mean in a
    bin (where it has at least ``min_count`` features of the label) is one value, and the
    interval is that of their mean (:func:`saestab.resampling.mean_of`; NaN with fewer than three
    anchors). One row per (label, bin) with a value: ``label, bin, log10_freq_centre, mean,
    ci_low, ci_high, n_anchors``."""
    bins, edges = frequency_bins(table["frequency"].to_numpy(), n_bins)
    centres = 0.5 * (edges[1:] + edges[:-1])
    t = table.assign(_bin=bins)
    t = t[t["_bin"] >= 0]
    rows = []
    for lab in labels:
        sub = t[t["label"] == lab]
        per = sub.groupby(["_bin", "seed"])[metric].agg(["mean", "count"])
        per = per[per["count"] >= min_count]
        for b, g in per.groupby(level="_bin"):
            iv = resampling.mean_of(g["mean"].to_numpy())
            rows.append({"label": lab, "bin": int(b), "log10_freq_centre": float(centres[b]),
                         "mean": iv["mean"], "ci_low": iv["ci_low"], "ci_high": iv["ci_high"],
                         "n_anchors": int(len(g))})
    return pd.DataFrame(rows, columns=["label", "bin", "log10_freq_centre", "mean", "ci_low",
                                       "ci_high", "n_anchors"])


def binned_difference(comparison: pd.DataFrame, metric: str) -> float:
    """Mean (unstable - stable) of ``metric`` within frequency bins, weighted by the number of
    unstable features per bin: the frequency-matched contrast. NaN without usable bins."""
    c = comparison[(comparison["metric"] == metric) & (comparison["bin"] >= 0)]
    if c.empty:
        return float("nan")
    w = c["n_unstable"].to_numpy(np.float64)
    return float(np.sum(w * (c["mean_unstable"] - c["mean_stable"])) / w.sum())


def live_features(table: pd.DataFrame, split: str = "train") -> np.ndarray:
    """Boolean mask of the features that may enter a stable/unstable contrast: not labelled
    ``dead``, and (on the train split, where the census decides deadness) firing at least once."""
    live = table["label"].astype(str).to_numpy() != "dead"
    if split == "train":
        live &= table["frequency"].to_numpy() > 0
    return live


def c4_statistics(table: pd.DataFrame, n_bins: int = 6) -> dict[str, float]:
    """The two C4 statistics of one anchor from its live features (``label``, ``frequency``,
    ``top_token_share``): ``frequency_ratio``, the median frequency of the unstable features over
    that of the stable ones, and ``binned_top_token_share_diff``, the within-frequency-bin
    difference of top-token share, unstable - stable (:func:`binned_difference`). NaN where a
    label has too few features."""
    st = table.loc[table["label"] == "stable", "frequency"]
    un = table.loc[table["label"] == "unstable", "frequency"]
    ratio = (float(un.median() / st.median()) if len(st) and len(un) and st.median() > 0
             else float("nan"))
    comp = compare_labels(table, metrics=["top_token_share"], n_bins=n_bins)
    return {"frequency_ratio": ratio,
            "binned_top_token_share_diff": binned_difference(comp, "top_token_share")}


def shuffled_labels(table: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """``table`` with the stable/unstable labels permuted among its stable and unstable rows (the
    C4 null: same counts, no relation between label and feature)."""
    labels = table["label"].astype(str).to_numpy().copy()
    idx = np.flatnonzero(np.isin(labels, ("stable", "unstable")))
    labels[idx] = labels[rng.permutation(idx)]
    return table.assign(label=labels)


def shuffled_statistics(table: pd.DataFrame, rng: np.random.Generator, n_bins: int = 6,
                        n_shuffles: int = 20) -> dict[str, float]:
    """The C4 statistics of one anchor averaged over ``n_shuffles`` label shuffles
    (:func:`shuffled_labels`): the null's value for that anchor. One shuffle alone adds its own
    noise to every anchor, which widens the null's interval over seeds past the C4 floors."""
    rows = [c4_statistics(shuffled_labels(table, rng), n_bins) for _ in range(n_shuffles)]
    return {k: float(np.nanmean([r[k] for r in rows])) if any(np.isfinite(r[k]) for r in rows)
            else float("nan") for k in rows[0]}


def c4_block(per_anchor: pd.DataFrame, null: pd.DataFrame,
             anchors: Sequence[int]) -> dict[str, Any]:
    """Per-anchor C4 statistics and their means with leave-one-anchor-out jackknife intervals
    (:func:`saestab.resampling.mean_of`), for the real labels and for the shuffled-label null.
    An anchor whose statistic is undefined (NaN: too few stable or unstable features, or no
    frequency bin with enough of both) stays in ``per_anchor`` but not in the interval, whose
    ``n`` counts the anchors used."""
    def block(frame: pd.DataFrame) -> dict[str, Any]:
        out = {}
        for k in ("frequency_ratio", "binned_top_token_share_diff"):
            v = frame[k].to_numpy(np.float64)
            used = v[np.isfinite(v)]
            interval = (resampling.mean_of(used) if used.size else
                        resampling._interval(float("nan"), float("nan"), 0, 0.05, 0))
            out[k] = {"per_anchor": v.tolist(), "interval": interval}
        return out

    return {**block(per_anchor), "null": block(null), "anchors": [int(a) for a in anchors]}


# ------------------------------------------------------------------------------------------
# top contexts and the browser
# ------------------------------------------------------------------------------------------
def sample_features(table: pd.DataFrame, n_per_label: int, rng: np.random.Generator,
                    labels: Sequence[str] = ("stable", "unstable")) -> np.ndarray:
    """Up to ``n_per_label`` live features of each label, drawn at random (sorted ids)."""
    out = []
    for lab in labels:
        ids = table.loc[(table["label"] == lab) & (table["n_top"] > 0), "feature"].to_numpy()
        out.append(rng.choice(ids, size=min(n_per_label, ids.size), replace=False))
    return np.sort(np.concatenate(out)) if out else np.zeros(0, dtype=np.int64)


def top_contexts(acts: FeatureScan, features: Sequence[int], cache: ActivationCache,
                 tokenizer: Tokenizer, n_contexts: int = 10, left: int = 12,
                 right: int = 4) -> pd.DataFrame:
    """The strongest activations of ``features`` with decoded text around the current token:
    ``feature, rank, activation, token_id, token, left, right``."""
    positions = cache.positions()
    contexts = cache.contexts()
    rows = []
    for j in features:
        for r in range(min(n_contexts, acts.top_values.shape[0])):
            v = float(acts.top_values[r, j])
            if v <= 0:
                break
            ctx, pos = (int(p) for p in positions[acts.top_rows[r, j]])
            seq = np.asarray(contexts[ctx])
            tid = int(seq[pos])
            rows.append({"feature": int(j), "rank": r, "activation": v, "token_id": tid,
                         "token": tokenizer.decode([tid]),
                         "left": tokenizer.decode(seq[max(1, pos - left):pos].tolist()),
                         "right": tokenizer.decode(seq[pos + 1:pos + 1 + right].tolist())})
    return pd.DataFrame(rows, columns=["feature", "rank", "activation", "token_id", "token",
                                       "left", "right"])


def _show(s: str) -> str:
    return html.escape(s.replace("\n", "⏎"))


def browser_html(contexts: pd.DataFrame, features: pd.DataFrame, title: str,
                 meta: Mapping[str, Any] | None = None) -> str:
    """A self-contained HTML page of top contexts: one card per feature, stable first.

    ``contexts`` as from :func:`top_contexts` (plus ``anchor``); ``features`` the per-feature
    table rows of the shown features (``feature, label, p_hat, frequency, top_token_share``).
    """
    css = ("body{font-family:sans-serif;max-width:70em;margin:auto}"
           ".card{border:1px solid #ccc;border-radius:6px;padding:.5em 1em;margin:.8em 0}"
           ".stable h3{color:#1b6e20}.unstable h3{color:#a33}"
           "td.ctx{font-family:monospace;white-space:pre-wrap}"
           "mark{background:#ffd54f;font-weight:bold}td.act{text-align:right;padding-right:1em}")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{_show(title)}</title>"
             f"<style>{css}</style></head><body><h1>{_show(title)}</h1>"]
    if meta:
        parts.append("<p>" + ", ".join(f"{_show(str(k))}: {_show(str(v))}"
                                       for k, v in meta.items()) + "</p>")
    order = {"stable": 0, "middle": 1, "unstable": 2}
    feats = features.sort_values(["label", "feature"], key=lambda s: s.map(order)
                                 if s.name == "label" else s)
    for f in feats.itertuples(index=False):
        ctx = contexts[(contexts["feature"] == f.feature) & (contexts["anchor"] == f.anchor)]
        parts.append(f"<div class='card {f.label}'><h3>feature {f.feature} — {f.label} "
                     f"(p̂ = {f.p_hat:.2f})</h3><p>frequency {f.frequency:.2e}, top-token share "
                     f"{f.top_token_share:.2f}</p><table>")
        for c in ctx.itertuples(index=False):
            parts.append(f"<tr><td class='act'>{c.activation:.2f}</td><td class='ctx'>"
                         f"{_show(c.left)}<mark>{_show(c.token)}</mark>{_show(c.right)}"
                         f"</td></tr>")
        parts.append("</table></div>")
    parts.append("</body></html>")
    return "".join(parts)


# ------------------------------------------------------------------------------------------
# one configuration
# ------------------------------------------------------------------------------------------
@dataclass
class SurfaceResult:
    """Everything :func:`run_surface` computed for one configuration."""

    features: pd.DataFrame  # per (seed, feature): census label and p_hat, statistics
    comparison: pd.DataFrame  # per (seed, bin, metric): stable vs unstable
    contexts: pd.DataFrame  # top contexts of the sampled features (all anchors)
    summary: dict[str, Any]


def _scan_of(scans: Mapping[int, FeatureScan], seed: int, top_k: int) -> FeatureScan:
    """Seed ``seed``'s scan with its top rows cut to ``top_k``."""
    if seed not in scans:
        raise io.InputError(f"no feature scan for anchor seed {seed} (have {sorted(scans)})")
    scan = scans[seed]
    if scan.top_values.shape[0] < min(top_k, scan.n_tokens):
        raise io.InputError(f"the feature scan of seed {seed} kept {scan.top_values.shape[0]} "
                            f"top rows per feature, fewer than top_k = {top_k}: rerun rule "
                            "scan_features")
    return dataclasses.replace(scan, top_values=scan.top_values[:top_k],
                               top_rows=scan.top_rows[:top_k])


def run_surface(seed_dirs: Mapping[int, Any], census: pd.DataFrame, cache: ActivationCache,
                tokenizer: Tokenizer, *, anchors: Sequence[int], top_k: int = 64,
                single_token_share: float = 0.5, n_bins: int = 6, n_browse: int = 16,
                n_contexts: int = 10, seed: int = 0, batch_size: int = 4096,
                device: str | torch.device = "cpu", split: str = "train",
                scans: Mapping[int, FeatureScan] | None = None) -> SurfaceResult:
    """Activation and token statistics of every anchor SAE of one configuration, compared by
    stability label over the live features (``split`` names the cache's split, see
    :func:`live_features`); top contexts of ``n_browse`` random stable and unstable features
    each; the C4 block with its shuffled-label null (seeded by ``seed``).

    Each anchor's statistics come from ``scans`` (its :class:`~.evaluation.FeatureScan` of
    ``cache``, keeping at least ``top_k`` rows per feature) or, without them, from a scan of the
    SAE saved in ``seed_dirs``."""
    rng = np.random.default_rng(seed)
    null_rng = np.random.default_rng([seed, 1])
    token_ids = np.asarray(cache.token_ids())
    tokens = TokenInfo.build(tokenizer, token_ids)
    tables, comps, ctxs, per_anchor, null_rows = [], [], [], [], []
    for s in anchors:
        lab = census[census["seed"] == s].sort_values("feature")
        acts = (_scan_of(scans, s, top_k) if scans is not None else
                scan_sae(load_sae(seed_dirs[s], device=device), cache, top_k=top_k,
                         batch_size=batch_size, device=device))
        if len(lab) != acts.count.size:
            raise ValueError(f"census rows for seed {s}: {len(lab)}, SAE has "
                             f"{acts.count.size} features")
        t = feature_table(acts, token_ids, tokens, single_token_share)
        t.insert(0, "seed", s)
        t.insert(2, "label", lab["label"].astype(str).to_numpy())
        t.insert(3, "p_hat", lab["p_hat"].to_numpy())
        t.insert(4, "live", live_features(t, split))
        live = t[t["live"]]
        comp = compare_labels(live, n_bins=n_bins).assign(seed=s)
        pick = sample_features(live, n_browse, rng)
        ctx = top_contexts(acts, pick, cache, tokenizer, n_contexts=n_contexts)
        info = t.set_index("feature").loc[ctx["feature"], ["label", "p_hat", "frequency"]]
        ctx = ctx.assign(anchor=s, label=info["label"].to_numpy(),
                         p_hat=info["p_hat"].to_numpy(), frequency=info["frequency"].to_numpy())
        st, un = live[live["label"] == "stable"], live[live["label"] == "unstable"]
        c4 = c4_statistics(live, n_bins)
        null_rows.append({"seed": s, **shuffled_statistics(live, null_rng, n_bins)})
        per_anchor.append({
            "seed": s, "n_stable": len(st), "n_unstable": len(un),
            "n_dead": int((~t["live"]).sum()),
            "median_frequency_stable": float(st["frequency"].median()),
            "median_frequency_unstable": float(un["frequency"].median()),
            "frequency_ratio": c4["frequency_ratio"],
            "single_token_stable": float(st["single_token"].mean()),
            "single_token_unstable": float(un["single_token"].mean()),
            **{f"binned_diff_{m}": binned_difference(comp, m)
               for m in ("top_token_share", "token_entropy", "punct_share", "max_activation")},
        })
        tables.append(t)
        comps.append(comp)
        ctxs.append(ctx)
        log.info("seed %d: median frequency stable %.2e, unstable %.2e; single-token share "
                 "stable %.2f, unstable %.2f", s, per_anchor[-1]["median_frequency_stable"],
                 per_anchor[-1]["median_frequency_unstable"],
                 per_anchor[-1]["single_token_stable"], per_anchor[-1]["single_token_unstable"])
    pa = pd.DataFrame(per_anchor)
    summary = {
        "anchors": [int(s) for s in anchors], "top_k": top_k, "n_tokens": int(cache.n_tokens),
        "single_token_share": single_token_share,
        "per_anchor": pa.to_dict(orient="records"),
        **{k: mean_interval(pa[k]) for k in pa.columns if k != "seed"},
        "c4": c4_block(pa.rename(columns={"binned_diff_top_token_share":
                                          "binned_top_token_share_diff"}),
                       pd.DataFrame(null_rows), anchors),
    }
    return SurfaceResult(features=pd.concat(tables, ignore_index=True),
                         comparison=pd.concat(comps, ignore_index=True),
                         contexts=pd.concat(ctxs, ignore_index=True), summary=summary)
