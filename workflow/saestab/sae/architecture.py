"""The base class of the SAE architectures and their registry.

An architecture is a :class:`torch.nn.Module` holding S SAEs whose parameters are stacked along
a leading seed dimension, so one batch feeds every seed through batched matmuls. A subclass
defines, in one place, what makes the variant: its activation in training and at inference,
its training loss, its extra parameters or inference state (thresholds), and its defaults and
cross-key checks of the recipe. The trainer, the file format and :class:`saestab.sae.SAE` only
talk to this interface, so a new variant is one module calling :func:`register` (and its name
in the configuration schema's ``architecture`` enum).

Units: a model works on activations multiplied by the trainer's constant input scale (by
default to unit variance, see ``TrainConfig.normalize``); :meth:`export_tensors` and
:meth:`load_tensors` convert to and from the raw-unit tensors of a saved SAE.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from .. import recipes
from . import _kernels

if TYPE_CHECKING:  # the recipe type lives with the trainer
    from ..training import TrainConfig
    from .model import SAE

_REGISTRY: dict[str, type[Architecture]] = {}


def register(cls: type[Architecture]) -> type[Architecture]:
    """Class decorator: make ``cls`` trainable and loadable under ``cls.name``, with the recipe
    properties (``uses_k``, ``coefficient_key``, ...) of its entry in
    :data:`saestab.recipes.RULES`, which a new architecture adds there."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"architecture {cls.name!r} is already registered "
                         f"({_REGISTRY[cls.name].__module__})")
    if cls.name not in recipes.RULES:
        raise ValueError(f"architecture {cls.name!r} ({cls.__module__}) has no entry in "
                         "saestab.recipes.RULES: add its recipe rules there")
    for f in dataclasses.fields(recipes.RecipeRules):
        setattr(cls, f.name, getattr(recipes.RULES[cls.name], f.name))
    _REGISTRY[cls.name] = cls
    return cls


def get_architecture(name: str) -> type[Architecture]:
    """The registered class of architecture ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown SAE architecture {name!r} (registered: "
                         f"{', '.join(sorted(_REGISTRY))})") from None


def architectures() -> tuple[str, ...]:
    """Names of the registered architectures."""
    return tuple(_REGISTRY)


@dataclass
class StepOut:
    """One training step's loss and per-seed metrics (all per-seed tensors have shape (S,))."""

    loss: torch.Tensor  # scalar: sum over seeds (seeds share no parameter, so no coupling)
    sse: torch.Tensor  # squared error summed over the batch
    l0: torch.Tensor  # mean number of active latents per token
    aux: torch.Tensor  # auxiliary loss (AuxK, L1 or L0 term)
    fired: torch.Tensor  # (S, m) bool: latent was active somewhere in the batch
    min_kept: torch.Tensor | None = None  # smallest positive kept activation (thresholds)


