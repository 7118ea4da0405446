"""Train a group of SAEs that differ only in their initialisation seed, in one pass of the data.

:func:`train_group` runs five stages: prepare the data (:func:`prepare_data`), initialise or
resume the stacked model (:func:`build_model`, :func:`~.checkpoint.resume`), the loop
(:func:`_loop`, one :func:`train_step` per batch), snapshots and checkpoints on the way
(:func:`_after_step`), and the export of each seed as a saved SAE (:func:`_finish`). Each batch
is read once and fed to all S seeds (stacked along a leading dimension of every parameter);
each seed's initial weights come from its own generator seeded with its ``init_seed``; the data
order is shared (a permutation per epoch derived from ``(data_seed, epoch)``), so the group
isolates the effect of the initialisation. What is trained is the architecture's business
(:mod:`saestab.sae`); this module only drives it.
"""

from __future__ import annotations

import copy
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import io
from ..activations import ActivationCache
from ..config import validate_recipe
from ..logs import get_logger, progress
from ..sae import SAE, Architecture, SAEConfig, StepOut, fold_input_scale, sae_from_tensors
from .checkpoint import Trainable, fingerprint, resume, write_checkpoint
from .config import TrainConfig, input_scale, lr_factor
from .data import ShuffledStream

log = get_logger("training")


@dataclass
class RunOptions:
    """How a group is run and saved; none of this changes the trained models.

    ``out_dirs``: one directory per seed for the final SAE (None: not saved).
    ``checkpoint_dir``: checkpoints go to ``<checkpoint_dir>/checkpoint`` every
    ``checkpoint_every`` steps; one of the same run is resumed, bit-identically on a CPU; removed
    after success unless ``keep_checkpoint``. ``snapshots_at_epochs``: after these many epochs
    every SAE is also saved to ``snapshot_path(seed_index, epoch)`` (default
    ``<out_dir>/../snapshots/epoch<e>/<out_dir name>``). ``callback``: called with the number
    of completed steps after each step (after checkpointing).
    """

    out_dirs: Sequence[str | Path] | None = None
    device: str | torch.device = "cpu"
    checkpoint_dir: str | Path | None = None
    checkpoint_every: int = 500
    snapshots_at_epochs: Sequence[int] = (1, 2, 4, 8)
    snapshot_path: Callable[[int, int], str | Path] | None = None
    log_every: int = 100
    callback: Callable[[int], None] | None = None
    keep_checkpoint: bool = False


@dataclass
class TrainResult:
    """What :func:`train_group` returns."""

    saes: list[SAE]
    history: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    resumed_from: int = 0
    seconds: float = 0.0
    tokens_per_second_per_sae: float = 0.0
    snapshot_epochs: list[int] = field(default_factory=list)


@dataclass
class Data:
    """The training activations: a shuffled stream of scaled rows of the cache."""

    stream: ShuffledStream
    scale: float  # x = raw * scale
    cache: ActivationCache
    device: torch.device
    steps_per_epoch: int  # the last partial batch of an epoch is dropped
    total_steps: int


def geometric_median(x: torch.Tensor, max_iter: int = 200, tol: float = 1e-7) -> torch.Tensor:
    """Weiszfeld's algorithm in float64; returns a (d,) tensor of ``x``'s dtype."""
    x64 = x.double()
    y = x64.mean(0)
    for _ in range(max_iter):
        w = 1.0 / (x64 - y).norm(dim=1).clamp_min(1e-12)
        y_new = (w[:, None] * x64).sum(0) / w.sum()
        done = (y_new - y).norm() <= tol * max(float(y.norm()), 1e-12)
        y = y_new
        if done:
            break
    return y.to(x.dtype)


