"""Feature pools: an SAE assembled from the unique features of several seeds (claim C7).

Given the SAEs of one configuration (same recipe, different init seeds):

1. **Disjoint pools.** :func:`split_seeds` cuts the seeds into ``n_pools`` disjoint subsets; each
   subset makes one pool, so that the agreement between pools measures reproducibility the
   same way the agreement between seeds does.
2. **Candidates and order.** Every feature of every SAE of a pool is a candidate. Candidates are
   ranked by their *within-pool* stability (:func:`within_pool_stability`: the share of the
   pool's other seeds in which the feature reappears, max decoder cosine >= theta), then by
   activation mass, then by (seed, feature) for a deterministic order. The stability that
   orders a pool's candidates is computed from that pool's own seeds only, never from the seeds
   of another pool: otherwise features known to reappear in the other pool's seeds would be
   preferred, and the pools' mutual agreement would be inflated by construction.
3. **Greedy de-duplication** (:func:`greedy_unique`): walk the ranked candidates and keep one
   when its decoder direction has cosine < theta with every feature already kept, until
   ``d_sae`` are kept.
4. **Assembly** (:func:`assemble_pool`): the kept features bring their encoder column
   (``W_enc[:, j]``), ``b_enc[j]``, decoder row and threshold (jumprelu, batchtopk, matryoshka)
   from their source SAE; ``b_dec`` is the mean of the sources' ``b_dec``, and each ``b_enc[j]``
   is shifted by ``W_enc[:, j] . (b_dec - b_dec_source)`` so that every feature's
   pre-activation is exactly what it was in its source SAE. If fewer than ``d_sae`` unique
   features exist, the remaining slots are filled with the best-ranked rejected candidates
   (near-duplicates of kept features, from other seeds), so that the pool keeps the original
   size; the number of unique features is reported (``n_unique``), and post-training is free to
   separate the duplicates. A pool of the same SAE with itself therefore yields that SAE's
   features, each once.
5. **Post-training** (:func:`post_train`): a short continued training of the assembled SAE
   (:func:`saestab.training.train_group` with ``init``) with the configuration's recipe.

Matryoshka: the pooled order (most stable first) becomes the nested-prefix order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from . import io, matching, resampling
from .activations import ActivationCache
from .evaluation import evaluate_sae, read_evaluation, write_evaluation
from .logs import get_logger
from .sae import SAE, SAEConfig, get_architecture, load_sae, sae_from_tensors
from .stability import mean_interval, write_table
from .training import RunOptions, TrainConfig, TrainResult, train_group

log = get_logger("pooling")


# ------------------------------------------------------------------------------------------
# seeds, stability, ranking
# ------------------------------------------------------------------------------------------
def split_seeds(seeds: Sequence[int], n_pools: int) -> list[list[int]]:
    """``n_pools`` disjoint, contiguous subsets of ``seeds`` (sizes differ by at most one)."""
    seeds = [int(s) for s in seeds]
    if n_pools < 1:
        raise ValueError(f"n_pools must be at least 1, got {n_pools}")
    if len(seeds) < n_pools:
        raise ValueError(f"{len(seeds)} seeds cannot make {n_pools} disjoint pools")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}")
    return [list(map(int, part)) for part in np.array_split(np.asarray(seeds), n_pools)]


def within_pool_stability(maxcos: np.ndarray, members: Sequence[int], theta: float
                          ) -> np.ndarray:
    """Per feature of each member SAE, the share of the *other members* in which it reappears.

    ``maxcos`` is the (S, S, m) pairwise max-cosine table of all seeds of the configuration
    (:func:`saestab.matching.pairwise_max_cosine`); ``members`` are indices into it. Only the
    rows and columns of ``members`` are read, so seeds outside the pool cannot influence the
    result (no leakage between disjoint pools). Returns (len(members), m) float64; all zeros for
    a pool of one SAE (no other member).
    """
    idx = np.asarray(members, dtype=np.int64)
    if idx.size == 0:
        raise ValueError("a pool needs at least one member")
    if len(set(idx.tolist())) != idx.size:
        raise ValueError(f"pool members must be distinct, got {idx.tolist()}")
    m = maxcos.shape[2]
    if idx.size == 1:
        return np.zeros((1, m))
    sub = maxcos[np.ix_(idx, idx)].astype(np.float32) >= np.float32(theta)  # (P, P, m)
    hits = sub.sum(axis=1) - np.diagonal(sub, axis1=0, axis2=1).T  # drop the self match
    return hits / (idx.size - 1)


def rank_candidates(stability: np.ndarray, mass: np.ndarray) -> np.ndarray:
    """Order of the (P, m) candidates, flattened row-major: stability, then mass, descending;
    ties by (member, feature) ascending."""
    stability = np.asarray(stability, dtype=np.float64)
    mass = np.asarray(mass, dtype=np.float64)
    if stability.shape != mass.shape or stability.ndim != 2:
        raise ValueError(f"stability and mass must be (P, m) arrays of one shape, got "
                         f"{stability.shape} and {mass.shape}")
    flat = np.arange(stability.size)
    return np.lexsort((flat, -mass.ravel(), -stability.ravel()))


@torch.no_grad()
def greedy_unique(directions: torch.Tensor | np.ndarray, order: np.ndarray, theta: float,
                  limit: int | None = None, block: int = 1024,
                  device: str | torch.device = "cpu") -> np.ndarray:
    """Indices of the candidates kept by greedy de-duplication, in ``order``.

    Walk ``directions[order]`` and keep a candidate when its cosine with every kept one is
    below ``theta``; stop after ``limit`` kept. Exact (the same result as the one-by-one loop):
    each block of ``block`` candidates is first checked against everything kept so far with one
    matrix product, and the survivors are then resolved in order among themselves.
    """
    d = matching.normalize_rows(directions, device)
    order = np.asarray(order, dtype=np.int64)
    limit = len(order) if limit is None else int(limit)
    kept: list[int] = []
    buf = torch.empty((min(limit, 4 * block), d.shape[1]), dtype=d.dtype, device=d.device)
    n_kept = 0
    th = float(theta)
    for b0 in range(0, len(order), block):
        if n_kept >= limit:
            break
        cand = torch.from_numpy(order[b0:b0 + block]).to(d.device)
        x = d[cand]
        alive = torch.ones(len(cand), dtype=torch.bool, device=d.device)
        if n_kept:
            alive &= (x @ buf[:n_kept].T).amax(dim=1) < th
        idx = torch.nonzero(alive).flatten()
        if idx.numel() == 0:
            continue
        y = x[idx]
        dup = ((y @ y.T) >= th).cpu().numpy()  # a candidate dies if an earlier kept one is close
        dead = np.zeros(len(idx), dtype=bool)
        chosen = []
        for i in range(len(idx)):
            if dead[i]:
                continue
            chosen.append(i)
            if n_kept + len(chosen) >= limit:
                break
            dead[i + 1:] |= dup[i, i + 1:]
        sel = idx[torch.as_tensor(chosen, dtype=torch.int64, device=d.device)]
        n_new = len(chosen)
        if n_kept + n_new > buf.shape[0]:  # grow by doubling (amortised copies)
            grown = torch.empty((max(2 * buf.shape[0], n_kept + n_new), d.shape[1]),
                                dtype=d.dtype, device=d.device)
            grown[:n_kept] = buf[:n_kept]
            buf = grown
        buf[n_kept:n_kept + n_new] = x[sel]
        n_kept += n_new
        kept.extend(cand[sel].cpu().tolist())
    return np.asarray(kept[:limit], dtype=np.int64)


# ------------------------------------------------------------------------------------------
# assembly
# ------------------------------------------------------------------------------------------
@dataclass
class Pool:
    """An assembled pool and where its features came from."""

    sae: SAE
    members: pd.DataFrame  # per slot: slot, source, seed, feature, stability, mass, rank, unique
    n_unique: int  # unique features found among the candidates (may exceed d_sae)
    n_candidates: int

    @property
    def n_filled(self) -> int:
        """Slots filled with near-duplicates because too few unique features existed."""
        return int((~self.members["unique"]).sum())


def assemble_pool(saes: Sequence[SAE], stability: np.ndarray, mass: np.ndarray, theta: float,
                  d_sae: int | None = None, seeds: Sequence[int] | None = None,
                  device: str | torch.device = "cpu", block: int = 1024) -> Pool:
    """Pool the unique features of ``saes`` into one SAE of ``d_sae`` latents (see module doc).

    ``stability`` and ``mass`` are (P, m) arrays ranking the candidates; ``stability`` must come
    from the pool's own SAEs only (:func:`within_pool_stability`). ``d_sae`` defaults to the
    sources' size; ``seeds`` label the sources in ``members`` (default 0..P-1).
    """
    if not saes:
        raise ValueError("a pool needs at least one SAE")
    c0 = saes[0].cfg
    for s in saes[1:]:
        if (s.cfg.architecture, s.cfg.d_in, s.cfg.d_sae, s.cfg.k) != (c0.architecture, c0.d_in,
                                                                        c0.d_sae, c0.k):
            raise ValueError("pooled SAEs must share architecture, d_in, d_sae and k; got "
                             f"{s.cfg.architecture}/{s.cfg.d_in}/{s.cfg.d_sae}/{s.cfg.k} vs "
                             f"{c0.architecture}/{c0.d_in}/{c0.d_sae}/{c0.k}")
    P, m = len(saes), c0.d_sae
    stability = np.asarray(stability, dtype=np.float64)
    mass = np.asarray(mass, dtype=np.float64)
    if stability.shape != (P, m) or mass.shape != (P, m):
        raise ValueError(f"stability and mass must have shape {(P, m)}, got {stability.shape} "
                         f"and {mass.shape}")
    seeds = list(range(P)) if seeds is None else [int(s) for s in seeds]
    d_sae = m if d_sae is None else int(d_sae)
    if not 0 < d_sae <= P * m:
        raise ValueError(f"d_sae must lie in [1, {P * m}], got {d_sae}")
    if c0.k is not None and c0.architecture == "topk" and c0.k > d_sae:
        raise ValueError(f"k={c0.k} exceeds the pooled d_sae={d_sae}")

    dirs = torch.cat([s.decoder_directions().to(device) for s in saes])  # (P*m, d)
    order = rank_candidates(stability, mass)
    # count every unique feature (no limit), then keep the first d_sae of them
    unique = greedy_unique(dirs, order, theta, limit=None, block=block, device=device)
    n_unique = len(unique)
    chosen = unique[:d_sae]
    if n_unique < d_sae:  # fill with the best-ranked near-duplicates
        is_kept = np.zeros(P * m, dtype=bool)
        is_kept[unique] = True
        rest = order[~is_kept[order]]
        chosen = np.concatenate([unique, rest[:d_sae - n_unique]])
        log.warning("only %d unique features among %d candidates (theta %.2f); %d slots filled "
                    "with near-duplicates", n_unique, P * m, theta, d_sae - n_unique)
    src, feat = np.divmod(chosen, m)
    rank = np.empty(P * m, dtype=np.int64)
    rank[order] = np.arange(P * m)

    tensors = [{n: t.detach().float().cpu() for n, t in s.state_tensors().items()} for s in saes]
    b_dec = torch.stack([t["b_dec"] for t in tensors]).double().mean(0).float()
    w_enc = torch.empty(c0.d_in, d_sae)
    w_dec = torch.empty(d_sae, c0.d_in)
    b_enc = torch.empty(d_sae)
    thr = torch.empty(d_sae) if get_architecture(c0.architecture).has_threshold else None
    for p in range(P):
        slots = np.flatnonzero(src == p)
        if slots.size == 0:
            continue
        f = torch.from_numpy(feat[slots])
        sl = torch.from_numpy(slots)
        t = tensors[p]
        w_enc[:, sl] = t["W_enc"][:, f]
        w_dec[sl] = t["W_dec"][f]
        # keep each feature's pre-activation: w.(x - b_dec) + b_enc' = w.(x - b_dec_p) + b_enc
        shift = (b_dec - t["b_dec"]).double() @ t["W_enc"][:, f].double()
        b_enc[sl] = (t["b_enc"][f].double() + shift).float()
        if thr is not None:
            thr[sl] = t["threshold"][f]
    out = {"W_enc": w_enc, "W_dec": w_dec, "b_enc": b_enc, "b_dec": b_dec}
    if thr is not None:
        out["threshold"] = thr
    recipe = dict(c0.recipe)
    recipe["pool"] = {"theta": float(theta), "source_seeds": seeds, "n_unique": int(n_unique),
                      "n_candidates": int(P * m), "n_filled": int(max(0, d_sae - n_unique))}
    cfg = SAEConfig(architecture=c0.architecture, d_in=c0.d_in, d_sae=d_sae, k=c0.k,
                    model_name=c0.model_name, hook_name=c0.hook_name, recipe=recipe,
                    seeds={"pool_of_seeds": seeds})
    sae = sae_from_tensors(cfg, out)
    members = pd.DataFrame({
        "slot": np.arange(d_sae, dtype=np.int32),
        "source": src.astype(np.int32),
        "seed": np.asarray(seeds, dtype=np.int64)[src],
        "feature": feat.astype(np.int32),
        "stability": stability.ravel()[chosen],
        "mass": mass.ravel()[chosen],
        "rank": rank[chosen],
        "unique": np.arange(d_sae) < n_unique,
    })
    log.info("pool of seeds %s: %d unique features among %d candidates, kept %d", seeds,
             n_unique, P * m, min(n_unique, d_sae))
    return Pool(sae=sae, members=members, n_unique=n_unique, n_candidates=P * m)


# ------------------------------------------------------------------------------------------
# post-training and comparison
# ------------------------------------------------------------------------------------------
def reached_coefficient(recipes: Sequence[dict[str, Any]]) -> float | None:
    """The geometric mean of the penalty coefficients that SAEs trained with ``target_l0``
    reached, from their ``cfg.recipe`` (None when none was steered): where their continued
    training starts."""
    reached = [(r.get("target_l0_reached") or {}).get("coefficient") for r in recipes]
    reached = [float(c) for c in reached if c is not None and c > 0]
    return float(np.exp(np.mean(np.log(reached)))) if reached else None


def post_train_config(recipe: dict[str, Any], n_tokens: int, warmup_steps: int,
                      lr_scale: float = 1.0, d_in: int | None = None,
                      coefficient: float | None = None) -> TrainConfig:
    """The variant's recipe, shortened to ``n_tokens`` for continued training.

    The length replaces ``n_epochs``/``n_tokens``; the learning rate is the recipe's (its
    default rule when unset, which needs ``d_in``) times ``lr_scale``; warm-up is
    ``warmup_steps`` (capped at a tenth of the steps); the sparsity-penalty warm-up is off (the
    SAE is already sparse). ``coefficient``: the sparsity-penalty coefficient to start from,
    for a recipe steered to ``target_l0`` (what the trained SAEs reached, not the recipe's
    starting point, which a short continuation could not steer back from).
    """
    r = {k: v for k, v in recipe.items() if v is not None and k != "vary_data_seed"}
    key = get_architecture(r["architecture"]).coefficient_key
    if coefficient is not None and key is not None and r.get("target_l0") is not None:
        r[key] = float(coefficient)
    r.pop("n_epochs", None)
    r["n_tokens"] = int(n_tokens)
    if lr_scale != 1.0:
        if r.get("lr") is None:
            if d_in is None:
                raise ValueError("scaling the recipe's default learning rate needs d_in")
            r["lr"] = TrainConfig(**r).resolved(d_in, int(n_tokens), torch.device("cpu")).lr
        r["lr"] = float(r["lr"]) * float(lr_scale)
    steps = int(n_tokens) // int(r.get("batch_size", TrainConfig.batch_size))
    if steps < 1:
        raise ValueError(f"post-training of {n_tokens} tokens makes no full batch")
    r["warmup_steps"] = min(int(warmup_steps), max(steps // 10, 0))
    r["l1_warmup_steps"] = 0
    return TrainConfig(**r)


def post_train(saes: Sequence[SAE], cache: ActivationCache | str | Path, cfg: TrainConfig,
               data_seed: int = 0, device: str | torch.device = "cpu") -> TrainResult:
    """Continue training each of ``saes`` on ``cache`` for ``cfg``'s length (shared data order).

    The returned SAEs keep the inputs' ``cfg.recipe`` (pool provenance included) with the
    continued training's recipe and step count under ``recipe["post_training"]``.
    """
    result = train_group(cache, cfg, list(range(len(saes))), data_seed,
                         RunOptions(device=device, snapshots_at_epochs=()),
                         init=[s.state_tensors() for s in saes])
    for src, new in zip(saes, result.saes, strict=True):
        post = dict(new.cfg.recipe)
        new.cfg.recipe = {**src.cfg.recipe, "post_training": post}
        new.cfg.seeds = {**src.cfg.seeds, "data_seed": int(data_seed)}
    return result


def cross_max_cosine(a: SAE | torch.Tensor | np.ndarray, b: SAE | torch.Tensor | np.ndarray,
                     device: str | torch.device = "cpu") -> np.ndarray:
    """For each feature of ``a``, its best decoder cosine among the features of ``b``."""
    da = a.decoder_directions() if isinstance(a, SAE) else a
    db = b.decoder_directions() if isinstance(b, SAE) else b
    return matching.max_cosine(da, db, device=device)[0]


def mutual_stability(maxcos_values: np.ndarray, theta: float) -> float:
    """Share of features whose best cross match reaches ``theta``."""
    v = np.asarray(maxcos_values, dtype=np.float32)
    return float((v >= np.float32(theta)).mean())


# ------------------------------------------------------------------------------------------
# one configuration end to end
# ------------------------------------------------------------------------------------------
KINDS = ("standard", "standard_continued", "pool_before", "pool_after")
"""What is compared: standard SAEs as trained, the same continued for the post-training length
(a control for the extra training), pools as assembled, and pools after post-training."""


@dataclass
class PoolStudy:
    """Everything :func:`run_pools` computed for one configuration."""

    subsets: list[list[int]]  # seed labels of each pool
    pools: list[Pool]
    post: list[SAE]  # pools after post-training
    continued: list[SAE]  # control: the first standard SAE of each subset, continued
    evals: pd.DataFrame  # per SAE: kind, pool, seed, ev, l0, dead_fraction, ...
    cross: pd.DataFrame  # per (kind, a, b, feature): max_cos of a's feature in b
    summary: dict[str, Any]
    eval_results: dict[tuple[str, int], dict[str, Any]]  # (kind, pool) -> evaluate_sae output


def training_tokens(recipe: dict[str, Any], n_rows: int) -> int:
    """Tokens a variant's recipe trains on for a cache of ``n_rows`` rows."""
    r = {k: v for k, v in recipe.items() if v is not None and k != "vary_data_seed"}
    cfg = TrainConfig(**r)
    return cfg.total_steps(n_rows) * cfg.batch_size


