"""Functional impact of feature sets (claim C3): zero a set's activations before decoding.

For an SAE and a set ``S`` of its features, the masked reconstruction is
``x_hat_S = x_hat - sum_{j in S} f_j(x) W_dec[j]`` (the SAE's own encoding, with ``f_j`` set to zero
for ``j in S``; a TopK SAE does not re-select its top k). Two measurements:

* **Delta EV** on a cache: ``EV(x_hat) - EV(x_hat_S)`` with EV as in :mod:`saestab.evaluation`
  (all sets accumulated in one pass over the data).
* **Delta CE and KL** in the model: the hook's activations are replaced by the masked
  reconstruction (``keep_error=False``) or by ``x - sum_{j in S} f_j W_dec[j]``, i.e. the masked
  reconstruction plus the SAE's error term (``keep_error=True``, so only the features' own effect
  is measured); the next-token cross-entropy and ``KL(clean || patched)`` are compared with the
  clean run. Positions left alone: the first of each context (BOS) and any position whose
  activation norm exceeds ``outlier_threshold`` (the cache's own outlier rule; the SAE never saw
  those rows). Losses are averaged over predictions from position 1 on.

Feature sets (:func:`masking_sets`) are chosen on train-split statistics of the census table
(``train_mass`` = ``sum_t f_j(x_t) ||d_j||``, ``train_energy`` = ``sum_t f_j(x_t)^2 ||d_j||^2``)
and measured on the eval split. Dead features (label ``dead``: never active on the train split)
enter no set. The sets: all stable, all unstable; a **mass-matched** pair (unstable features drawn
at random until their total train mass equals the stable set's, so that the comparison is not
simply "more mass removed"; if the unstable features together carry less mass than the stable
ones, stable features are drawn down to the unstable total instead); an **energy-matched** pair
the same way on train energy (equal L1 mass favours sets of fewer, larger activations, while the
EV lost grows with the square of what is removed); **null pairs of equal effect** (a random set
of live features, and a disjoint random set mass-matched, or energy-matched, to it, whose ratios
must come out near 1: the known negative of claim C3); and random live sets with the counts of
the mass-matched pair.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from . import io, resampling
from .activations import ActivationCache, hook_layer
from .logs import get_logger, progress
from .sae import SAE, load_sae
from .stability import mean_interval

log = get_logger("masking")

SET_ORDER = ("stable", "unstable", "stable_matched", "unstable_matched", "stable_energy_matched",
             "unstable_energy_matched", "null_stable", "null_matched", "null_energy_matched",
             "random_n_stable", "random_n_unstable")
PAIRS: dict[str, tuple[str, str]] = {
    "mass": ("stable_matched", "unstable_matched"),
    "energy": ("stable_energy_matched", "unstable_energy_matched"),
    "null_mass": ("null_stable", "null_matched"),
    "null_energy": ("null_stable", "null_energy_matched"),
}
"""The C3 comparisons: (set playing "stable", set matched to it) per matching."""
RECONSTRUCTION_ONLY = ("none", "stable", "unstable")
"""Sets also measured with the reconstruction alone spliced in (no error term): every other
set is measured with the error term kept only, the measure the C3 comparison uses; each
condition costs a pass of the model's later layers."""
TRAIN_COLUMNS = ("label", "train_mass", "train_energy")
"""Census columns the sets are chosen from."""


# ------------------------------------------------------------------------------------------
# feature sets
# ------------------------------------------------------------------------------------------
def matched_subset(candidates: np.ndarray, weight: np.ndarray, target: float,
                   rng: np.random.Generator) -> np.ndarray:
    """Features drawn from ``candidates`` at random until their total ``weight`` (train mass or
    energy) matches ``target``.

    First fit in a random order: a feature is taken when it does not carry the total past
    ``target``; the one remaining feature that brings the total closest to ``target`` is then
    added if that helps. The draw stays random, and the total lands within a small fraction of
    the target whenever the candidates are many (a single feature heavier than the gap left is
    the only source of error).
    """
    candidates = np.asarray(candidates, dtype=np.int64)
    if candidates.size == 0 or target <= 0:
        return candidates[:0]
    order = rng.permutation(candidates)
    w = weight[order]
    take = np.zeros(order.size, dtype=bool)
    total = 0.0
    for i, wi in enumerate(w):
        if total + wi <= target:
            take[i] = True
            total += wi
    rest = np.nonzero(~take)[0]
    if rest.size:
        best = rest[np.argmin(np.abs(total + w[rest] - target))]
        if abs(total + w[best] - target) < abs(total - target):
            take[best] = True
    return np.sort(order[take])