# -- stage 1: data -------------------------------------------------------------------------
def prepare_data(cache: ActivationCache, cfg: TrainConfig, data_seed: int,
                 device: torch.device) -> tuple[TrainConfig, Data]:
    """Resolve the recipe for this cache and open its shuffled stream of rows, scaled by
    :func:`~.config.input_scale` (by default to unit variance, so that one recipe suits every
    model and layer)."""
    if cache.n_tokens < cfg.batch_size:
        raise io.InputError(f"{cache.path}: {cache.n_tokens} rows, fewer than one batch "
                            f"({cfg.batch_size})")
    cfg = cfg.resolved(cache.d, cache.n_tokens, device)
    total = cfg.total_steps(cache.n_tokens)
    if total <= 0:
        raise ValueError(f"{cfg.n_tokens} training tokens make no full batch of {cfg.batch_size}")
    scale = input_scale(cfg.normalize, cache.stats)
    stream = ShuffledStream(cache, cfg.batch_size, data_seed, shuffle_block=cfg.shuffle_block,
                            shuffle_window=cfg.shuffle_window, scale=scale, device=device)
    data = Data(stream=stream, scale=scale, cache=cache, device=device, total_steps=total,
                steps_per_epoch=stream.steps_per_epoch)
    log.info("streaming %d x %d activations (scale %.4g, windows of %d rows); %d steps (%d per "
             "epoch), %s, decode %s", cache.n_tokens, cache.d, scale, cfg.shuffle_window, total,
             data.steps_per_epoch, cfg.architecture, cfg.decode)
    return cfg, data


# -- stage 2: the model and its optimiser --------------------------------------------------
def initial_b_dec(cfg: TrainConfig, sample: torch.Tensor) -> torch.Tensor:
    """The decoder bias every seed starts from: a statistic of the sample."""
    if cfg.b_dec_init == "zeros":
        return torch.zeros(sample.shape[1])
    if cfg.b_dec_init == "geometric_median":
        return geometric_median(sample)
    return sample.double().mean(0).float()


def build_model(cfg: TrainConfig, data: Data, init_seeds: Sequence[int],
                init: Sequence[Mapping[str, torch.Tensor]] | None) -> Architecture:
    """The stacked model of all seeds, from their seeds or from given SAE tensors.

    A seeded start reads ``b_dec_init_sample`` evenly spaced rows (order-free, so the same for
    every budget): ``b_dec`` is a statistic of them, and the architecture may set
    data-dependent initial values from them (:meth:`~saestab.sae.Architecture.init_from_data`).
    """
    model = cfg.arch(cfg, data.cache.d, len(init_seeds))
    if init is not None:
        for i, tensors in enumerate(init):
            model.load_tensors(i, tensors, data.scale)
    else:
        sample = data.stream.sample(cfg.b_dec_init_sample).cpu()
        b_dec = initial_b_dec(cfg, sample)
        for i, seed in enumerate(init_seeds):
            model.init_seed(i, seed, b_dec)
            model.init_from_data(i, sample)
    return model.to(data.device)


def make_optimizer(model: Architecture, cfg: TrainConfig, total: int) -> Trainable:
    """``torch.optim.Adam`` (element-wise, so stacked seeds stay independent) with the
    warm-up / constant / linear-decay schedule as a ``LambdaLR``.

    The fused kernel makes one pass over each tensor instead of several; on a CPU that is most
    of the optimiser's cost (see ``bench/train_throughput.py``).
    """
    fused = model.W_dec.device.type in ("cpu", "cuda")
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.adam_betas,  # type: ignore[arg-type]
                           eps=cfg.adam_eps, fused=fused)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, partial(lr_factor, cfg, total=total))
    return Trainable(model=model, optimizer=opt, scheduler=sched)


# -- stage 3: the loop ---------------------------------------------------------------------
def train_step(state: Trainable, x: torch.Tensor, step: int) -> StepOut:
    """One optimiser step of every seed on batch ``x``."""
    model: Architecture = state.model  # type: ignore[assignment]
    out = model.training_loss(x, step)
    state.optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    model.constrain_decoder_grad()
    lr = state.optimizer.param_groups[0]["lr"]  # this step's, before the scheduler moves on
    state.optimizer.step()
    state.scheduler.step()
    model.renormalise_decoder()
    model.update_state(out, step, lr)
    return out


@dataclass
class _Run:
    """Everything the loop and its hooks share."""

    cfg: TrainConfig
    data: Data
    state: Trainable
    seeds: list[int]
    data_seed: int
    opts: RunOptions
    fp: dict[str, Any]
    init_given: bool
    snap_epochs: set[int]
    history: list[dict[str, Any]] = field(default_factory=list)
    forks: dict[int, list[int]] = field(default_factory=dict)

    @property
    def model(self) -> Architecture:
        return self.state.model  # type: ignore[return-value]