def post_train_tokens(recipe: dict[str, Any], n_rows: int, fraction: float,
                      tokens: int | None = None) -> int:
    """Post-training length: ``tokens`` if given, else ``fraction`` of the recipe's training
    tokens; at least one batch."""
    batch = int(recipe.get("batch_size") or TrainConfig.batch_size)
    n = int(tokens) if tokens is not None else int(round(fraction * training_tokens(recipe,
                                                                                  n_rows)))
    return max(n, batch)


def pool_splits(S: int, n_pools: int, n_splits: int, seed: int = 0) -> list[list[list[int]]]:
    """``n_splits`` ways of cutting seeds ``0..S-1`` into ``n_pools`` disjoint subsets: the first
    contiguous (seeds in order), the others after a seeded random permutation (each subset
    sorted). Splits repeat nothing but may share seeds."""
    out = [split_seeds(range(S), n_pools)]
    rng = np.random.default_rng([seed, 11])
    while len(out) < n_splits:
        perm = rng.permutation(S)
        out.append([sorted(part) for part in split_seeds(perm, n_pools)])
    return out


@dataclass
class _Inputs:
    """What every split of :func:`run_pools` shares."""

    sae_dirs: Sequence[str | Path]
    maxcos: np.ndarray
    train_cache: ActivationCache
    eval_cache: ActivationCache
    cfg: TrainConfig
    labels: list[int]
    mass: np.ndarray
    theta: float
    data_seed: int
    eval_batch_size: int
    device: str | torch.device


