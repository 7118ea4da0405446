"""Matryoshka BatchTopK SAEs (Bussmann et al. 2025).

BatchTopK whose reconstruction loss is the mean over nested prefixes of the latents
(``matryoshka_groups``, default m/16, m/16, m/8, m/4, rest): the first latents must reconstruct
on their own, which pushes general features to the front. Inference as BatchTopK.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .architecture import register
from .batchtopk import BatchTopK

if TYPE_CHECKING:
    from ..training import TrainConfig


@register
class Matryoshka(BatchTopK):
    name = "matryoshka"

    @classmethod
    def recipe_defaults(cls, cfg: TrainConfig, d_in: int, total_steps: int) -> dict[str, Any]:
        m = cfg.d_sae
        g = [x for x in (m // 16, m // 16, m // 8, m // 4) if x > 0]
        return {**super().recipe_defaults(cfg, d_in, total_steps),
                "matryoshka_groups": g + [m - sum(g)]}

    def reconstruction_loss(self, f: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The full reconstruction, the mean over prefixes of their per-token losses, and the
        full reconstruction's error (the metric)."""
        groups: list[int] = self.cfg.matryoshka_groups  # type: ignore[assignment]
        recon = self.b_dec.unsqueeze(1).expand(-1, x.shape[0], -1)
        total = f.new_zeros(f.shape[0])
        start = 0
        for size in groups:
            stop = start + size
            recon = recon + torch.bmm(f[..., start:stop], self.W_dec[:, start:stop])
            err = (recon - x).pow(2).sum(-1)
            total = total + err.mean(-1)
            start = stop
        return recon, total / len(groups), err.detach().sum(-1)