def _loop(run: _Run, start: int) -> None:
    data, cfg = run.data, run.cfg
    acc = _Metrics(run.model.n_seeds, data.device)
    steps = progress(range(start, data.total_steps), total=data.total_steps - start,
                     desc=f"train {cfg.architecture} x{len(run.seeds)}", unit="step")
    for step, x in zip(steps, data.stream.batches(start, data.total_steps), strict=True):
        lr = run.state.scheduler.get_last_lr()[0]
        acc.add(train_step(run.state, x, step), x)
        done = step + 1
        if done % run.opts.log_every == 0 or done == data.total_steps:
            run.history.append(acc.summary(done, lr, run.model))
            h = run.history[-1]
            log.info("step %d/%d  loss %.4g  EV %.4f  L0 %.1f  dead %.3f  lr %.2e", done,
                     data.total_steps, h["loss"], h["ev"], h["l0"], h["dead_fraction"], lr)
        _after_step(run, done)


# -- stage 4: snapshots and checkpoints ----------------------------------------------------
def decay_fork_step(cfg: TrainConfig, budget: int) -> int:
    """The step at which a run of ``budget`` steps leaves its constant phase and starts its
    linear decay: ``budget - round(lr_decay_fraction * budget)``.

    Up to that step the schedule of every budget is the same (warm-up, then constant), so a
    snapshot at a smaller budget is a copy of the main run forked there and decayed over the
    budget's own decay steps on the batches the main run reads next: the SAE a separate run of
    that budget would give, at the cost of its decay steps only (warmup-stable-decay).
    """
    return budget - int(round(cfg.lr_decay_fraction * budget))


def snapshot_forks(run: _Run) -> dict[int, list[int]]:
    """Snapshot epochs keyed by the step after which each is taken: their decay-branch fork,
    or the end of the run for an epoch whose budget is the run's own length."""
    spe, total = run.data.steps_per_epoch, run.data.total_steps
    forks: dict[int, list[int]] = {}
    for epoch in sorted(run.snap_epochs):
        budget = epoch * spe
        at = total if budget == total else decay_fork_step(run.cfg, budget)
        forks.setdefault(at, []).append(epoch)
    return forks


def _after_step(run: _Run, done: int) -> None:
    opts = run.opts
    for epoch in run.forks.get(done, []):
        model = run.model if done == run.data.total_steps else _decay_branch(run, done, epoch)
        for i in range(len(run.seeds)):
            export(run, i, epoch * run.data.steps_per_epoch, model).save(
                _snapshot_dir(opts, i, epoch))
        log.info("saved epoch-%d snapshots", epoch)
    if opts.checkpoint_dir is not None and opts.checkpoint_every > 0 \
            and done % opts.checkpoint_every == 0 and done < run.data.total_steps:
        write_checkpoint(Path(opts.checkpoint_dir), run.state, done, run.fp)
    if opts.callback is not None:
        opts.callback(done)


def _decay_branch(run: _Run, fork: int, epoch: int) -> Architecture:
    """A copy of the run at step ``fork`` trained through the decay of an ``epoch``-epoch
    budget (see :func:`decay_fork_step`); the run itself is left as it was."""
    budget = epoch * run.data.steps_per_epoch
    branch = make_optimizer(copy.deepcopy(run.model), run.cfg, budget)
    # deep copies: the optimiser would otherwise share Adam's moment tensors with the run
    branch.optimizer.load_state_dict(copy.deepcopy(run.state.optimizer.state_dict()))
    branch.scheduler.load_state_dict(run.state.scheduler.state_dict())
    for group in branch.optimizer.param_groups:
        group["lr"] = group["initial_lr"] * lr_factor(run.cfg, fork, budget)
    for step, x in zip(range(fork, budget), run.data.stream.batches(fork, budget), strict=True):
        train_step(branch, x, step)
    log.info("epoch-%d snapshot: decayed from step %d to %d", epoch, fork, budget)
    return branch.model  # type: ignore[return-value]


def _snapshot_dir(opts: RunOptions, i: int, epoch: int) -> Path:
    if opts.snapshot_path is not None:
        return Path(opts.snapshot_path(i, epoch))
    out = Path(opts.out_dirs[i])  # type: ignore[index]
    return out.parent / "snapshots" / f"epoch{epoch}" / out.name


