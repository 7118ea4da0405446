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

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

if TYPE_CHECKING:  # the recipe type lives with the trainer
    from ..training import TrainConfig
    from .model import SAE

_REGISTRY: dict[str, type[Architecture]] = {}


def register(cls: type[Architecture]) -> type[Architecture]:
    """Class decorator: make ``cls`` trainable and loadable under ``cls.name``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"architecture {cls.name!r} is already registered "
                         f"({_REGISTRY[cls.name].__module__})")
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
    def check_recipe(cls, recipe: Mapping[str, Any]) -> list[str]:
        """Problems of a recipe that a JSON schema cannot express, as ``"key: reason"``."""
        k = recipe.get("k")
        if cls.uses_k and not k:
            return [f"k: required for architecture {cls.name!r}"]
        if cls.uses_k and k > recipe["d_sae"]:
            return [f"k: {k} exceeds d_sae ({recipe['d_sae']})"]
        return []

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
    def update_state(self, out: StepOut, step: int) -> None:
        """Bookkeeping after the optimiser step: firing counters (and, in subclasses, the
        inference thresholds)."""
        self.since_fired.copy_(torch.where(out.fired, 0, self.since_fired + 1))

    def log_state(self) -> dict[str, list[float]]:
        """Per-seed inference state worth logging beside the metrics; none by default."""
        return {}

    # -- the decoder-norm constraint ---------------------------------------------------------
    @torch.no_grad()
    def constrain_decoder_grad(self) -> None:
        """Before the optimiser step: drop the gradient component along each (unit) decoder
        row, so the step moves rows along the sphere rather than changing their norm."""
        g = self.W_dec.grad
        if self.unit_norm_decoder and g is not None:
            along = torch.linalg.vecdot(g, self.W_dec).unsqueeze(-1)
            g.addcmul_(along, self.W_dec, value=-1.0)

    @torch.no_grad()
    def renormalise_decoder(self) -> None:
        """After the optimiser step: put the decoder rows back on the unit sphere."""
        if self.unit_norm_decoder:
            self.W_dec /= self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    # -- inference (one saved SAE) -----------------------------------------------------------
    @classmethod
    def infer(cls, pre: torch.Tensor, sae: SAE) -> torch.Tensor:
        """The inference-time activation of a saved SAE's pre-activations (..., m)."""
        raise NotImplementedError


def threshold_activation(pre: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """JumpReLU at inference: ``pre`` where ``pre > threshold`` (and > 0), else 0."""
    return torch.where(pre > threshold, torch.relu(pre), torch.zeros((), dtype=pre.dtype,
                                                                      device=pre.device))
