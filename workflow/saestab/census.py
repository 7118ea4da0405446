"""The stability census of one SAE configuration: the SAEs of all seeds, matched pairwise.

A configuration is (model, weights, hook, variant); its SAEs live in the group directories the
trainer wrote (``group<g>/seed<s>/`` with ``eval.json`` and ``eval_features.parquet`` beside the
weights, and ``group<g>/snapshots/epoch<e>/seed<s>/`` for the training-length curve).
:func:`run_census` computes everything the stability figures and the Table-1 analogue need.

Latents that never fire on the train split are labelled ``dead`` and left out of every
stable/unstable share: a dead decoder row sits at its seed-specific initialisation, so a census of
it measures the initialiser, not the model. The seed-level statistics the verdicts use (label
shares of live features, the endpoint mass against a homogeneous-p binomial) come with
leave-one-seed-out jackknife intervals (:mod:`saestab.resampling`), and the same statistics are
computed on known negatives (a homogeneous-p table, SAEs with random decoders, and this
configuration's table re-drawn from its own per-feature p̂) so that the summary can show its
rules failing there.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from . import io, matching, resampling, stability
from .activations import ActivationCache
from .evaluation import FeatureScan, read_evaluation, scan_sae
from .logs import get_logger
from .sae import load_sae
from .stability import mean_interval

log = get_logger("census")

DEAD = "dead"
CENSUS_LABELS = (*stability.LABELS, DEAD)

_SEED_DIR = re.compile(r"^seed(\d+)$")


def seed_dirs(group_dirs: Sequence[str | Path], epoch: int | None = None) -> list[Path]:
    """The saved SAEs of a configuration, ordered by seed (final, or the ``epoch`` snapshot)."""
    from .training import MANIFEST, check_outputs  # lazily: the trainer imports much

    found: dict[int, Path] = {}
    for g in map(Path, group_dirs):
        if (g / MANIFEST).is_file():
            check_outputs(g)  # exactly the seeds and snapshots its job meant to write
        elif g.is_dir():
            log.warning("%s has no %s (trained before manifests were written): its seeds are "
                        "taken as found", g, MANIFEST)
        base = g if epoch is None else g / "snapshots" / f"epoch{epoch}"
        if not base.is_dir():
            raise io.InputError(f"{base}: expected a directory of trained SAEs")
        for d in base.iterdir():
            m = _SEED_DIR.match(d.name)
            if m and (d / "cfg.json").is_file():
                seed = int(m.group(1))
                if seed in found:
                    raise io.InputError(f"{d}: seed {seed} also found in {found[seed]}")
                found[seed] = d
    if len(found) < 2:
        raise io.InputError(f"{list(map(str, group_dirs))}: need at least two trained seeds"
                            f"{'' if epoch is None else f' at epoch {epoch}'}, found {len(found)}")
    return [found[s] for s in sorted(found)]


def seed_map(group_dirs: Sequence[str | Path], epoch: int | None = None) -> dict[int, Path]:
    """``{seed: directory}`` of the saved SAEs of a configuration (see :func:`seed_dirs`)."""
    return {int(_SEED_DIR.match(d.name).group(1)): d  # type: ignore[union-attr]
            for d in seed_dirs(group_dirs, epoch)}


def snapshot_epochs(group_dirs: Sequence[str | Path]) -> list[int]:
    """Epochs for which every group holds snapshots."""
    sets = []
    for g in map(Path, group_dirs):
        snap = g / "snapshots"
        sets.append({int(d.name[5:]) for d in snap.glob("epoch*") if d.name[5:].isdigit()}
                    if snap.is_dir() else set())
    return sorted(set.intersection(*sets)) if sets else []


@dataclass
class Census:
    """Everything :func:`run_census` computed for one configuration."""

    table: pd.DataFrame  # per (anchor, feature): X, N, p_hat, CI, label, frequency, mass
    fractions: pd.DataFrame  # per anchor: stable / middle / unstable fractions
    sweeps: pd.DataFrame  # theta and eps sweeps, per anchor
    n_subsample: pd.DataFrame  # label agreement with fewer seeds
    training_length: pd.DataFrame  # per snapshot epoch: fractions and EV
    evals: pd.DataFrame  # per seed: EV, L0, dead fraction, ...
    seed_level: dict[str, Any]  # jackknifed statistics of the claim and of its known negatives
    maxcos: np.ndarray
    argmax: np.ndarray
    summary: dict[str, Any]


def _load(dirs: Sequence[Path], device: str, train: ActivationCache | None = None,
          train_tokens: int | None = None, train_scans: Mapping[int, FeatureScan] | None = None,
          batch_size: int = 4096) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Decoder directions (S, m, d) and per-seed evaluations; with ``train`` (scanned here, its
    first ``train_tokens`` rows) or ``train_scans`` (its scans by seed), also each feature's
    frequency, mass and energy on the train split as ``train_frequency``, ``train_mass``,
    ``train_energy``."""
    directions, evals = [], []
    for d in dirs:
        sae = load_sae(d, device=device)
        directions.append(sae.decoder_directions().cpu().numpy())
        ev = read_evaluation(d)
        training = d / "training.json"
        if training.is_file():
            ev["decoder_init_cosine"] = io.read_json(training).get("decoder_init_cosine_median")
        seed = int(_SEED_DIR.match(d.name).group(1))  # type: ignore[union-attr]
        tr = None
        if train_scans is not None:
            if seed not in train_scans:
                raise io.InputError(f"no train-split feature scan for seed {seed} (have "
                                    f"{sorted(train_scans)}): rerun rule scan_features")
            if train_scans[seed].count.size != sae.cfg.d_sae:
                raise io.InputError(f"the train-split feature scan of seed {seed} has "
                                    f"{train_scans[seed].count.size} features, the SAE "
                                    f"{sae.cfg.d_sae}: rerun rule scan_features")
            tr = train_scans[seed].evaluation()
        elif train is not None:
            tr = scan_sae(sae, train, batch_size=batch_size, device=device,
                          max_tokens=train_tokens).evaluation()
        if tr is not None:
            for key in ("frequency", "mass", "energy"):
                ev[f"train_{key}"] = tr[key]
            ev["train_ev"] = tr["ev"]
            ev["dead_fraction_train"] = float(np.mean(tr["frequency"] == 0))
        evals.append(ev)
    return np.stack(directions), evals