def _snapshot_epochs(opts: RunOptions, data: Data) -> set[int]:
    if opts.out_dirs is None and opts.snapshot_path is None:
        return set()
    return {int(e) for e in opts.snapshots_at_epochs
            if e >= 1 and e * data.steps_per_epoch <= data.total_steps}


# -- stage 5: export -----------------------------------------------------------------------
def export(run: _Run, i: int, step: int, model: Architecture | None = None) -> SAE:
    """Seed ``i`` of ``model`` (default: the run's) after ``step`` steps as an :class:`SAE` on
    raw activations (normalisation folded in)."""
    model = run.model if model is None else model
    cfg, cache = run.cfg, run.data.cache
    recipe = cfg.to_json()
    recipe.update({"steps": step, "tokens_seen": step * cfg.batch_size,
                   "epochs_seen": step * cfg.batch_size / cache.n_tokens,
                   "normalization_scale": run.data.scale, "cache": str(cache.path),
                   "cache_n_tokens": cache.n_tokens, **model.training_record(i)})
    seeds: dict[str, Any] = {"init_seed": run.seeds[i], "data_seed": run.data_seed}
    if run.init_given:  # continued from given tensors: the seed is only a label
        seeds["init"] = "given"
    sae_cfg = SAEConfig(architecture=cfg.architecture, d_in=cache.d, d_sae=cfg.d_sae, k=cfg.k,
                        model_name=str(cache.header.get("model") or ""),
                        hook_name=str(cache.header.get("hook") or ""),
                        recipe=recipe, seeds=seeds)
    return sae_from_tensors(sae_cfg, fold_input_scale(model.export_tensors(i),
                                                      run.data.scale))


def decoder_init_cosine(sae: SAE, w_dec_init: torch.Tensor) -> float:
    """Median over latents of the cosine between a decoder row and its initial value."""
    a = sae.decoder_directions().cpu()
    b = w_dec_init.detach().float().cpu()
    b = b / b.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return float((a * b).sum(1).median())


def _finish(run: _Run, start: int, seconds: float, w_dec_init: torch.Tensor) -> TrainResult:
    total = run.data.total_steps
    tps = (total - start) * run.cfg.batch_size / seconds if seconds > 0 else 0.0
    saes = [export(run, i, total) for i in range(len(run.seeds))]
    opts = run.opts
    for i, sae in enumerate(saes if opts.out_dirs is not None else []):
        sae.save(opts.out_dirs[i])  # type: ignore[index]
        # how far each decoder moved from its seed's initialisation (an under-trained SAE
        # stays close to it, and its features then match nothing in another seed)
        io.write_json(Path(opts.out_dirs[i]) / "training.json",  # type: ignore[index]
                      {"history": run.history, "steps": total, "resumed_from": start,
                       "seconds": seconds, "tokens_per_second_per_sae": tps,
                       "decoder_init_cosine_median": decoder_init_cosine(sae, w_dec_init[i]),
                       "recipe": run.cfg.to_json()})
    if opts.checkpoint_dir is not None and not opts.keep_checkpoint:
        shutil.rmtree(Path(opts.checkpoint_dir) / "checkpoint", ignore_errors=True)
    log.info("trained %d SAEs for %d steps in %.1f s (%.0f tokens/s per SAE)", len(saes),
             total - start, seconds, tps)
    return TrainResult(saes=saes, history=run.history, steps=total, resumed_from=start,
                       seconds=seconds, tokens_per_second_per_sae=tps,
                       snapshot_epochs=sorted(run.snap_epochs))