class Architecture(torch.nn.Module):
    """S SAEs of one architecture with stacked parameters (see the module docstring)."""

    name: ClassVar[str]
    saelens_name: ClassVar[str]
    """SAELens's name of the inference rule, written to ``cfg.json`` so SAELens loads the file."""
    # uses_k, has_sparse_path, coefficient_key and nested_groups: set by :func:`register` from
    # the class's entry in saestab.recipes.RULES (the others each class states itself)
    uses_k: ClassVar[bool] = False
    """Trained with ``k`` active latents per token (the recipe must give ``k <= d_sae``)."""
    infers_with_k: ClassVar[bool] = False
    """The inference rule needs ``k`` (stored in ``cfg.json``)."""
    has_threshold: ClassVar[bool] = False
    """Saved SAEs carry a per-latent ``threshold`` tensor."""
    unit_norm_decoder: ClassVar[bool] = True
    """Decoder rows are kept at unit norm (:meth:`constrain_decoder_grad` / :meth:`renormalise`)."""
    has_sparse_path: ClassVar[bool] = False
    """Has a CSR decode for CPU (``decode: sparse``)."""
    coefficient_key: ClassVar[str | None] = None
    """The recipe key of the sparsity-penalty coefficient (None: no penalty to steer, so no
    ``target_l0`` mode; see :class:`Penalised`)."""
    nested_groups: ClassVar[bool] = False
    """The latents form nested prefixes (``matryoshka_groups``)."""

    since_fired: torch.Tensor

    def __init__(self, cfg: TrainConfig, d_in: int, n_seeds: int):
        super().__init__()
        self.cfg = cfg
        m = cfg.d_sae
        # the encoder is stored as its transpose (S, m, d), read as W_enc (S, d, m): the
        # sparse backward writes its gradient row by row as (m, d) products, and a
        # contiguous parameter is what the fused optimiser steps without copies
        self.W_enc_t = torch.nn.Parameter(torch.zeros(n_seeds, m, d_in))
        self.W_dec = torch.nn.Parameter(torch.zeros(n_seeds, m, d_in))
        self.b_enc = torch.nn.Parameter(torch.zeros(n_seeds, m))
        self.b_dec = torch.nn.Parameter(torch.zeros(n_seeds, d_in))
        self.register_buffer("since_fired", torch.zeros(n_seeds, m, dtype=torch.int64))

    @property
    def W_enc(self) -> torch.Tensor:  # noqa: N802 (SAELens's name)
        """The encoders (S, d, m), a view of the stored transpose ``W_enc_t``."""
        return self.W_enc_t.transpose(1, 2)

    @property
    def n_seeds(self) -> int:
        return self.W_dec.shape[0]

    # -- the recipe (class level: used before a model exists) --------------------------------
    @classmethod
    def recipe_defaults(cls, cfg: TrainConfig, d_in: int, total_steps: int) -> dict[str, Any]:
        """Values for the recipe's unset (None) keys that this architecture decides.

        Default learning rate: Anthropic's 5e-5 at m = 2**14, scaled as 1/sqrt(m).
        """
        return {"lr": 5e-5 * math.sqrt(2**14 / cfg.d_sae)}

    # -- initialisation and conversion -------------------------------------------------------
    @torch.no_grad()
    def init_seed(self, i: int, seed: int, b_dec: torch.Tensor) -> None:
        """Seed ``i``'s initial weights from its own generator, independent of the group.

        Random unit decoder rows, the encoder their transpose, zero encoder bias and the
        shared, data-derived ``b_dec``. Drawn on the CPU so every device starts equal.
        """
        g = torch.Generator(device="cpu").manual_seed(int(seed))
        w_dec = torch.randn(self.cfg.d_sae, self.W_dec.shape[2], generator=g)
        w_dec /= w_dec.norm(dim=1, keepdim=True)
        self.W_dec[i] = w_dec
        self.W_enc[i] = w_dec.T
        self.b_enc[i] = 0.0
        self.b_dec[i] = b_dec

    @torch.no_grad()
    def init_from_data(self, i: int, sample: torch.Tensor) -> None:
        """After :meth:`init_seed`: initial values of seed ``i`` that depend on the data,
        from a fixed (n, d) sample of the normalised training rows; none by default."""

    @torch.no_grad()
    def load_tensors(self, i: int, tensors: Mapping[str, torch.Tensor], scale: float) -> None:
        """Set seed ``i`` from a saved SAE's tensors (raw units; inverse of the export)."""
        for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
            want = tuple(getattr(self, name).shape[1:])
            got = tuple(tensors[name].shape) if name in tensors else None
            if got != want:
                raise ValueError(f"initial tensor {name!r} has shape {got}, expected {want}")
        w_dec = tensors["W_dec"].float()
        if self.unit_norm_decoder:
            norms = w_dec.norm(dim=1)
            if (norms - 1).abs().max() > 1e-3:
                raise ValueError(f"{self.name} trains with unit-norm decoder rows; the given "
                                 f"W_dec has row norms in [{float(norms.min()):.4g}, "
                                 f"{float(norms.max()):.4g}]")
            w_dec = w_dec / norms[:, None]
        self.W_enc[i] = tensors["W_enc"].float()
        self.W_dec[i] = w_dec
        self.b_enc[i] = tensors["b_enc"].float() * scale
        self.b_dec[i] = tensors["b_dec"].float() * scale

    @torch.no_grad()
    def export_tensors(self, i: int) -> dict[str, torch.Tensor]:
        """Seed ``i`` as a saved SAE's tensors, still in normalised units (float32, CPU)."""
        return {n: getattr(self, n)[i].detach().float().cpu().contiguous().clone()
                for n in ("W_enc", "W_dec", "b_enc", "b_dec")}

    # -- training ----------------------------------------------------------------------------
    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - b_dec) @ W_enc + b_enc`` of every seed: (B, d) -> (S, B, m)."""
        xin = x.unsqueeze(0) - self.b_dec.unsqueeze(1)
        return torch.baddbmm(self.b_enc.unsqueeze(1), xin, self.W_enc)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """``f @ W_dec + b_dec`` of every seed: (S, B, m) -> (S, B, d)."""
        return torch.baddbmm(self.b_dec.unsqueeze(1), f, self.W_dec)

    def activation(self, pre: torch.Tensor, step: int) -> torch.Tensor:
        """The training-time activation of the (S, B, m) pre-activations."""
        raise NotImplementedError

    def penalty(self, f: torch.Tensor, pre: torch.Tensor, step: int) -> torch.Tensor:
        """The architecture's auxiliary (sparsity) loss per seed; none by default."""
        return pre.new_zeros(pre.shape[0])

    def training_loss(self, x: torch.Tensor, step: int) -> StepOut:
        """Loss of every seed on batch ``x`` (B, d): per-token squared error plus penalty."""
        pre = self.pre_activations(x)
        f = self.activation(pre, step)
        err = (self.decode(f) - x).pow(2).sum(-1)  # (S, B)
        aux = self.penalty(f, pre, step)
        active = f > 0
        return StepOut(loss=(err.mean(-1) + aux).sum(), sse=err.detach().sum(-1),
                       l0=active.sum((1, 2)).to(x.dtype) / x.shape[0], aux=aux.detach(),
                       fired=active.any(1))

    def warmed_up(self, coefficient: float, step: int) -> float:
        """A sparsity coefficient with its linear warm-up over ``l1_warmup_steps``."""
        warm = self.cfg.l1_warmup_steps or 0
        return float(coefficient) * (min(1.0, (step + 1) / warm) if warm > 0 else 1.0)

    def dead(self, step: int) -> torch.Tensor | None:
        """(S, m) latents silent for ``dead_steps`` steps; None before that can happen."""
        n = int(self.cfg.dead_steps)  # type: ignore[arg-type]
        return self.since_fired >= n if step >= n else None

    @torch.no_grad()
    def update_state(self, out: StepOut, step: int, lr: float) -> None:
        """Bookkeeping after the optimiser step (taken at learning rate ``lr``): firing
        counters (and, in subclasses, inference thresholds or penalty coefficients)."""
        self.since_fired.copy_(torch.where(out.fired, 0, self.since_fired + 1))

    def log_state(self) -> dict[str, list[float]]:
        """Per-seed inference state worth logging beside the metrics; none by default."""
        return {}

    def training_record(self, i: int) -> dict[str, Any]:
        """What seed ``i``'s training reached and its saved ``cfg.json`` records beside the
        recipe (e.g. a steered penalty coefficient); nothing by default."""
        return {}

    # -- the decoder-norm constraint ---------------------------------------------------------
    @torch.no_grad()
    def constrain_decoder_grad(self) -> None:
        """Before the optimiser step: drop the gradient component along each (unit) decoder
        row, so the step moves rows along the sphere rather than changing their norm."""
        g = self.W_dec.grad
        if not self.unit_norm_decoder or g is None:
            return
        if _kernels.applies(g, self.W_dec):  # one pass over each row instead of three
            _kernels.project_out_rows(g, self.W_dec)
        else:
            # vecdot, not einsum: einsum runs S*m (1, d) x (d, 1) matmuls, slow for S > 1
            along = torch.linalg.vecdot(g, self.W_dec).unsqueeze(-1)
            g.addcmul_(along, self.W_dec, value=-1.0)

    @torch.no_grad()
    def renormalise_decoder(self) -> None:
        """After the optimiser step: put the decoder rows back on the unit sphere."""
        if not self.unit_norm_decoder:
            return
        if _kernels.applies(self.W_dec):  # one pass over each row instead of three
            _kernels.normalise_rows(self.W_dec)
        else:
            self.W_dec /= self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    # -- inference (one saved SAE) -----------------------------------------------------------
    @classmethod
    def infer(cls, pre: torch.Tensor, sae: SAE) -> torch.Tensor:
        """The inference-time activation of a saved SAE's pre-activations (..., m)."""
        raise NotImplementedError

    @classmethod
    def infer_sparse(cls, pre: torch.Tensor, sae: SAE) -> torch.Tensor:
        """:meth:`infer`'s code of (B, m) pre-activations as a sparse CSR tensor, which may
        hold explicit zeros (an entry is active where its value is > 0). By default the nonzeros
        of the dense code; an architecture that selects its entries directly overrides it."""
        from ._sparse import dense_to_csr  # the sparse helpers import this module

        return dense_to_csr(cls.infer(pre, sae))


