"""The training recipe: hyper-parameters shared by all seeds of a group, and their defaults.

A recipe is validated once, by :func:`saestab.config.validate_recipe` (the schema's
``sae.variants`` entry plus the architecture's cross-key checks); :class:`TrainConfig` trusts it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

import torch

from ..activations import CacheStats
from ..sae import Architecture, get_architecture

DEFAULT_EPOCHS = 8.0
"""Training length when neither ``n_epochs`` nor ``n_tokens`` is given."""

IMPL_FIELDS = ("decode",)
"""Fields that choose an implementation, not the maths; a checkpoint resumes across them."""

NORMALIZATIONS = ("variance", "mean_sq_norm", "none")
"""Input scalings (``TrainConfig.normalize``): one constant factor, from the cache's statistics."""

DEAD_WINDOW_TOKENS = 2**15
"""Default AuxK dead window in tokens (``dead_steps`` = this / ``batch_size``)."""


@dataclass
class TrainConfig:
    """Hyper-parameters of one SAE training recipe (shared by all seeds of a group).

    ``None`` means "derive the default" (:meth:`resolved`); the architecture's class decides
    its own defaults (:meth:`saestab.sae.Architecture.recipe_defaults`: learning rate, penalty
    and its warm-up, AuxK size, Matryoshka groups). Shared defaults: ``dead_steps`` (steps
    without firing after which a latent counts as dead, for AuxK) :data:`DEAD_WINDOW_TOKENS`
    ``/ batch_size`` (~33k tokens: the health gate calls a latent dead when it never fires on
    the train split, ~150k tokens in the default run, so AuxK has to reach a fading latent well
    within one pass; with a window near a whole pass, latents that fire once in a while are
    never revived and end silent); length ``n_epochs`` or ``n_tokens``, neither:
    :data:`DEFAULT_EPOCHS` epochs. The learning
    rate warms up linearly over ``warmup_steps`` and decays linearly to 0 over the last
    ``lr_decay_fraction`` of the steps; a snapshot at a smaller budget is a decay branch forked
    from the constant phase, so it too ends its own schedule at its budget (warm-up, stable,
    decay: :func:`~.loop.decay_fork_step`). The data are read in the order of
    :class:`~.data.ShuffledStream` (``shuffle_block``, ``shuffle_window`` rows). JumpReLU's
    ``jumprelu_bandwidth``, ``jumprelu_init_threshold`` (in units of the normalised activations) and
    ``l0_coefficient`` are starting points, not tuned values. ``target_l0`` (relu, jumprelu):
    steer each seed's penalty coefficient to that L0 during training, with the integral gain
    ``target_l0_rate`` per unit of learning rate (default: the architecture's; see
    :class:`saestab.sae.architecture.Penalised`); None keeps the given coefficient.

    ``normalize``: the constant the activations are multiplied by in training (folded into the
    saved weights): ``variance`` makes ``E||x - E x||^2 = 1``, ``mean_sq_norm`` makes
    ``E||x||^2 = 1`` (the published scalar normalisation), ``none`` keeps raw units. The SAE
    models ``x - b_dec`` and ``b_dec`` holds the mean, so the variance is the scale its losses
    and parameter steps act on: where one dimension carries a large mean (the "massive
    activations" of many LMs, 92% of ``E||x||^2`` along the mean in one held-out model),
    ``mean_sq_norm`` leaves the modelled part tiny, the biases' Adam steps then are large
    against it and the AuxK term (a ratio, ~1) outweighs the reconstruction loss.

    ``decode`` picks an implementation with the same maths: ``sparse`` (CSR matmuls, for
    architectures that have that path) or ``dense``; ``auto`` takes sparse on a CPU where
    available.
    """

    architecture: str = "topk"
    d_sae: int = 1152
    k: int | None = 32
    lr: float | None = None
    batch_size: int = 512
    n_epochs: float | None = None
    n_tokens: int | None = None
    warmup_steps: int = 100
    lr_decay_fraction: float = 0.2
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 6.25e-10
    # relu (L1) and jumprelu (L0) sparsity penalties; with target_l0 each seed's coefficient is
    # steered to that L0 and the given one is its starting point
    l1_coefficient: float | None = None
    l1_warmup_steps: int | None = None
    l0_coefficient: float = 1e-3
    target_l0: float | None = None
    target_l0_rate: float | None = None
    # TopK family: AuxK and the BatchTopK inference threshold
    aux_k: int | None = None
    aux_coefficient: float = 1 / 32
    dead_steps: int | None = None
    threshold_ema_rate: float = 0.01
    # jumprelu (units of the normalised activations)
    jumprelu_bandwidth: float = 0.001
    jumprelu_init_threshold: float = 0.001
    # matryoshka
    matryoshka_groups: list[int] | None = None
    # data and init
    b_dec_init: str = "geometric_median"
    b_dec_init_sample: int = 8192
    normalize: str = "variance"
    # data order (see saestab.training.data): contiguous rows read together, rows shuffled together
    shuffle_block: int = 1024
    shuffle_window: int = 1 << 17
    decode: str = "auto"

    @property
    def arch(self) -> type[Architecture]:
        """The architecture's class (which trains, exports and infers)."""
        return get_architecture(self.architecture)

    def resolved(self, d_in: int, n_rows: int, device: torch.device) -> TrainConfig:
        """A copy with every ``None``/``"auto"`` replaced by its concrete value."""
        c = dataclasses.replace(self, adam_betas=(float(self.adam_betas[0]),
                                                  float(self.adam_betas[1])))
        if c.n_tokens is None:  # whole batches of whole epochs, as the data stream counts them
            c.n_tokens = c.total_steps(n_rows) * c.batch_size
            c.n_epochs = None
        for key, value in c.arch.recipe_defaults(c, d_in, c.n_tokens // c.batch_size).items():
            if getattr(c, key) is None:
                setattr(c, key, value)
        if not c.arch.uses_k:
            c.k = None  # recorded as unused rather than as a misleading value
        if c.aux_k is not None:
            c.aux_k = min(c.aux_k, c.d_sae)
        if c.dead_steps is None:
            c.dead_steps = max(1, round(DEAD_WINDOW_TOKENS / c.batch_size))
        if c.l1_warmup_steps is None:
            c.l1_warmup_steps = 0
        if c.decode == "auto":  # the CSR path pays on CPUs; GPUs prefer batched dense matmuls
            c.decode = "sparse" if device.type == "cpu" and c.arch.has_sparse_path else "dense"
        return c

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def total_steps(self, n_rows: int) -> int:
        """Training steps on a cache of ``n_rows`` rows: ``n_tokens // batch_size``, or
        ``n_epochs`` times the steps of one epoch (whose last partial batch is dropped)."""
        if self.n_tokens is not None:
            return self.n_tokens // self.batch_size
        return int(round((self.n_epochs or DEFAULT_EPOCHS) * (n_rows // self.batch_size)))


def input_scale(normalize: str, stats: CacheStats) -> float:
    """The factor the raw activations are multiplied by in training (see ``TrainConfig``)."""
    if normalize == "variance":
        return 1.0 / math.sqrt(stats.centered_sq_norm)
    if normalize == "mean_sq_norm":
        return 1.0 / math.sqrt(stats.mean_sq_norm)
    if normalize == "none":
        return 1.0
    raise ValueError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {normalize!r}")


def lr_factor(cfg: TrainConfig, step: int, total: int) -> float:
    """The learning-rate multiplier of 0-based ``step``: linear warm-up over ``warmup_steps``,
    constant, then linear decay to 0 over the last ``lr_decay_fraction`` of the steps."""
    f = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
    decay_steps = int(round(cfg.lr_decay_fraction * total))
    if decay_steps > 0 and step >= total - decay_steps:
        f *= (total - step) / decay_steps
    return f