def _check_group(cfg: TrainConfig, seeds: list[int], opts: RunOptions,
                 init: Sequence[Mapping[str, torch.Tensor]] | None) -> None:
    validate_recipe(cfg.to_json(), source=f"recipe of {cfg.architecture}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"need one or more init seeds, all different (seeds never share an "
                         f"initialisation), got {seeds}")
    if opts.out_dirs is not None and len(opts.out_dirs) != len(seeds):
        raise ValueError(f"{len(opts.out_dirs)} out_dirs for {len(seeds)} seeds")
    if init is not None and len(init) != len(seeds):
        raise ValueError(f"{len(init)} initial SAEs for {len(seeds)} seeds")


def train_group(cache: ActivationCache | str | Path, cfg: TrainConfig, init_seeds: Sequence[int],
                data_seed: int, opts: RunOptions | None = None,
                init: Sequence[Mapping[str, torch.Tensor]] | None = None) -> TrainResult:
    """Train one SAE per init seed on ``cache``, sharing the data order; save and return them.

    The data order is :class:`~.data.ShuffledStream`'s for ``data_seed``. ``init``:
    start from these SAEs instead of a seeded initialisation (continued training, e.g. of a
    pooled SAE): one dict of tensors per seed in :meth:`SAE.state_tensors` form, raw units;
    ``init_seeds`` then only label the models, ``b_dec_init`` is unused, Adam starts from zero
    and the schedule is the recipe's, over ``cfg``'s length.
    """
    opts = opts or RunOptions()
    seeds = [int(s) for s in init_seeds]
    _check_group(cfg, seeds, opts, init)
    cache = cache if isinstance(cache, ActivationCache) else ActivationCache.open(cache)
    cfg, data = prepare_data(cache, cfg, int(data_seed), torch.device(opts.device))
    model = build_model(cfg, data, seeds, init)
    w_dec_init = model.W_dec.detach().cpu().clone()
    run = _Run(cfg=cfg, data=data, state=make_optimizer(model, cfg, data.total_steps),
               seeds=seeds, data_seed=int(data_seed), opts=opts, init_given=init is not None,
               fp=fingerprint(cfg, seeds, data_seed, cache, init),
               snap_epochs=_snapshot_epochs(opts, data))
    run.forks = snapshot_forks(run)
    ckpt = Path(opts.checkpoint_dir) if opts.checkpoint_dir is not None else None
    start = resume(ckpt, run.state, run.fp)
    if start:
        log.info("resuming from checkpoint at step %d/%d", start, data.total_steps)
    t0 = time.perf_counter()
    _loop(run, start)
    return _finish(run, start, time.perf_counter() - t0, w_dec_init)


class _Metrics:
    """Running sums of the training metrics between two log lines (kept on the device)."""

    def __init__(self, s: int, device: torch.device):
        self.s, self.device = s, device
        self.reset()

    def reset(self) -> None:
        z = torch.zeros(self.s, dtype=torch.float64, device=self.device)
        self.sse, self.aux, self.l0 = z.clone(), z.clone(), z.clone()
        self.var = torch.zeros((), dtype=torch.float64, device=self.device)
        self.n_batches = 0
        self.n_tokens = 0

    @torch.no_grad()
    def add(self, out: StepOut, x: torch.Tensor) -> None:
        self.sse += out.sse.double()
        self.aux += out.aux.double()
        self.l0 += out.l0.double()
        # the batch's centred sum of squares, ||x||^2 - ||sum x||^2 / n: two reads of x instead
        # of a centred copy; float32 norms, as for a log line
        total = torch.linalg.vector_norm(x).double().square()
        self.var += total - torch.linalg.vector_norm(x.sum(0)).double().square() / x.shape[0]
        self.n_batches += 1
        self.n_tokens += x.shape[0]

    def summary(self, step: int, lr: float, model: Architecture) -> dict[str, Any]:
        nb = max(self.n_batches, 1)
        mse = (self.sse / max(self.n_tokens, 1)).cpu().numpy()
        ev = (1 - self.sse / self.var.clamp_min(1e-30)).cpu().numpy()
        aux = (self.aux / nb).cpu().numpy()
        l0 = (self.l0 / nb).cpu().numpy()
        dead = (model.since_fired >= model.cfg.dead_steps).double().mean(1).cpu().numpy()
        rec = {"step": step, "lr": lr, "loss": float(np.mean(mse + aux)), "mse": float(mse.mean()),
               "ev": float(ev.mean()), "l0": float(l0.mean()), "aux": float(aux.mean()),
               "dead_fraction": float(dead.mean()),
               "per_seed": {"mse": mse.tolist(), "ev": ev.tolist(), "l0": l0.tolist(),
                            "aux": aux.tolist(), "dead_fraction": dead.tolist(),
                            **model.log_state()}}
        self.reset()
        return rec