def run_pools(sae_dirs: Sequence[str | Path], maxcos: np.ndarray, train_cache: ActivationCache,
              eval_cache: ActivationCache, recipe: dict[str, Any], *, theta: float = 0.7,
              n_pools: int = 2, post_tokens: int, warmup_steps: int = 10,
              lr_scale: float = 1.0,
              mass_tokens: int | None = 32768, data_seed: int = 0,
              eval_batch_size: int = 4096, device: str | torch.device = "cpu",
              n_splits: int = 1, split_seed: int = 0) -> PoolStudy:
    """Disjoint pools of one configuration's seeds, post-trained, compared with standard SAEs.

    ``sae_dirs`` are the configuration's SAEs in the order of ``maxcos`` (its census table).
    The activation mass that ranks candidates is measured on the first ``mass_tokens`` rows of
    the *train* cache (None: all), so the eval split stays held out for the EV comparison.
    Mutual stability of two SAEs = share of the first's features with a best match >= theta in
    the second; it is computed for every ordered pair of different subsets: pool vs pool, and
    standard SAE of one subset vs standard SAE of the other (from ``maxcos``), like for like.

    The whole comparison is repeated on ``n_splits`` random splits of the seeds
    (:func:`pool_splits`); the returned study holds the first split's SAEs and tables, and its
    summary's ``c7`` block the per-split contrasts the verdict reads (:func:`c7_block`).
    """

    S = len(sae_dirs)
    if maxcos.shape[:2] != (S, S):
        raise ValueError(f"the max-cosine table covers {maxcos.shape[0]} SAEs, given {S}")
    # SAEs are loaded one at a time for the mass, then one pool's members at a time, so that
    # memory holds at most one pool's worth of weights (96 seeds x 16k latents is ~10 GB at d=768)
    labels, mass_rows, recipes = [], [], []
    d_in = 0
    for i, d in enumerate(sae_dirs):
        sae = load_sae(d, device="cpu")
        d_in = sae.cfg.d_in
        recipes.append(sae.cfg.recipe)
        if maxcos.shape[2] != sae.cfg.d_sae:
            raise ValueError(f"the max-cosine table has {maxcos.shape[2]} features per SAE, {d} "
                             f"has {sae.cfg.d_sae}")
        labels.append(int(sae.cfg.seeds.get("init_seed", i)))
        mass_rows.append(evaluate_sae(sae, train_cache, batch_size=eval_batch_size,
                                      device=device, max_tokens=mass_tokens)["mass"])
        del sae
    inputs = _Inputs(sae_dirs, maxcos, train_cache, eval_cache,
                     post_train_config(recipe, post_tokens, warmup_steps, lr_scale, d_in=d_in,
                                       coefficient=reached_coefficient(recipes)),
                     labels, np.stack(mass_rows), theta, data_seed, eval_batch_size, device)
    studies = []
    for k, subsets in enumerate(pool_splits(S, n_pools, n_splits, split_seed)):
        log.info("split %d of %d: %s", k + 1, n_splits, [[labels[i] for i in s] for s in subsets])
        studies.append(_run_split(inputs, subsets))
    study = studies[0]
    study.summary.update({
        "mass_tokens": mass_tokens, "post_train_tokens": int(post_tokens),
        "post_train_lr": inputs.cfg.lr, "post_train_lr_scale": float(lr_scale),
        "training_tokens": training_tokens(recipe, train_cache.n_tokens),
        "n_splits": n_splits,
        "splits": [s.summary["split"] for s in studies],
        "c7": c7_block([s.summary["split"] for s in studies]),
    })
    return study