# ------------------------------------------------------------------------------------------
# seed-level statistics (jackknife over seeds) and their known negatives
# ------------------------------------------------------------------------------------------
def _endpoint_codes(N: int, eps: float) -> np.ndarray:
    """Label code of every possible count X = 0..N (0 stable, 1 middle, 2 unstable)."""
    return stability._label_codes(np.arange(N + 1), N, eps)


def label_statistics(maxcos: np.ndarray, live: np.ndarray, idx: Sequence[int], theta: float,
                     eps: float) -> dict[str, float]:
    """Label shares of the live features of the seeds ``idx``, each matched against the other
    seeds of ``idx`` only, and the endpoint mass a homogeneous model predicts.

    Returns ``stable``, ``middle``, ``unstable`` (shares of live features, mean over anchors),
    ``endpoint`` (stable + unstable), ``mean_p_hat`` (over live features), ``homogeneous_endpoint``
    (P(label is stable or unstable) when every feature has p = mean p̂ and X ~ Binomial(N, p)) and
    ``endpoint_ratio`` (endpoint / homogeneous_endpoint).
    """
    idx = [int(i) for i in idx]
    N = len(idx) - 1
    shares, p_sum, n_live = np.zeros(3), 0.0, 0
    for a in idx:
        others = [b for b in idx if b != a]
        keep = live[a]
        X = (maxcos[a, others][:, keep].astype(np.float32) >= np.float32(theta)).sum(axis=0)
        codes = stability._label_codes(X, N, eps)
        shares += np.bincount(codes, minlength=3) / max(len(codes), 1)
        p_sum += float(X.sum()) / N
        n_live += len(X)
    shares /= len(idx)
    p_bar = p_sum / max(n_live, 1)
    pmf = stats.binom.pmf(np.arange(N + 1), N, p_bar)
    hom = float(pmf[_endpoint_codes(N, eps) != 1].sum())
    endpoint = float(shares[0] + shares[2])
    return {"stable": float(shares[0]), "middle": float(shares[1]),
            "unstable": float(shares[2]), "endpoint": endpoint, "mean_p_hat": p_bar,
            "homogeneous_endpoint": hom,
            "endpoint_ratio": endpoint / hom if hom > 0 else float("nan")}


