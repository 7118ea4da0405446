"""The stability census of one SAE configuration: the SAEs of all seeds, matched pairwise.

A configuration is (model, weights, hook, variant); its SAEs live in the group directories the
trainer wrote (``group<g>/seed<s>/`` with ``eval.json`` and ``eval_features.parquet`` beside the
weights, and ``group<g>/snapshots/epoch<e>/seed<s>/`` for the training-length curve).
:func:`run_census` computes everything the stability figures and the Table-1 analogue need.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import io, matching, stability
from .evaluation import read_evaluation
from .logs import get_logger
from .sae import load_sae
from .stability import mean_interval

log = get_logger("census")

_SEED_DIR = re.compile(r"^seed(\d+)$")


def seed_dirs(group_dirs: Sequence[str | Path], epoch: int | None = None) -> list[Path]:
    """The saved SAEs of a configuration, ordered by seed (final, or the ``epoch`` snapshot)."""
    found: dict[int, Path] = {}
    for g in map(Path, group_dirs):
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
    maxcos: np.ndarray
    argmax: np.ndarray
    summary: dict[str, Any]


def _load(dirs: Sequence[Path], device: str) -> tuple[np.ndarray, list[dict[str, Any]]]:
    directions, evals = [], []
    for d in dirs:
        sae = load_sae(d, device=device)
        directions.append(sae.decoder_directions().cpu().numpy())
        ev = read_evaluation(d)
        training = d / "training.json"
        if training.is_file():
            ev["decoder_init_cosine"] = io.read_json(training).get("decoder_init_cosine_median")
        evals.append(ev)
    return np.stack(directions), evals


def run_census(group_dirs: Sequence[str | Path], *, theta: float = 0.7, eps: float = 0.05,
               thetas: Sequence[float] = (0.5, 0.6, 0.7, 0.8, 0.9),
               epss: Sequence[float] = (0.0, 0.05, 0.1, 0.2), n_draws: int = 20,
               hungarian_pairs: int = 4, seed: int = 0, device: str = "cpu",
               chunk_size: int = 4096) -> Census:
    """Match every pair of seeds of one configuration and derive the stability statistics."""
    rng = np.random.default_rng(seed)
    dirs = seed_dirs(group_dirs)
    dirs_np, evals = _load(dirs, device)
    S, m, _ = dirs_np.shape
    log.info("census of %d SAEs x %d features", S, m)
    maxcos, argmax = matching.pairwise_max_cosine(list(dirs_np), chunk_size=chunk_size,
                                                  device=device)
    freq = np.stack([e["frequency"] for e in evals])
    mass = np.stack([e["mass"] for e in evals])
    table = stability.stability_from_maxcos(maxcos, theta, eps, firing_frequency=freq,
                                            activation_mass=mass)
    seeds = [int(_SEED_DIR.match(d.name).group(1)) for d in dirs]  # type: ignore[union-attr]
    table.insert(1, "seed", np.asarray(seeds)[table["anchor"].to_numpy()])
    fractions = stability.label_fractions(table)
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
    summary = {
        "n_seeds": S, "n_features": m, "theta": theta, "eps": eps,
        "stable": mean_interval(fractions["stable"].to_numpy()),
        "unstable": mean_interval(fractions["unstable"].to_numpy()),
        "middle": mean_interval(fractions["middle"].to_numpy()),
        "hungarian_iou": mean_interval(np.asarray(ious)) | {
            "pairs": [list(map(int, pairs[i])) for i in sorted(pick)]},
        "ev": mean_interval(evals_df["ev"].to_numpy()),
        "l0": mean_interval(evals_df["l0"].to_numpy()),
        "dead_fraction": mean_interval(evals_df["dead_fraction"].to_numpy()),
        "decoder_init_cosine": (mean_interval(evals_df["decoder_init_cosine"].to_numpy(float))
                                if evals_df.get("decoder_init_cosine") is not None
                                and evals_df["decoder_init_cosine"].notna().all() else None),
        "training_length": tl.to_dict(orient="records"),
    }
    return Census(table=table, fractions=fractions, sweeps=sweeps, n_subsample=nsub,
                  training_length=tl, evals=evals_df, maxcos=maxcos, argmax=argmax,
                  summary=summary)


def training_length(group_dirs: Sequence[str | Path], *, theta: float = 0.7, eps: float = 0.05,
                    device: str = "cpu", chunk_size: int = 4096) -> pd.DataFrame:
    """Label fractions and EV of the snapshots at every saved epoch (stability vs training
    length): ``epoch, stable, middle, unstable`` (means over anchors), ``*_std``, ``ev``,
    ``l0``, ``dead_fraction`` (means over seeds)."""
    rows = []
    for epoch in snapshot_epochs(group_dirs):
        dirs = seed_dirs(group_dirs, epoch)
        dirs_np, evals = _load(dirs, device)
        maxcos, _ = matching.pairwise_max_cosine(list(dirs_np), chunk_size=chunk_size,
                                                 device=device)
        fr = stability.label_fractions(stability.stability_from_maxcos(maxcos, theta, eps))
        row: dict[str, Any] = {"epoch": epoch, "n_seeds": len(dirs)}
        for lab in stability.LABELS:
            row[lab] = float(fr[lab].mean())
            row[f"{lab}_std"] = float(fr[lab].std(ddof=1)) if len(fr) > 1 else float("nan")
        for key in ("ev", "l0", "dead_fraction"):
            row[key] = float(np.mean([e[key] for e in evals]))
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
