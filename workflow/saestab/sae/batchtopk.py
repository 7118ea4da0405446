"""BatchTopK SAEs (Bussmann et al. 2024).

Training keeps the ``k * B`` largest pre-activations of the whole batch (a batch-global top-k),
so L0 averages k per token but varies between tokens. Inference cannot see a batch, so each SAE
keeps a threshold, an exponential moving average of the smallest kept activation per step,
``theta <- (1 - r) theta + r * min kept`` with ``r = threshold_ema_rate`` (the first step sets
it directly), and infers JumpReLU-style with ``pre > theta``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ._sparse import Pattern, top_indices
from .architecture import StepOut, register, threshold_activation
from .topk import TopKFamily

if TYPE_CHECKING:
    from ..training import TrainConfig
    from .model import SAE


def batch_topk_activation(pre: torch.Tensor, k: int | float) -> torch.Tensor:
    """Keep the top ``round(k * B)`` ReLU'd values over the last two dims (B, m) jointly.

    ``pre`` is (B, m) or (S, B, m); with a leading S each slice is treated separately.
    """
    lead = pre.shape[:-2]
    b, m = pre.shape[-2:]
    flat = pre.reshape(*lead, b * m)
    vals, idx = torch.topk(flat, _n_keep(k, b, m), dim=-1, sorted=False)
    return torch.zeros_like(flat).scatter(-1, idx, torch.relu(vals)).reshape(pre.shape)


def _n_keep(k: int | float, b: int, m: int) -> int:
    return min(max(int(round(k * b)), 1), b * m)


@register
class BatchTopK(TopKFamily):
    name = "batchtopk"
    saelens_name = "jumprelu"  # SAELens infers with our threshold as a JumpReLU
    has_threshold = True

    threshold: torch.Tensor

    def __init__(self, cfg: TrainConfig, d_in: int, n_seeds: int):
        super().__init__(cfg, d_in, n_seeds)
        # one scalar per seed while training, float64 so the EMA does not drift
        self.register_buffer("threshold", torch.zeros(n_seeds, dtype=torch.float64))

    def activation(self, pre: torch.Tensor, step: int) -> torch.Tensor:
        return batch_topk_activation(pre, self.cfg.k)  # type: ignore[arg-type]

    def sparse_select(self, pre: torch.Tensor) -> tuple[list[Pattern], torch.Tensor]:
        s, b, m = pre.shape
        flat = pre.reshape(s, b * m)
        idx = top_indices(flat, _n_keep(self.cfg.k, b, m))  # type: ignore[arg-type]
        return [Pattern.from_flat_indices(idx[i], b, m) for i in range(s)], flat.gather(1, idx)

    @torch.no_grad()
    def update_state(self, out: StepOut, step: int, lr: float) -> None:
        super().update_state(out, step, lr)
        assert out.min_kept is not None
        ok = torch.isfinite(out.min_kept)
        rate = 1.0 if step == 0 else self.cfg.threshold_ema_rate
        self.threshold.copy_(torch.where(ok, (1 - rate) * self.threshold + rate * out.min_kept,
                                         self.threshold))

    def log_state(self) -> dict[str, list[float]]:
        return {"threshold": self.threshold.cpu().tolist()}

    @torch.no_grad()
    def export_tensors(self, i: int) -> dict[str, torch.Tensor]:
        """The training threshold becomes every latent's inference threshold."""
        out = super().export_tensors(i)
        out["threshold"] = torch.full((self.cfg.d_sae,), float(self.threshold[i]))
        return out

    @classmethod
    def infer(cls, pre: torch.Tensor, sae: SAE) -> torch.Tensor:
        return threshold_activation(pre, sae.threshold)