def jackknife_labels(maxcos: np.ndarray, live: np.ndarray | None, theta: float,
                     eps: float) -> dict[str, Any]:
    """:func:`label_statistics` on all seeds, each with a leave-one-seed-out jackknife interval
    (the labels are recomputed on every subset, with one seed fewer as anchor and as reference).
    """
    S, _, m = maxcos.shape
    live = np.ones((S, m), dtype=bool) if live is None else np.asarray(live, dtype=bool)
    memo: dict[tuple[int, ...], dict[str, float]] = {}

    def stat(key: str) -> Any:
        def f(idx: Sequence[int]) -> float:
            t = tuple(idx)
            if t not in memo:
                memo[t] = label_statistics(maxcos, live, t, theta, eps)
            return memo[t][key]
        return f

    keys = ("stable", "middle", "unstable", "endpoint", "mean_p_hat", "homogeneous_endpoint",
            "endpoint_ratio")
    out: dict[str, Any] = {k: resampling.jackknife(range(S), stat(k)) for k in keys}
    out["n_seeds"], out["n_live"] = S, int(live.sum())
    return out


def homogeneous_table(S: int, m: int, p: float, rng: np.random.Generator) -> np.ndarray:
    """A known negative for C1: an (S, S, m) match table (1 = match, 0 = none) in which every
    feature reappears in every other seed independently with the same probability ``p``."""
    return (rng.random((S, S, m)) < p).astype(np.float16)