def _run_split(x: _Inputs, subsets: list[list[int]]) -> PoolStudy:
    """One split: a pool per subset, post-trained, against standard SAEs of the subsets and the
    same SAEs continued for the post-training length (and, for the known negative, a second
    member of each subset continued)."""
    n_pools, S = len(subsets), len(x.sae_dirs)
    pools = []
    for members in subsets:
        st = within_pool_stability(x.maxcos, members, x.theta)
        pools.append(assemble_pool([load_sae(x.sae_dirs[i], device="cpu") for i in members], st,
                                   x.mass[members], x.theta, seeds=[x.labels[i] for i in members],
                                   device=x.device))
    post = post_train([p.sae for p in pools], x.train_cache, x.cfg, x.data_seed, x.device).saes
    first = [load_sae(x.sae_dirs[members[0]], device="cpu") for members in subsets]
    continued = post_train(first, x.train_cache, x.cfg, x.data_seed, x.device).saes
    second = [load_sae(x.sae_dirs[members[1]], device="cpu") for members in subsets
              if len(members) > 1]
    continued2 = (post_train(second, x.train_cache, x.cfg, x.data_seed, x.device).saes
                  if len(second) == n_pools else None)

    # explained variance etc. on the eval split
    ev_rows: list[dict[str, Any]] = []
    results: dict[tuple[str, int], dict[str, Any]] = {}

    def _eval(kind: str, pool: int, seed: int | None, sae: SAE) -> None:
        r = evaluate_sae(sae, x.eval_cache, batch_size=x.eval_batch_size, device=x.device)
        results[(kind, pool)] = r
        ev_rows.append({"kind": kind, "pool": pool, "seed": seed, "ev": r["ev"], "l0": r["l0"],
                        "dead_fraction": r["dead_fraction"], "mse": r["mse"]})
    for p, members in enumerate(subsets):
        for i in members:
            e = read_evaluation(x.sae_dirs[i])
            ev_rows.append({"kind": "standard", "pool": p, "seed": x.labels[i], "ev": e["ev"],
                            "l0": e["l0"], "dead_fraction": e["dead_fraction"],
                            "mse": e.get("mse", float("nan"))})
        _eval("standard_continued", p, x.labels[members[0]], continued[p])
        if continued2 is not None:
            _eval("standard_continued_2", p, x.labels[members[1]], continued2[p])
        _eval("pool_before", p, None, pools[p].sae)
        _eval("pool_after", p, None, post[p])
    evals = pd.DataFrame(ev_rows)

    # cross-subset best-match cosines
    parts = []
    m = x.maxcos.shape[2]
    models = {"standard_continued": continued, "pool_before": [p.sae for p in pools],
              "pool_after": post}
    if continued2 is not None:
        models["standard_continued_2"] = continued2
    pairs = [(i, j) for i in range(n_pools) for j in range(n_pools) if i != j]
    for i, j in pairs:
        for a in subsets[i]:
            for b in subsets[j]:
                parts.append(pd.DataFrame({"kind": "standard", "a": x.labels[a],
                                           "b": x.labels[b], "pool_a": i, "pool_b": j,
                                           "feature": np.arange(m, dtype=np.int32),
                                           "max_cos": x.maxcos[a, b].astype(np.float32)}))
        for kind, saes in models.items():
            v = cross_max_cosine(saes[i], saes[j], device=x.device)
            parts.append(pd.DataFrame({"kind": kind, "a": i, "b": j, "pool_a": i, "pool_b": j,
                                       "feature": np.arange(len(v), dtype=np.int32),
                                       "max_cos": v.astype(np.float32)}))
    cross = pd.concat(parts, ignore_index=True)
    mutual = (cross.assign(hit=cross["max_cos"] >= np.float32(x.theta))
              .groupby(["kind", "a", "b"], sort=False)["hit"].mean().reset_index())

    kinds = [k for k in (*KINDS, "standard_continued_2") if (evals["kind"] == k).any()]
    summary: dict[str, Any] = {
        "theta": float(x.theta), "n_pools": n_pools, "n_seeds": S,
        "subsets": [[x.labels[i] for i in s] for s in subsets],
        "d_sae": m,
        "pools": [{"seeds": [x.labels[i] for i in s], "n_candidates": pools[p].n_candidates,
                   "n_unique": pools[p].n_unique, "n_filled": pools[p].n_filled,
                   "mean_within_pool_stability": float(pools[p].members["stability"].mean()),
                   **{f"{k}_{w}": float(results[(kind, p)][k])
                      for w, kind in (("before", "pool_before"), ("after", "pool_after"))
                      for k in ("ev", "l0", "dead_fraction")}}
                  for p, s in enumerate(subsets)],
        "ev": {k: mean_interval(evals.loc[evals["kind"] == k, "ev"]) for k in kinds},
        "l0": {k: mean_interval(evals.loc[evals["kind"] == k, "l0"]) for k in kinds},
        "mutual_stability": {k: mean_interval(mutual.loc[mutual["kind"] == k, "hit"])
                             for k in kinds},
    }
    ms, ev = summary["mutual_stability"], summary["ev"]
    summary["delta"] = {
        "mutual_stability_pool_after_minus_standard": ms["pool_after"]["mean"]
        - ms["standard"]["mean"],
        "mutual_stability_pool_after_minus_continued": ms["pool_after"]["mean"]
        - ms["standard_continued"]["mean"],
        "ev_pool_after_minus_standard": ev["pool_after"]["mean"] - ev["standard"]["mean"],
        "ev_pool_before_minus_standard": ev["pool_before"]["mean"] - ev["standard"]["mean"],
    }
    summary["split"] = {
        "subsets": summary["subsets"],
        **{f"{what}_{k}": d[k]["mean"] for what, d in (("mutual_stability", ms), ("ev", ev))
           for k in kinds}}
    log.info("mutual stability: standard %.3f, continued %.3f, pool before %.3f, after %.3f; "
             "EV: standard %.4f, continued %.4f, pool after %.4f", ms["standard"]["mean"],
             ms["standard_continued"]["mean"], ms["pool_before"]["mean"],
             ms["pool_after"]["mean"], ev["standard"]["mean"],
             ev["standard_continued"]["mean"], ev["pool_after"]["mean"])
    return PoolStudy(subsets=[[x.labels[i] for i in s] for s in subsets], pools=pools, post=post,
                     continued=continued, evals=evals, cross=cross, summary=summary,
                     eval_results=results)