def threshold_activation(pre: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """JumpReLU at inference: ``pre`` where ``pre > threshold`` (and > 0), else 0."""
    return torch.where(pre > threshold, torch.relu(pre), torch.zeros((), dtype=pre.dtype,
                                                                      device=pre.device))


class Penalised(Architecture):
    """An architecture whose sparsity is set by a penalty coefficient (relu's L1 on
    ``f_j ||d_j||``, jumprelu's L0), named by :attr:`coefficient_key`.

    A penalty coefficient is in units that depend on the model (the same L1 coefficient gives
    very different L0 on different activations), so the recipe can ask for an L0 instead:
    ``target_l0``. Each seed's coefficient is then a buffer steered by a proportional-integral
    controller on the log scale. With ``e`` the log ratio of the seed's training L0 (a moving
    average over the last few batches) to the target, clamped to [-1, 1], every step past the
    penalty's warm-up does ``log c += g * target_l0_rate * lr * e + CONTROL_DAMPING * (e - e')``
    (``lr`` the step's learning rate, ``e'`` the previous step's error, ``g`` 1 or falling
    with the time controlled: :attr:`CONTROL_SETTLE`).

    * The integral part moves the coefficient until L0 sits at the target. It is proportional
      to the learning rate because L0 follows the coefficient only as fast as the weights
      learn, about ``lr`` per step under Adam: the loop then behaves the same in the optimiser's
      time, whatever the recipe's learning rate, and slows down with it in the final decay.
    * The proportional part takes back what the integral wound up while L0 was still catching
      up: without it the coefficient keeps rising while L0 is already falling towards the
      target, and L0 overshoots (on the tests' synthetic data it swung 15 -> 0.4 -> 3).

    The recipe's coefficient is only the starting point. The controller reads the step, the
    batch and the learning rate the run is at, never the budget, so a run is the same whatever
    its budget up to a snapshot's fork, and a decay branch is controlled as a run of its own
    budget. Its state is in buffers (saved in checkpoints, copied into decay branches); without
    ``target_l0`` the coefficient stays at the recipe's value.
    """

    coefficient_key: ClassVar[str]
    coefficient: torch.Tensor
    l0_ema: torch.Tensor
    error: torch.Tensor

    L0_EMA_RATE: ClassVar[float] = 0.2
    """Rate of the moving average of the training L0 that the controller reads (~5 batches)."""
    CONTROL_DAMPING: ClassVar[float] = 1.0
    """Gain of the proportional part (log coefficient per unit of log L0 error)."""
    CONTROL_SETTLE: ClassVar[float | None] = None
    """If set, the integral gain falls as ``1 / (1 + t / CONTROL_SETTLE)`` with ``t`` the
    learning-rate time controlled so far (the sum of the steps' learning rates): fast while
    the coefficient travels from its start, slower once it has settled (a root search with
    decreasing steps), so that a transient in L0 moves it less."""
    TARGET_L0_RATE: ClassVar[float]
    """Default ``target_l0_rate``: how fast this architecture's L0 follows its coefficient
    decides how fast the integral part may act before it overshoots."""

    @classmethod
    def recipe_defaults(cls, cfg: TrainConfig, d_in: int, total_steps: int) -> dict[str, Any]:
        return {**super().recipe_defaults(cfg, d_in, total_steps),
                "target_l0_rate": cls.TARGET_L0_RATE}

    def __init__(self, cfg: TrainConfig, d_in: int, n_seeds: int):
        super().__init__(cfg, d_in, n_seeds)
        start = float(getattr(cfg, self.coefficient_key))
        self.register_buffer("coefficient", torch.full((n_seeds,), start, dtype=torch.float64))
        self.register_buffer("l0_ema", torch.full((n_seeds,), math.nan, dtype=torch.float64))
        self.register_buffer("error", torch.full((n_seeds,), math.nan, dtype=torch.float64))
        self.register_buffer("lr_time", torch.zeros(n_seeds, dtype=torch.float64))

    def sparsity_coefficient(self, step: int) -> torch.Tensor:
        """Each seed's coefficient at ``step`` with the warm-up applied, (S,) in the
        parameters' dtype."""
        return self.warmed_up(1.0, step) * self.coefficient.to(self.W_dec.dtype)

    @torch.no_grad()
    def update_state(self, out: StepOut, step: int, lr: float) -> None:
        super().update_state(out, step, lr)
        l0 = out.l0.detach().double()
        self.l0_ema.copy_(torch.where(torch.isnan(self.l0_ema), l0,
                                      (1 - self.L0_EMA_RATE) * self.l0_ema
                                      + self.L0_EMA_RATE * l0))
        target = self.cfg.target_l0
        if target is None or step + 1 < (self.cfg.l1_warmup_steps or 0):
            return  # during the warm-up L0 is high because the penalty is not on yet
        e = torch.log(self.l0_ema / float(target)).clamp(-1.0, 1.0)  # L0 = 0: -inf -> -1
        previous = torch.where(torch.isnan(self.error), e, self.error)
        rate = float(self.cfg.target_l0_rate)  # type: ignore[arg-type]
        gain = rate * lr * (1 / (1 + self.lr_time / self.CONTROL_SETTLE)
                            if self.CONTROL_SETTLE else torch.ones_like(self.lr_time))
        self.coefficient.mul_(torch.exp(gain * e + self.CONTROL_DAMPING * (e - previous)))
        self.error.copy_(e)
        self.lr_time.add_(lr)

    def log_state(self) -> dict[str, list[float]]:
        return {"coefficient": self.coefficient.cpu().tolist()}

    def training_record(self, i: int) -> dict[str, Any]:
        """With ``target_l0``: the coefficient seed ``i`` reached and its training L0 (moving
        average over the last batches), under ``target_l0_reached``."""
        if self.cfg.target_l0 is None:
            return {}
        return {"target_l0_reached": {"coefficient": float(self.coefficient[i]),
                                      "train_l0": float(self.l0_ema[i])}}