def redrawn_table(p_hat: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An (S, S, m) match table in which feature i of anchor a reappears in every other seed
    independently with probability ``p_hat[a, i]``, its observed rate: the same configuration
    re-drawn. Two such tables come from one configuration, so no rule may tell them apart."""
    S, m = p_hat.shape
    return (rng.random((S, S, m)) < np.asarray(p_hat)[:, None, :]).astype(np.float16)


def random_decoder_table(S: int, m: int, d: int, rng: np.random.Generator, device: str = "cpu",
                         chunk_size: int = 4096) -> np.ndarray:
    """A known negative for C1: the max-cosine table of ``S`` SAEs whose decoders are independent
    random rotations (i.i.d. Gaussian directions, uniform on the sphere)."""
    dirs = [rng.standard_normal((m, d)).astype(np.float32) for _ in range(S)]
    maxcos, _ = matching.pairwise_max_cosine(dirs, chunk_size=chunk_size, device=device)
    return maxcos


def seed_level(maxcos: np.ndarray, live: np.ndarray, d: int, theta: float, eps: float,
               seed: int = 0, device: str = "cpu", chunk_size: int = 4096) -> dict[str, Any]:
    """The jackknifed label statistics of a configuration (``claim``) and of its known negatives:
    ``null_homogeneous`` (every feature at p = the claim's mean p̂), ``null_random_decoders``
    (independent random rotations of the same shape) and ``null_replica_a``/``null_replica_b``
    (the claim's table re-drawn twice from its own per-feature p̂, :func:`redrawn_table`)."""
    S, _, m = maxcos.shape
    rng = np.random.default_rng([seed, 7])
    claim = jackknife_labels(maxcos, live, theta, eps)
    p_hat = np.stack([
        (maxcos[a, [b for b in range(S) if b != a]].astype(np.float32) >= np.float32(theta))
        .mean(axis=0) for a in range(S)])
    p_bar = float(p_hat[live].mean()) if live.any() else 0.0
    out = {"claim": claim,
           "null_homogeneous": jackknife_labels(homogeneous_table(S, m, p_bar, rng), None,
                                                theta, eps),
           "null_random_decoders": jackknife_labels(
               random_decoder_table(S, m, d, rng, device, chunk_size), None, theta, eps)}
    for name in ("null_replica_a", "null_replica_b"):
        out[name] = jackknife_labels(redrawn_table(p_hat, rng), live, theta, eps)
    return out


def _interval(j: dict[str, Any]) -> dict[str, Any]:
    """A jackknife interval without its leave-one-out replicates (for tables and figures)."""
    return {k: v for k, v in j.items() if k != "replicates"}


def sweep_intervals(maxcos: np.ndarray, live: np.ndarray | None, thetas: Sequence[float],
                    epss: Sequence[float], theta: float, eps: float) -> list[dict[str, Any]]:
    """The θ sweep (at ``eps``) and the ε sweep (at ``theta``) as seed-level statistics: at each
    setting the label shares of the live features (:func:`jackknife_labels`), each with its
    leave-one-seed-out jackknife interval. One row per setting: ``sweep``, ``theta``, ``eps``
    and an interval per label."""
    rows = []
    for sweep, settings in (("theta", [(t, eps) for t in thetas]),
                            ("eps", [(theta, e) for e in epss])):
        for t, e in settings:
            j = jackknife_labels(maxcos, live, t, e)
            rows.append({"sweep": sweep, "theta": float(t), "eps": float(e),
                         **{lab: _interval(j[lab]) for lab in stability.LABELS}})
    return rows


def p_hat_by_frequency(maxcos: np.ndarray, live: np.ndarray, frequency: np.ndarray,
                       theta: float, n_bins: int = 12) -> list[dict[str, Any]]:
    """Mean p̂ of the live features within equal-width bins of log10 firing frequency (the
    edges span every anchor's firing features), each with a leave-one-seed-out jackknife
    interval: every replicate recomputes p̂ against the seeds it keeps, over the features of the
    anchors it keeps. One row per bin: its edges, ``n_features`` and the ``p_hat`` interval."""
    S = maxcos.shape[0]
    f = np.asarray(frequency, dtype=np.float64)
    use = np.asarray(live, dtype=bool) & (f > 0)
    if not use.any():
        return []
    logf = np.full(f.shape, np.nan)
    logf[use] = np.log10(f[use])
    edges = np.linspace(np.nanmin(logf), np.nanmax(logf), n_bins + 1)
    bins = np.full(f.shape, -1)
    bins[use] = np.clip(np.digitize(logf[use], edges) - 1, 0, n_bins - 1)
    memo: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}

    def per_bin(idx: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(sum of p̂, count) per bin over the anchors of ``idx``, p̂ against ``idx`` only."""
        t = tuple(idx)
        if t not in memo:
            total, count = np.zeros(n_bins), np.zeros(n_bins)
            for a in t:
                others = [b for b in t if b != a]
                p = (maxcos[a, others].astype(np.float32) >= np.float32(theta)).mean(axis=0)
                sel = bins[a] >= 0
                total += np.bincount(bins[a][sel], weights=p[sel], minlength=n_bins)
                count += np.bincount(bins[a][sel], minlength=n_bins)
            memo[t] = (total, count)
        return memo[t]

    def stat(b: int) -> Any:
        def f_(idx: Sequence[int]) -> float:
            total, count = per_bin(idx)
            return float(total[b] / count[b]) if count[b] else float("nan")
        return f_

    n_all = per_bin(tuple(range(S)))[1]
    return [{"bin": b, "log10_freq_low": float(edges[b]), "log10_freq_high": float(edges[b + 1]),
             "n_features": int(n_all[b]),
             "p_hat": _interval(resampling.jackknife(range(S), stat(b)))}
            for b in range(n_bins) if n_all[b]]


def convergence(training_length: pd.DataFrame, threshold: float = 0.02) -> dict[str, Any]:
    """Whether the stable share still moves between the last two snapshots (SPEC's convergence
    gate): ``status`` is ``converged``, ``not converged`` or ``unknown`` (fewer than two
    snapshots), with the epochs and stable shares it was decided on."""
    if len(training_length) < 2:
        return {"status": "unknown", "threshold": threshold,
                "reason": "fewer than two training-length snapshots"}
    last = training_length.sort_values("epoch").iloc[-2:]
    epochs = [int(e) for e in last["epoch"]]
    stable = [float(v) for v in last["stable"]]
    delta = stable[1] - stable[0]
    return {"status": "converged" if abs(delta) <= threshold else "not converged",
            "threshold": threshold, "epochs": epochs, "stable": stable, "delta": delta}


def run_census(group_dirs: Sequence[str | Path], *, theta: float = 0.7, eps: float = 0.05,
               thetas: Sequence[float] = (0.5, 0.6, 0.7, 0.8, 0.9),
               epss: Sequence[float] = (0.0, 0.05, 0.1, 0.2), n_draws: int = 20,
               hungarian_pairs: int = 4, seed: int = 0, device: str = "cpu",
               chunk_size: int = 4096, train_cache: ActivationCache | str | Path | None = None,
               train_tokens: int | None = None,
               train_scans: Mapping[int, FeatureScan] | None = None,
               convergence_threshold: float = 0.02) -> Census:
    """Match every pair of seeds of one configuration and derive the stability statistics.

    The train split the SAEs were trained on decides which latents are dead (never active on
    its first ``train_tokens`` rows; None: all) and gives the per-feature train-split frequency,
    mass and energy that the masking sets are chosen on: ``train_cache`` (scanned here) or
    ``train_scans``, each seed's :class:`~.evaluation.FeatureScan` of it (the workflow's rule
    scan_features). Without either every latent counts as live (e.g. SAEs brought from
    elsewhere without their data).
    """
    if train_cache is not None and train_scans is not None:
        raise ValueError("give train_cache or train_scans, not both")
    rng = np.random.default_rng(seed)
    dirs = seed_dirs(group_dirs)
    if train_cache is not None and not isinstance(train_cache, ActivationCache):
        train_cache = ActivationCache.open(train_cache)
    dirs_np, evals = _load(dirs, device, train_cache, train_tokens, train_scans)
    has_train = train_cache is not None or train_scans is not None
    S, m, d = dirs_np.shape
    log.info("census of %d SAEs x %d features", S, m)
    maxcos, argmax = matching.pairwise_max_cosine(list(dirs_np), chunk_size=chunk_size,
                                                  device=device)
    freq = np.stack([e["frequency"] for e in evals])
    mass = np.stack([e["mass"] for e in evals])
    table = stability.stability_from_maxcos(maxcos, theta, eps, firing_frequency=freq,
                                            activation_mass=mass)
    seeds = [int(_SEED_DIR.match(p.name).group(1)) for p in dirs]  # type: ignore[union-attr]
    table.insert(1, "seed", np.asarray(seeds)[table["anchor"].to_numpy()])
    if has_train:
        for key in ("train_frequency", "train_mass", "train_energy"):
            table[key] = np.concatenate([e[key] for e in evals])
        live = np.stack([e["train_frequency"] > 0 for e in evals])
    else:
        live = np.ones((S, m), dtype=bool)
    table["label"] = with_dead(table["label"], ~live.ravel())
    fractions = live_fractions(table)
    fractions.insert(1, "seed", np.asarray(seeds)[fractions["anchor"].to_numpy()])
    sweeps = pd.concat([stability.theta_sweep(maxcos, thetas, eps).assign(sweep="theta"),
                        stability.eps_sweep(maxcos, epss, theta).assign(sweep="eps")],
                       ignore_index=True)
    nsub = stability.n_subsample(maxcos, list(range(1, S)), theta, eps, draws=n_draws, rng=rng)

    # Hungarian one-to-one matching on a sample of ordered pairs: IoU with the argmax rule
    pairs = [(a, b) for a in range(S) for b in range(S) if a != b]
    pick = rng.choice(len(pairs), size=min(hungarian_pairs, len(pairs)), replace=False)
    ious = [matching.matching_iou(dirs_np[pairs[i][0]], dirs_np[pairs[i][1]], theta,
                                  device=device) for i in sorted(pick)]

    evals_df = pd.DataFrame([{"seed": s, **{k: v for k, v in e.items() if np.isscalar(v)}}
                             for s, e in zip(seeds, evals, strict=True)])
    tl = training_length(group_dirs, theta=theta, eps=eps, device=device,
                         chunk_size=chunk_size)
    levels = seed_level(maxcos, live, d, theta, eps, seed=seed, device=device,
                        chunk_size=chunk_size)
    sweeps_seed_level = sweep_intervals(maxcos, live, thetas, epss, theta, eps)
    by_frequency = p_hat_by_frequency(maxcos, live, freq, theta)
    per_seed = {k: evals_df[k].astype(float).tolist() for k in
                ("ev", "l0", "train_ev", "dead_fraction_train") if k in evals_df}
    summary = {
        "n_seeds": S, "n_features": m, "theta": theta, "eps": eps,
        "seeds": seeds,
        # shares of live latents: seed-level (jackknife) intervals, with the anchor spread beside
        **{name: _share(levels["claim"][name], fractions[name].to_numpy())
           for name in stability.LABELS},
        "dead": mean_interval(fractions["dead"].to_numpy()),  # one value per SAE: t over seeds
        "seed_level": levels,
        "per_seed": per_seed,
        "convergence": convergence(tl, convergence_threshold),
        "dead_fraction_train": (resampling.mean_of(np.asarray(per_seed["dead_fraction_train"]))
                                if "dead_fraction_train" in per_seed else None),
        "train_ev": (resampling.mean_of(np.asarray(per_seed["train_ev"]))
                     if "train_ev" in per_seed else None),
        "hungarian_iou": mean_interval(np.asarray(ious)) | {
            "pairs": [list(map(int, pairs[i])) for i in sorted(pick)]},
        "ev": mean_interval(evals_df["ev"].to_numpy()),
        "l0": mean_interval(evals_df["l0"].to_numpy()),
        "target_l0": target_l0(dirs[0]),
        "dead_fraction": mean_interval(evals_df["dead_fraction"].to_numpy()),
        "decoder_init_cosine": (mean_interval(evals_df["decoder_init_cosine"].to_numpy(float))
                                if evals_df.get("decoder_init_cosine") is not None
                                and evals_df["decoder_init_cosine"].notna().all() else None),
        "training_length": tl.to_dict(orient="records"),
        # figures: the sweeps and the p̂-frequency profile with seed-level intervals
        "sweeps": sweeps_seed_level,
        "p_hat_by_frequency": by_frequency,
    }
    return Census(table=table, fractions=fractions, sweeps=sweeps, n_subsample=nsub,
                  training_length=tl, evals=evals_df, seed_level=levels, maxcos=maxcos,
                  argmax=argmax, summary=summary)


def target_l0(sae_dir: str | Path) -> float | None:
    """The L0 an SAE's recipe aims at: ``target_l0`` (relu/jumprelu steered to an L0), else
    ``k`` (the TopK family), else None (a fixed penalty coefficient, or an SAE from
    elsewhere)."""
    f = Path(sae_dir) / "cfg.json"
    cfg = io.read_json(f) if f.is_file() else {}
    target = (cfg.get("recipe") or {}).get("target_l0")
    if target is None:
        target = cfg.get("k")
    return float(target) if isinstance(target, (int, float)) else None


def _share(seed_level: dict[str, Any], per_anchor: np.ndarray) -> dict[str, Any]:
    """A label share: its jackknife interval over seeds, and the spread across anchors (``std``,
    ``min``, ``max``), which SPEC asks to report beside it but which is no interval: anchors
    matched against the same other seeds are not independent."""
    spread = mean_interval(per_anchor)
    return {**_interval(seed_level), "std": spread["std"], "min": spread["min"],
            "max": spread["max"]}


def with_dead(labels: pd.Series | np.ndarray, dead: np.ndarray) -> pd.Categorical:
    """Census labels: the stability label, or ``dead`` where the latent never fired on the train
    split (a categorical over :data:`CENSUS_LABELS`)."""
    lab = np.asarray(labels, dtype=object)
    lab = np.where(np.asarray(dead, dtype=bool), DEAD, lab)
    return pd.Categorical(lab, categories=list(CENSUS_LABELS))


def live_fractions(table: pd.DataFrame) -> pd.DataFrame:
    """Per anchor: ``anchor, n_features, n_live``, the ``stable``/``middle``/``unstable`` shares
    of its live features and the ``dead`` share of all its features."""
    rows = []
    for anchor, t in table.groupby("anchor", sort=True):
        lab = t["label"].astype(str).to_numpy()
        live = lab != DEAD
        n_live = int(live.sum())
        row = {"anchor": anchor, "n_features": len(t), "n_live": n_live}
        for name in stability.LABELS:
            row[name] = float((lab == name).sum() / n_live) if n_live else float("nan")
        row[DEAD] = float((~live).mean())
        rows.append(row)
    return pd.DataFrame(rows)


def training_length(group_dirs: Sequence[str | Path], *, theta: float = 0.7, eps: float = 0.05,
                    device: str = "cpu", chunk_size: int = 4096) -> pd.DataFrame:
    """Label fractions and EV of the snapshots at every saved epoch (stability vs training
    length): ``epoch, stable, middle, unstable`` (means over anchors), ``*_std`` (spread over
    anchors), ``*_ci_low``/``*_ci_high`` (leave-one-seed-out jackknife interval,
    :func:`jackknife_labels`), ``ev`` with ``ev_ci_low``/``ev_ci_high`` (t interval over
    seeds), ``l0``, ``dead_fraction`` (means over seeds), and the ``steps`` and
    ``tokens_seen`` of that budget (each snapshot finished its own learning-rate decay there)."""
    rows = []
    for epoch in snapshot_epochs(group_dirs):
        dirs = seed_dirs(group_dirs, epoch)
        dirs_np, evals = _load(dirs, device)
        maxcos, _ = matching.pairwise_max_cosine(list(dirs_np), chunk_size=chunk_size,
                                                 device=device)
        fr = stability.label_fractions(stability.stability_from_maxcos(maxcos, theta, eps))
        row: dict[str, Any] = {"epoch": epoch, "n_seeds": len(dirs)}
        jack = jackknife_labels(maxcos, None, theta, eps)
        for lab in stability.LABELS:
            row[lab] = float(fr[lab].mean())
            row[f"{lab}_std"] = float(fr[lab].std(ddof=1)) if len(fr) > 1 else float("nan")
            row[f"{lab}_ci_low"] = jack[lab]["ci_low"]
            row[f"{lab}_ci_high"] = jack[lab]["ci_high"]
        for key in ("ev", "l0", "dead_fraction"):
            row[key] = float(np.mean([e[key] for e in evals]))
        ev = resampling.mean_of(np.array([e["ev"] for e in evals]))
        row["ev_ci_low"], row["ev_ci_high"] = ev["ci_low"], ev["ci_high"]
        recipe = io.read_json(dirs[0] / "cfg.json").get("recipe", {})
        row["steps"], row["tokens_seen"] = recipe.get("steps"), recipe.get("tokens_seen")
        rows.append(row)
    return pd.DataFrame(rows)


def write_census(c: Census, out_dir: str | Path) -> None:
    """Write a census to ``out_dir`` (each file atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    matching.save_pairwise(out / "pairwise.npz", c.maxcos, c.argmax)
    stability.write_table(c.table, out / "features.parquet")
    stability.write_table(c.sweeps, out / "sweeps.parquet")
    stability.write_table(c.n_subsample, out / "n_subsample.parquet")
    for name, df in (("fractions", c.fractions), ("training_length", c.training_length),
                     ("evals", c.evals)):
        with io.atomic_path(out / f"{name}.csv") as tmp:
            df.to_csv(tmp, index=False)
    io.write_json(out / "summary.json", c.summary)