def c7_block(splits: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What the C7 verdict reads: per split, the mutual stability of the post-trained pools minus
    that of the standard SAEs given the same extra training, and the EV difference, with
    Student-t intervals over the splits (splits share seeds, so these intervals treat them as
    replicates and are on the narrow side). The known negative (``null``) puts a second
    continued standard SAE in the pool's place: nothing was pooled, so it must not pass."""
    def diffs(a: str, b: str) -> tuple[np.ndarray, np.ndarray]:
        return (np.array([s[f"mutual_stability_{a}"] - s[f"mutual_stability_{b}"]
                          for s in splits]),
                np.array([s[f"ev_{a}"] - s[f"ev_{b}"] for s in splits]))

    stab, ev = diffs("pool_after", "standard_continued")
    out: dict[str, Any] = {
        "n_splits": len(splits),
        "stability_difference": resampling.mean_of(stab),
        "ev_difference": resampling.mean_of(ev),
        "baseline": {"mutual_stability": float(np.mean(
            [s["mutual_stability_standard_continued"] for s in splits])),
            "ev": float(np.mean([s["ev_standard_continued"] for s in splits]))},
    }
    if all("mutual_stability_standard_continued_2" in s for s in splits):
        stab0, ev0 = diffs("standard_continued_2", "standard_continued")
        out["null"] = {"n_splits": len(splits),
                       "stability_difference": resampling.mean_of(stab0),
                       "ev_difference": resampling.mean_of(ev0)}
    return out


def split_intervals(splits: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per statistic (``mutual_stability``, ``ev``) and kind (:data:`KINDS`): the mean of the
    per-split values with a Student-t interval over the splits (``summary["splits"]``; splits
    share seeds, so the interval is on the narrow side, as in :func:`c7_block`)."""
    return {what: {k: resampling.mean_of(np.array([s[f"{what}_{k}"] for s in splits]))
                   for k in KINDS if all(f"{what}_{k}" in s for s in splits)}
            for what in ("mutual_stability", "ev")}


def pool_table(summary: dict[str, Any]) -> pd.DataFrame:
    """One row per kind: EV, L0 and mutual stability (mean, sd, n) from a pool summary."""
    rows = []
    for k in KINDS:
        rows.append({"kind": k, "ev_mean": summary["ev"][k]["mean"],
                     "ev_std": summary["ev"][k]["std"], "n_saes": summary["ev"][k]["n"],
                     "l0_mean": summary["l0"][k]["mean"],
                     "mutual_stability_mean": summary["mutual_stability"][k]["mean"],
                     "mutual_stability_std": summary["mutual_stability"][k]["std"],
                     "n_pairs": summary["mutual_stability"][k]["n"]})
    return pd.DataFrame(rows)


def write_pools(study: PoolStudy, out_dir: str | Path, saes_dir: str | Path) -> None:
    """Write a :class:`PoolStudy`: SAEs (with eval files and members) under ``saes_dir``;
    ``summary.json``, ``pool_table.csv``, ``cross_maxcos.parquet``, ``evals.csv`` in
    ``out_dir``. Every file is written atomically; ``saes_dir`` is built whole, then renamed."""

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with io.atomic_path(saes_dir) as tmp:
        tmp.mkdir()
        for p in range(len(study.pools)):
            root = tmp / f"pool{p}"
            for kind, sae, sub in (("pool_before", study.pools[p].sae, "before"),
                                   ("pool_after", study.post[p], "after")):
                sae.save(root / sub)
                write_evaluation(study.eval_results[(kind, p)], root / sub)
            write_table(study.pools[p].members, root / "members.parquet")
            ctrl = tmp / f"continued{p}"
            study.continued[p].save(ctrl)
            write_evaluation(study.eval_results[("standard_continued", p)], ctrl)
    write_table(study.cross, out / "cross_maxcos.parquet")
    for name, df in (("evals", study.evals), ("pool_table", pool_table(study.summary))):
        with io.atomic_path(out / f"{name}.csv") as tmp_csv:
            df.to_csv(tmp_csv, index=False)
    io.write_json(out / "summary.json", study.summary)
