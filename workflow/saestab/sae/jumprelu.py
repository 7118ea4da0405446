"""JumpReLU SAEs (Rajamanoharan et al. 2024).

``f = z * H(z - theta)`` with a learned per-latent threshold (stored as ``log_threshold`` so it
stays positive); loss ``||x - x_hat||^2 + lambda * L0`` with lambda = ``l0_coefficient`` warmed up
like relu's penalty (and, with ``target_l0``, steered to that L0 per seed: see
:class:`~.architecture.Penalised`). The step function has no useful gradient, so ``theta``
learns through rectangle-kernel pseudo-gradients of width ``jumprelu_bandwidth``. Unit-norm
decoder rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from .architecture import Penalised, register, threshold_activation

if TYPE_CHECKING:
    from ..training import TrainConfig
    from .model import SAE


def _rectangle(u: torch.Tensor) -> torch.Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


def _reduce_to(grad: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum ``grad`` over the dims along which a tensor of ``shape`` was broadcast."""
    while grad.dim() > len(shape):
        grad = grad.sum(0)
    for i, n in enumerate(shape):
        if n == 1 and grad.shape[i] != 1:
            grad = grad.sum(i, keepdim=True)
    return grad


class JumpReLUFunction(torch.autograd.Function):
    """``z * H(z - theta)``; d/dz = H(z - theta), d/dtheta = -(theta/eps) K((z - theta)/eps)."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return z * (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        z, theta = ctx.saved_tensors
        eps = ctx.eps
        gz = g * (z > theta).to(g.dtype)
        gt = -(theta / eps) * _rectangle((z - theta) / eps) * g
        return gz, _reduce_to(gt, theta.shape), None


class StepFunction(torch.autograd.Function):
    """``H(z - theta)``; d/dz = 0, d/dtheta = -(1/eps) K((z - theta)/eps)."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[None, torch.Tensor, None]:
        z, theta = ctx.saved_tensors
        gt = -(1.0 / ctx.eps) * _rectangle((z - theta) / ctx.eps) * g
        return None, _reduce_to(gt, theta.shape), None


@register
class JumpReLU(Penalised):
    name = "jumprelu"
    saelens_name = "jumprelu"
    has_threshold = True
    # the thresholds follow lambda slowly (log-thresholds move ~lr per step), so L0 lags by
    # hundreds of steps: on SmolLM2 a rate of 10 oscillated (L0 20-60), 3 settled (3 of 3
    # seeds at L0 34) and 1 was slower to correct the drift (L0 40 after 4 epochs); the gain
    # is constant (no CONTROL_SETTLE), as the slow loop has no fast start to make up for
    TARGET_L0_RATE = 3.0

    def __init__(self, cfg: TrainConfig, d_in: int, n_seeds: int):
        super().__init__(cfg, d_in, n_seeds)
        self.log_threshold = torch.nn.Parameter(torch.zeros(n_seeds, cfg.d_sae))

    @classmethod
    def recipe_defaults(cls, cfg: TrainConfig, d_in: int, total_steps: int) -> dict[str, Any]:
        """The L0 penalty warms up with the learning rate, over ``warmup_steps`` (budget-free, so
        every budget's run starts the same)."""
        return {**super().recipe_defaults(cfg, d_in, total_steps),
                "l1_warmup_steps": cfg.warmup_steps}

    @torch.no_grad()
    def init_seed(self, i: int, seed: int, b_dec: torch.Tensor) -> None:
        super().init_seed(i, seed, b_dec)
        self.log_threshold[i] = math.log(self.cfg.jumprelu_init_threshold)

    @torch.no_grad()
    def init_from_data(self, i: int, sample: torch.Tensor) -> None:
        """With ``target_l0``: each latent's initial threshold is the ``1 - target_l0 / d_sae``
        quantile of its initial pre-activations on the sample (at least
        ``jumprelu_init_threshold``), so training starts near the target L0. Thresholds
        learn on the log scale at about ``lr`` per step, too slowly in a short run to travel
        from a fixed initial value to a model's own scale."""
        target = self.cfg.target_l0
        if target is None:
            return
        pre = torch.addmm(self.b_enc[i], sample - self.b_dec[i], self.W_enc[i])
        k = min(len(pre), max(1, math.ceil(len(pre) * (1 - float(target) / self.cfg.d_sae))))
        theta = pre.kthvalue(k, dim=0).values  # a quantile without torch.quantile's size limit
        self.log_threshold[i] = theta.clamp_min(self.cfg.jumprelu_init_threshold).log()

    @torch.no_grad()
    def load_tensors(self, i: int, tensors: Mapping[str, torch.Tensor], scale: float) -> None:
        if tuple(tensors.get("threshold", torch.empty(0)).shape) != (self.cfg.d_sae,):
            raise ValueError(f"a jumprelu SAE needs a 'threshold' of shape ({self.cfg.d_sae},)")
        super().load_tensors(i, tensors, scale)
        self.log_threshold[i] = (tensors["threshold"].float() * scale).clamp_min(1e-12).log()

    @torch.no_grad()
    def export_tensors(self, i: int) -> dict[str, torch.Tensor]:
        return {**super().export_tensors(i),
                "threshold": self.log_threshold[i].detach().exp().float().cpu()}

    def activation(self, pre: torch.Tensor, step: int) -> torch.Tensor:
        theta = self.log_threshold.exp().unsqueeze(1)
        return JumpReLUFunction.apply(pre, theta, self.cfg.jumprelu_bandwidth)

    def penalty(self, f: torch.Tensor, pre: torch.Tensor, step: int) -> torch.Tensor:
        theta = self.log_threshold.exp().unsqueeze(1)
        l0 = StepFunction.apply(pre, theta, self.cfg.jumprelu_bandwidth).sum(-1).mean(-1)
        return self.sparsity_coefficient(step) * l0

    @classmethod
    def infer(cls, pre: torch.Tensor, sae: SAE) -> torch.Tensor:
        return threshold_activation(pre, sae.threshold)