def matched_pair(first: np.ndarray, second: np.ndarray, weight: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    """The pair (first side, second side) with equal total ``weight``: the heavier side is drawn
    down to the lighter side's total (:func:`matched_subset`); returns which side was drawn."""
    w_first, w_second = float(weight[first].sum()), float(weight[second].sum())
    if w_second >= w_first:
        return first, matched_subset(second, weight, w_first, rng), "second"
    return matched_subset(first, weight, w_second, rng), second, "first"


def _pair_info(name: str, a: np.ndarray, b: np.ndarray, weight: np.ndarray) -> dict[str, float]:
    wa, wb = float(weight[a].sum()), float(weight[b].sum())
    return {f"{name}_first": wa, f"{name}_second": wb,
            f"{name}_match_error": abs(wb - wa) / wa if wa > 0 else float("nan"),
            f"{name}_count_ratio": b.size / a.size if a.size else float("nan")}


@dataclass
class FeatureSets:
    """Named feature sets of one anchor SAE and how they were drawn."""

    sets: dict[str, np.ndarray]
    info: dict[str, Any] = field(default_factory=dict)


def masking_sets(labels: Sequence[str] | np.ndarray, mass: np.ndarray, energy: np.ndarray,
                 rng: np.random.Generator) -> FeatureSets:
    """The masking sets (see module docstring) from per-feature labels and train-split mass and
    energy. Features labelled ``dead`` enter no set.

    The null pairs share their first set: as many features as the stable set (at most a third of
    the live features, and a third when there are no stable features), drawn at random from the
    live features; the second set is drawn from the remaining live features, mass-matched
    (``null_matched``) or energy-matched (``null_energy_matched``) to the first.
    """
    labels = np.asarray(labels).astype(str)
    mass = np.asarray(mass, dtype=np.float64)
    energy = np.asarray(energy, dtype=np.float64)
    if not labels.shape == mass.shape == energy.shape:
        raise ValueError(f"labels {labels.shape}, mass {mass.shape} and energy {energy.shape} "
                         "differ in shape")
    live = np.nonzero(labels != "dead")[0]
    stable = np.nonzero(labels == "stable")[0]
    unstable = np.nonzero(labels == "unstable")[0]
    stable_m, unstable_m, side_m = matched_pair(stable, unstable, mass, rng)
    stable_e, unstable_e, side_e = matched_pair(stable, unstable, energy, rng)
    n_null = min(stable.size, live.size // 3) if stable.size else live.size // 3
    null_a = np.sort(rng.choice(live, size=n_null, replace=False))
    rest = np.setdiff1d(live, null_a)
    null_b = matched_subset(rest, mass, float(mass[null_a].sum()), rng)
    null_c = matched_subset(rest, energy, float(energy[null_a].sum()), rng)
    sets = {
        "stable": stable,
        "unstable": unstable,
        "stable_matched": stable_m,
        "unstable_matched": unstable_m,
        "stable_energy_matched": stable_e,
        "unstable_energy_matched": unstable_e,
        "null_stable": null_a,
        "null_matched": null_b,
        "null_energy_matched": null_c,
        "random_n_stable": np.sort(rng.choice(live, size=stable_m.size, replace=False)),
        "random_n_unstable": np.sort(rng.choice(live, size=unstable_m.size, replace=False)),
    }
    side = {"first": "stable", "second": "unstable"}
    mass_info = _pair_info("mass", stable_m, unstable_m, mass)
    info = {
        "n_features": int(labels.size),
        "n_live": int(live.size),
        "n_dead": int(labels.size - live.size),
        "mass_total": float(mass.sum()),
        "mass_stable": float(mass[stable].sum()),
        "mass_unstable": float(mass[unstable].sum()),
        "matched_side": side[side_m],
        "mass_stable_matched": mass_info["mass_first"],
        "mass_unstable_matched": mass_info["mass_second"],
        "mass_match_error": mass_info["mass_match_error"],
        # how many times more unstable than stable features carry the same activation mass
        "count_ratio": mass_info["mass_count_ratio"],
        "energy_matched_side": side[side_e],
        **{k.replace("_first", "_stable_matched").replace("_second", "_unstable_matched"): v
           for k, v in _pair_info("energy", stable_e, unstable_e, energy).items()},
        **{k.replace("_first", "_a").replace("_second", "_b"): v
           for k, v in _pair_info("null_mass", null_a, null_b, mass).items()},
        **{k.replace("_first", "_a").replace("_second", "_c"): v
           for k, v in _pair_info("null_energy", null_a, null_c, energy).items()},
    }
    return FeatureSets(sets=sets, info=info)


def _index(sets: Mapping[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(np.asarray(v, dtype=np.int64), device=device)
            for k, v in sets.items()}


def _masked(f: torch.Tensor, x_hat: torch.Tensor, w_dec: torch.Tensor,
            idx: torch.Tensor) -> torch.Tensor:
    """``x_hat`` minus the contribution of the features ``idx`` (zeroed before decoding)."""
    if idx.numel() == 0:
        return x_hat
    return x_hat - f.index_select(-1, idx) @ w_dec.index_select(0, idx)


# ------------------------------------------------------------------------------------------
# explained variance
# ------------------------------------------------------------------------------------------
@torch.no_grad()
def masked_ev(sae: SAE, cache: ActivationCache, sets: Mapping[str, np.ndarray], *,
              batch_size: int = 4096, device: str | torch.device = "cpu",
              max_tokens: int | None = None) -> dict[str, float]:
    """EV of the reconstruction with each set masked, plus ``none`` (nothing masked) and ``all``
    (every feature masked: the reconstruction is ``b_dec``). One pass over the cache."""
    device = torch.device(device)
    sae = sae.to(device).eval()
    n = cache.n_tokens if max_tokens is None else min(max_tokens, cache.n_tokens)
    if n <= 0:
        raise io.InputError(f"{cache.path}: no tokens to evaluate")
    idx = _index(sets, device)
    names = ["none", *idx, "all"]
    sse = {k: torch.zeros((), dtype=torch.float64, device=device) for k in names}
    s1 = torch.zeros(cache.d, dtype=torch.float64, device=device)
    s2 = torch.zeros((), dtype=torch.float64, device=device)
    w_dec = sae.W_dec.float()
    b_dec = sae.b_dec.float()
    starts = range(0, n, batch_size)
    for start in progress(starts, total=len(starts), desc="masked EV", unit="batch"):
        x = torch.from_numpy(cache.load(start, min(start + batch_size, n))).to(device)
        f = sae.encode(x).float()
        x_hat = f @ w_dec + b_dec
        x64 = x.double()
        s1 += x64.sum(0)
        s2 += x64.pow(2).sum()
        sse["none"] += (x - x_hat).double().pow(2).sum()
        sse["all"] += (x - b_dec).double().pow(2).sum()
        for k, i in idx.items():
            sse[k] += (x - _masked(f, x_hat, w_dec, i)).double().pow(2).sum()
    centered = float(s2 - s1.pow(2).sum() / n)
    return {k: 1.0 - float(v) / centered for k, v in sse.items()}


# ------------------------------------------------------------------------------------------
# spliced next-token loss
# ------------------------------------------------------------------------------------------
RunClean = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""tokens (B, T) -> (logits (B, T, V), activations at the hook (B, T, d)), clean run."""
RunPatched = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(tokens, replacement activations at the hook) -> logits of the patched run."""


def _prefix_layer(bridge: Any, hook: str) -> int | None:
    """The block whose output ``hook`` is, when the run can resume after it (a residual-stream
    hook ``blocks.k.hook_resid_post`` with a block after it), else None."""
    layer = hook_layer(hook)
    if layer is None or hook != f"blocks.{layer}.hook_resid_post":
        return None
    return layer if layer + 1 < len(bridge.blocks) else None


@contextmanager
def _replayed(blocks: Sequence[Any], outputs: Sequence[Any]) -> Iterator[None]:
    """Blocks that return their recorded outputs instead of computing them again."""
    # set on the instance itself: a bridge component forwards other attribute writes to the
    # module it wraps
    for block, out in zip(blocks, outputs, strict=True):
        object.__setattr__(block, "forward", lambda *args, _out=out, **kwargs: _out)  # noqa: ARG005
    try:
        yield
    finally:
        for block in blocks:
            object.__delattr__(block, "forward")  # back to the class's forward


def _resume(bridge: Any, layer: int, acts: torch.Tensor, outputs: Sequence[Any]) -> torch.Tensor:
    """Logits of the run that resumes at block ``layer + 1`` from ``acts``, blocks 0..layer
    replaying ``outputs``."""
    dtype = next(bridge.parameters()).dtype
    with _replayed(bridge.blocks[: layer + 1], outputs):
        return bridge(acts.to(dtype=dtype), start_at_layer=layer + 1)


def bridge_runners(bridge: Any, hook: str, reuse_prefix: bool = True) -> tuple[RunClean,
                                                                               RunPatched]:
    """Clean and patched runs of a transformer-lens ``TransformerBridge`` at ``hook``.

    With ``reuse_prefix`` and a residual-stream hook ``blocks.k.hook_resid_post``, the clean run
    records the outputs of blocks 0..k, and a patched run of the same token batch resumes the
    model at block k + 1 from the replacement activations (``start_at_layer``), with blocks
    0..k replaying their recorded outputs instead of recomputing them: only the layers after the
    hook, which alone see the change, run once per masking condition. Other hooks, and a
    patched run of a batch other than the last clean one, run the whole model with a hook that
    replaces the activations.
    """
    layer = _prefix_layer(bridge, hook) if reuse_prefix else None
    last: dict[str, Any] = {}

    def clean(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if layer is None:
            logits, cache = bridge.run_with_cache(tokens, names_filter=[hook])
            return logits, cache[hook]
        outputs: list[Any] = [None] * (layer + 1)

        def record(i: int) -> Callable[..., None]:
            def keep(module: Any, args: Any, out: Any) -> None:  # noqa: ARG001
                outputs[i] = out
            return keep

        handles = [bridge.blocks[i].register_forward_hook(record(i)) for i in range(layer + 1)]
        try:
            logits, cache = bridge.run_with_cache(tokens, names_filter=[hook])
        finally:
            for h in handles:
                h.remove()
        last.update(tokens=tokens, outputs=outputs)
        return logits, cache[hook]

    def full(tokens: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
        def replace(x: torch.Tensor, hook: Any) -> torch.Tensor:  # noqa: ARG001
            return acts.to(dtype=x.dtype)

        return bridge.run_with_hooks(tokens, fwd_hooks=[(hook, replace)])

    def patched(tokens: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
        nonlocal layer
        if layer is None or last.get("tokens") is not tokens:
            return full(tokens, acts)
        logits = _resume(bridge, layer, acts, last["outputs"])
        if not last.get("verified"):
            # once per run: the resumed pass must equal a full re-run on this architecture
            reference = full(tokens, acts)
            err = float((logits - reference).abs().max())
            scale = float(reference.abs().max())
            if not err <= 1e-4 * max(scale, 1.0):
                log.warning("prefix reuse at %s differs from a full re-run by %.3g (logit scale "
                            "%.3g); re-running the whole model per condition instead", hook,
                            err, scale)
                layer = None
                return reference
            last["verified"] = True
        return logits

    return clean, patched


@dataclass
class _CleanRun:
    """The clean run of one context batch, over its predictions from position 1 on (flattened to
    rows): logits, next-token probabilities, targets, summed CE."""

    logits: torch.Tensor  # (n, V) float32
    p: torch.Tensor       # (n, V) float32
    target: torch.Tensor  # (n, 1)
    ce: float

    @classmethod
    def of(cls, logits: torch.Tensor, tokens: torch.Tensor) -> _CleanRun:
        z = logits[:, 1:-1].float().reshape(-1, logits.shape[-1])
        logp = torch.log_softmax(z, dim=-1)
        target = tokens[:, 2:].to(logits.device).reshape(-1, 1)
        ce = float(-logp.gather(-1, target).double().sum())
        p = logp.exp_()
        return cls(logits=z, p=p, target=target, ce=ce)


LOSS_ROWS = 8
"""Predictions per piece of the loss terms on a CPU: a few (rows, vocabulary) float32 blocks stay
in the cache, where whole-context passes were memory-bound (1.5x slower at a 49k vocabulary).
Other devices take one context per piece."""


def _loss_terms(logits: torch.Tensor, clean: _CleanRun) -> tuple[float, float]:
    """Summed next-token CE and KL(clean || this) over predictions from position 1 on.

    With ``d = z - z_clean`` (logits; ``log p - log p_clean`` up to a constant per prediction)
    and ``L = log sum_v p_clean e^d``: ``KL = sum_t (L - sum_v p_clean d)`` and
    ``CE = CE_clean + sum_t (L - d_target)``. Each term is small, so float32 per prediction
    (float64 sums; ``p_clean`` renormalised by its float32 sum, taken the same way as the sum
    weighted by ``e^d``, so that an unchanged run gives exactly 0) stays within ~1e-8 nats per
    prediction of a float64 log-softmax (2.5e-9 on a 49k vocabulary), at a third of its cost.
    """
    n_pos = logits.shape[1] - 2
    step = LOSS_ROWS if logits.device.type == "cpu" else n_pos
    pieces = [(b, j) for b in range(logits.shape[0]) for j in range(0, n_pos, step)]
    ce = torch.zeros((), dtype=torch.float64, device=logits.device)
    kl = torch.zeros((), dtype=torch.float64, device=logits.device)
    for b, j in pieces:  # (context, position) blocks: no copy of the whole logits tensor
        z = logits[b, 1 + j:1 + min(j + step, n_pos)]
        rows = slice(b * n_pos + j, b * n_pos + j + z.shape[0])
        p = clean.p[rows]
        p_sum = p.sum(-1).double()
        d = z.float() - clean.logits[rows]
        p_d = (p * d).sum(-1).double() / p_sum
        d_target = d.gather(-1, clean.target[rows]).squeeze(-1).double()
        top = d.amax(dim=-1, keepdim=True)  # e^(d - top) cannot overflow
        big_l = (torch.log((p * d.sub_(top).exp_()).sum(-1).double() / p_sum)
                 + top.squeeze(-1).double())
        ce += (big_l - d_target).sum()
        kl += (big_l - p_d).sum()
    return clean.ce + float(ce), float(kl)  # one device sync per condition


@torch.no_grad()
def spliced_loss(run_clean: RunClean, run_patched: RunPatched, sae: SAE, contexts: np.ndarray,
                 sets: Mapping[str, np.ndarray], **kwargs: Any) -> pd.DataFrame:
    """:func:`spliced_losses` of one SAE."""
    return spliced_losses(run_clean, run_patched, [(sae, sets)], contexts, **kwargs)[0]


@torch.no_grad()
def spliced_losses(run_clean: RunClean, run_patched: RunPatched,
                   saes: Sequence[tuple[SAE, Mapping[str, np.ndarray]]], contexts: np.ndarray, *,
                   outlier_threshold: float | None = None,
                   error_modes: Sequence[bool] = (True, False), batch_size: int = 4,
                   device: str | torch.device = "cpu",
                   reconstruction_only: Sequence[str] | None = None) -> list[pd.DataFrame]:
    """Next-token CE and KL to the clean run with each set masked and spliced in at the hook,
    for each ``(sae, sets)`` of ``saes`` (all of them held on ``device``).

    The clean run of a context batch is shared by every SAE (it runs once per batch, not once per
    SAE), and each condition costs one pass of the layers after the hook. ``reconstruction_only``
    limits the measurement without the error term (``keep_error=False``) to the named sets
    (``none`` included by name; default: every set). Returns per SAE one row per measured (set,
    keep_error), sets including ``none`` (nothing masked; with the error term kept, the splice
    machinery's own check: zero change), with the clean CE beside it: ``set, keep_error,
    n_features, ce, ce_clean, delta_ce, kl, n_predictions, n_patched``.
    """
    device = torch.device(device)
    contexts = np.asarray(contexts, dtype=np.int64)
    if contexts.ndim != 2 or contexts.shape[1] < 3:
        raise ValueError(f"contexts must be (n, T>=3) token ids, got shape {contexts.shape}")
    per_sae = []
    for sae, sets in saes:
        sae = sae.to(device).eval()
        idx = _index({"none": np.zeros(0, dtype=np.int64), **sets}, device)
        conds = [(k, e) for k in idx for e in error_modes
                 if e or reconstruction_only is None or k in reconstruction_only]
        per_sae.append({"sae": sae, "idx": idx, "conds": conds,
                        "w_dec": sae.W_dec.float(), "b_dec": sae.b_dec.float(),
                        "ce": dict.fromkeys(conds, 0.0), "kl": dict.fromkeys(conds, 0.0)})
    ce_clean, n_pred, n_patched = 0.0, 0, 0
    # progress in (batch, SAE) units: a batch of many anchors can take minutes on a CPU
    units = [(start, one) for start in range(0, len(contexts), batch_size) for one in per_sae]
    for start, one in progress(units, total=len(units), desc="spliced loss", unit="SAE-batch"):
        if one is per_sae[0]:  # a new context batch: its clean run
            tokens = torch.from_numpy(contexts[start:start + batch_size]).to(device)
            logits, acts = run_clean(tokens)
            x = acts.float()
            clean = _CleanRun.of(logits, tokens)
            ce_clean += clean.ce
            n_pred += int(tokens.shape[0] * (tokens.shape[1] - 2))
            patch = torch.ones(x.shape[:2], dtype=torch.bool, device=device)
            patch[:, 0] = False
            if outlier_threshold is not None:
                patch &= x.norm(dim=-1) <= outlier_threshold
            n_patched += int(patch.sum())
        f = one["sae"].encode(x).float()
        x_hat = f @ one["w_dec"] + one["b_dec"]
        done: dict[tuple[bytes, bool], tuple[float, float]] = {}  # identical sets run once
        for k, i in one["idx"].items():
            removed = x_hat - _masked(f, x_hat, one["w_dec"], i)
            for keep_error in error_modes:
                if (k, keep_error) not in one["ce"]:
                    continue
                key = (i.cpu().numpy().tobytes(), keep_error)
                if key not in done:
                    new = (x - removed) if keep_error else (x_hat - removed)
                    new = torch.where(patch.unsqueeze(-1), new, x)
                    done[key] = _loss_terms(run_patched(tokens, new), clean)
                one["ce"][(k, keep_error)] += done[key][0]
                one["kl"][(k, keep_error)] += done[key][1]
    tables = []
    for one in per_sae:
        ce, kl, idx = one["ce"], one["kl"], one["idx"]
        tables.append(pd.DataFrame([
            {"set": k, "keep_error": e, "n_features": int(idx[k].numel()),
             "ce": ce[(k, e)] / n_pred, "ce_clean": ce_clean / n_pred,
             "delta_ce": (ce[(k, e)] - ce_clean) / n_pred, "kl": kl[(k, e)] / n_pred,
             "n_predictions": n_pred, "n_patched": n_patched} for k, e in one["conds"]]))
    return tables


# ------------------------------------------------------------------------------------------
# one configuration
# ------------------------------------------------------------------------------------------
def check_census_columns(features: pd.DataFrame, source: str = "the census table") -> None:
    """Raise :class:`~saestab.io.InputError` when the census lacks the train-split columns the
    sets are chosen from (a census written before they existed)."""
    missing = [c for c in ("seed", "feature", *TRAIN_COLUMNS) if c not in features.columns]
    if missing:
        raise io.InputError(
            f"{source}: expected the census columns {', '.join(missing)} (masking sets are chosen "
            "on train-split activation mass and energy, with dead features labelled 'dead'); "
            "this table predates them: rerun the stability census (rule stability_census)")


def run_masking(seed_dirs: Mapping[int, Any], features: pd.DataFrame, cache: ActivationCache, *,
                anchors: Sequence[int], runners: tuple[RunClean, RunPatched] | None = None,
                ce_contexts: np.ndarray | None = None, outlier_threshold: float | None = None,
                seed: int = 0, batch_size: int = 4096, ce_batch_size: int = 4,
                device: str | torch.device = "cpu", load: Callable[[Any], SAE] | None = None,
                source: str = "the census table") -> tuple[pd.DataFrame, dict[str, Any]]:
    """Masking on every anchor SAE of one configuration.

    ``seed_dirs`` maps a seed to its saved SAE; ``features`` is the census table (``seed,
    feature, label, train_mass, train_energy``; ``source`` names it in errors); ``anchors`` are
    the seeds used as anchors, each one SAE and so one independent unit. ``cache`` is the eval
    split. With ``runners`` and ``ce_contexts`` the spliced CE/KL is measured too, every anchor
    on each context batch after one clean run of it (so all anchor SAEs are held on ``device``
    meanwhile). Returns a table with one row per (seed, set) and the summary of
    :func:`summarize`.
    """
    check_census_columns(features, source)
    load = load or (lambda p: load_sae(p, device=device))
    rng = np.random.default_rng(seed)
    anchors = list(anchors)
    per_anchor = []
    for s in anchors:
        if s not in seed_dirs:
            raise io.InputError(f"anchor seed {s} has no saved SAE (have {sorted(seed_dirs)})")
        feats = features[features["seed"] == s].sort_values("feature")
        if feats.empty:
            raise io.InputError(f"{source} has no rows for anchor seed {s}")
        sae = load(seed_dirs[s])
        if len(feats) != sae.cfg.d_sae:
            raise io.InputError(f"{source}: {len(feats)} rows for seed {s}, the SAE has "
                                f"{sae.cfg.d_sae} features")
        mass = feats["train_mass"].to_numpy(np.float64)
        energy = feats["train_energy"].to_numpy(np.float64)
        fs = masking_sets(feats["label"].astype(str).to_numpy(), mass, energy, rng)
        log.info("seed %d: %d stable, %d unstable, %d dead; mass-matched %d vs %d features "
                 "(ratio %.2f, error %.3f); energy-matched %d vs %d (error %.3f)", s,
                 fs.sets["stable"].size, fs.sets["unstable"].size, fs.info["n_dead"],
                 fs.sets["stable_matched"].size, fs.sets["unstable_matched"].size,
                 fs.info["count_ratio"], fs.info["mass_match_error"],
                 fs.sets["stable_energy_matched"].size, fs.sets["unstable_energy_matched"].size,
                 fs.info["energy_match_error"])
        ev = masked_ev(sae, cache, fs.sets, batch_size=batch_size, device=device)
        per_anchor.append((sae, fs, mass, energy, ev))
    ces: list[pd.DataFrame | None] = [None] * len(anchors)
    if runners is not None and ce_contexts is not None and len(ce_contexts):
        # every anchor on each context batch: the clean run once per batch
        ces = list(spliced_losses(*runners, [(a[0], a[1].sets) for a in per_anchor],
                                  ce_contexts, outlier_threshold=outlier_threshold,
                                  batch_size=ce_batch_size, device=device,
                                  reconstruction_only=RECONSTRUCTION_ONLY))
    rows, infos = [], []
    for s, (sae, fs, mass, energy, ev), ce in zip(anchors, per_anchor, ces, strict=True):
        infos.append({"seed": s, **fs.info})
        for name in ("none", *fs.sets, "all"):
            ids = fs.sets.get(name)
            n = sae.cfg.d_sae if name == "all" else (0 if ids is None else ids.size)
            row = {"seed": s, "set": name, "n_features": int(n),
                   "mass": float(mass.sum() if name == "all" else
                                 (0.0 if ids is None else mass[ids].sum())),
                   "energy": float(energy.sum() if name == "all" else
                                   (0.0 if ids is None else energy[ids].sum())),
                   "ev": ev[name], "delta_ev": ev["none"] - ev[name]}
            if ce is not None and name != "all":
                for keep_error, tag in ((True, "err"), (False, "noerr")):
                    r = ce[(ce["set"] == name) & (ce["keep_error"] == keep_error)]
                    row[f"delta_ce_{tag}"] = float(r["delta_ce"].iloc[0]) if len(r) else np.nan
                    row[f"kl_{tag}"] = float(r["kl"].iloc[0]) if len(r) else np.nan
                row["ce_clean"] = float(ce["ce_clean"].iloc[0])
                row["n_predictions"] = int(ce["n_predictions"].iloc[0])
            rows.append(row)
    table = pd.DataFrame(rows)
    return table, summarize(table, pd.DataFrame(infos))


def _pair_block(table: pd.DataFrame, anchors: list[int], first: str,
                second: str) -> dict[str, Any]:
    """Per-anchor values of one pair and the ratio of their means, jackknifed over anchors."""
    out = {}
    for metric in ("delta_ev", "delta_ce_err"):
        if metric not in table:
            continue
        wide = table.pivot(index="seed", columns="set", values=metric).loc[anchors]
        a, b = wide[first].to_numpy(np.float64), wide[second].to_numpy(np.float64)
        out[metric] = {"stable": a.tolist(), "matched": b.tolist(),
                       "ratio": resampling.ratio_of_means(a, b)}
    return out


def c3_block(table: pd.DataFrame, infos: pd.DataFrame) -> dict[str, Any]:
    """Per-anchor values and seed-level intervals of the C3 comparisons.

    ``mass`` and ``energy`` (the stable set against the unstable set matched on train mass or
    energy) and ``null`` with the same two entries for the null pairs of equal effect, so that
    the null goes through the claim's rule unchanged. Each entry holds, per measure
    (``delta_ev``, and ``delta_ce_err`` when the spliced loss was measured), the per-anchor
    values of the set playing "stable" and of the set matched to it, in the order of
    ``anchors``, and the ratio of their means with its leave-one-anchor-out jackknife interval
    (:func:`saestab.resampling.ratio_of_means`).
    """
    anchors = sorted(int(s) for s in table["seed"].unique())
    sizes = table.pivot(index="seed", columns="set", values="n_features").loc[anchors]
    info = infos.set_index("seed").loc[anchors]

    def n(name: str) -> list[int]:
        return sizes[name].astype(int).tolist()

    return {
        "mass": _pair_block(table, anchors, *PAIRS["mass"]),
        "energy": _pair_block(table, anchors, *PAIRS["energy"]),
        "null": {"mass": _pair_block(table, anchors, *PAIRS["null_mass"]),
                 "energy": _pair_block(table, anchors, *PAIRS["null_energy"])},
        "anchors": anchors,
        "n_stable": n("stable"),
        "n_matched": {"mass": n("unstable_matched"), "energy": n("unstable_energy_matched")},
        "n_stable_matched": {"mass": n("stable_matched"), "energy": n("stable_energy_matched")},
        "n_null": {"first": n("null_stable"), "mass": n("null_matched"),
                   "energy": n("null_energy_matched")},
        "n_dead": info["n_dead"].astype(int).tolist(),
        "match_error": {"mass": info["mass_match_error"].tolist(),
                        "energy": info["energy_match_error"].tolist(),
                        "null_mass": info["null_mass_match_error"].tolist(),
                        "null_energy": info["null_energy_match_error"].tolist()},
    }


def summarize(table: pd.DataFrame, infos: pd.DataFrame) -> dict[str, Any]:
    """Means and t-intervals across anchors of every measure, per set; the C3 block
    (:func:`c3_block`) and the older stable-vs-mass-matched contrasts."""
    metrics = [c for c in ("delta_ev", "ev", "delta_ce_err", "kl_err", "delta_ce_noerr",
                           "kl_noerr", "n_features", "mass", "energy") if c in table]
    sets = {name: {m: mean_interval(g[m]) for m in metrics}
            for name, g in table.groupby("set", sort=False)}
    wide = {m: table.pivot(index="seed", columns="set", values=m) for m in metrics}
    contrasts: dict[str, Any] = {}
    for m in ("delta_ev", "delta_ce_err", "kl_err"):
        if m not in wide:
            continue
        a, b = wide[m]["stable_matched"], wide[m]["unstable_matched"]
        contrasts[m] = {"difference": resampling.mean_of((a - b).to_numpy()),
                        "ratio": resampling.ratio_of_means(a.to_numpy(), b.to_numpy())}
    return {
        "anchors": sorted(int(s) for s in table["seed"].unique()),
        "sets": sets,
        "matched": {
            "count_ratio": mean_interval(infos["count_ratio"]),
            "energy_count_ratio": mean_interval(infos["energy_count_ratio"]),
            "mass_match_error_max": float(infos["mass_match_error"].max()),
            "energy_match_error_max": float(infos["energy_match_error"].max()),
            "matched_side": sorted(set(infos["matched_side"])),
            "energy_matched_side": sorted(set(infos["energy_matched_side"])),
        },
        "stable_vs_unstable_matched": contrasts,
        "c3": c3_block(table, infos),
        "ce_clean": float(table["ce_clean"].iloc[0]) if "ce_clean" in table else None,
    }
