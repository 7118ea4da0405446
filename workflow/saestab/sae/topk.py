"""TopK SAEs (Gao et al. 2024) and the machinery the TopK family shares.

Training loss ``||x - x_hat||^2 + aux_coefficient * AuxK``: AuxK lets the ``aux_k`` largest
pre-activations among dead latents (silent for ``dead_steps`` steps) reconstruct the residual,
normalised by the residual's squared norm. Decoder rows are unit-norm. On a CPU the dense code
is replaced by CSR matmuls through the active latents (:mod:`._sparse`), which compute the same
loss and gradients with fewer operations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ._sparse import Pattern, csr_code, fired_latents, sparse_code_error, top_indices
from .architecture import Architecture, StepOut, register

if TYPE_CHECKING:
    from ..training import TrainConfig
    from .model import SAE


def topk_activation(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest ReLU'd values along the last dimension, zero the rest."""
    vals, idx = torch.topk(pre, k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))


@dataclass
class _Code:
    """The forward pass of a TopK-family stack on one batch."""

    pre: torch.Tensor  # (S, B, m) pre-activations (detached in the sparse path)
    x_hat: torch.Tensor | None  # (S, B, d) (dense path)
    main: torch.Tensor  # (S,) reconstruction loss
    sse: torch.Tensor  # (S,) squared error of the full reconstruction, summed over the batch
    l0: torch.Tensor  # (S,)
    fired: torch.Tensor  # (S, m)
    min_kept: torch.Tensor  # (S,) float64, inf where nothing was kept
    xin: torch.Tensor | None = None  # (S, B, d) x - b_dec, kept for the sparse AuxK
    r: torch.Tensor | None = None  # (S, B, d) x_hat - x, detached (sparse path)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """``x - x_hat``, detached: what AuxK reconstructs."""
        if self.r is not None:
            return -self.r
        assert self.x_hat is not None
        return (x - self.x_hat).detach()


class TopKFamily(Architecture):
    """Shared by topk, batchtopk and matryoshka: k, AuxK, the learning-rate rule, the sparse
    path. Subclasses say which pre-activations are kept (:meth:`activation`,
    :meth:`sparse_select`)."""


    def __init__(self, cfg: TrainConfig, d_in: int, n_seeds: int):
        super().__init__(cfg, d_in, n_seeds)
        self.sparse = cfg.decode == "sparse"

    @classmethod
    def recipe_defaults(cls, cfg: TrainConfig, d_in: int, total_steps: int) -> dict[str, Any]:
        """Gao et al.'s fit lr = 2e-4 / sqrt(m / 2**14); AuxK over d_in / 2 latents."""
        return {"lr": 2e-4 / math.sqrt(cfg.d_sae / 2**14), "aux_k": d_in // 2}

    def sparse_select(self, pre: torch.Tensor) -> tuple[list[Pattern], torch.Tensor]:
        """The kept positions of each seed and their pre-activations (S, nnz)."""
        raise NotImplementedError

    def training_loss(self, x: torch.Tensor, step: int) -> StepOut:
        code = self._sparse_forward(x) if self.sparse else self._dense_forward(x, step)
        dead = self.dead(step)
        aux = code.main.new_zeros(code.main.shape)
        if dead is not None and bool(dead.any()):
            aux = self.cfg.aux_coefficient * self._auxk(code, code.residual(x), dead)
        return StepOut(loss=(code.main + aux).sum(), sse=code.sse, l0=code.l0, aux=aux.detach(),
                       fired=code.fired, min_kept=code.min_kept)

    def reconstruction_loss(self, f: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(x_hat, loss, sse)`` of a dense code: the per-token squared error's batch mean
        (the loss) and its detached batch sum (a metric), per seed."""
        x_hat = self.decode(f)
        err = (x_hat - x).pow(2).sum(-1)
        return x_hat, err.mean(-1), err.detach().sum(-1)

    def _dense_forward(self, x: torch.Tensor, step: int) -> _Code:
        pre = self.pre_activations(x)
        f = self.activation(pre, step)
        x_hat, main, sse = self.reconstruction_loss(f, x)
        active = f.detach() > 0
        min_kept = torch.where(active, f.detach(), torch.inf).flatten(1).amin(1).double()
        return _Code(pre=pre, x_hat=x_hat, main=main, sse=sse, fired=active.any(1),
                     min_kept=min_kept,
                     l0=active.sum((1, 2)).to(x.dtype) / x.shape[0])

    def _sparse_forward(self, x: torch.Tensor) -> _Code:
        with torch.no_grad():
            xin = x.unsqueeze(0) - self.b_dec.unsqueeze(1)
            pre = torch.baddbmm(self.b_enc.unsqueeze(1), xin, self.W_enc)
            patterns, values = self.sparse_select(pre)
        err, r, vals = sparse_code_error(values, xin, self.b_dec, self.W_enc, self.b_enc,
                                         self.W_dec, patterns)
        vals = vals.detach()  # bookkeeping only: the loss is the error
        active = vals > 0
        fired = fired_latents(patterns, vals, pre.shape[2])
        min_kept = torch.where(active, vals, torch.inf).amin(1).double()
        return _Code(pre=pre, x_hat=None, main=err.mean(-1), sse=err.detach().sum(-1),
                     fired=fired, min_kept=min_kept,
                     l0=active.sum(1).to(x.dtype) / x.shape[0], xin=xin, r=r)

    def _auxk(self, code: _Code, resid: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
        """AuxK per seed: the top ``aux_k`` dead latents reconstruct the residual."""
        pre = code.pre
        n_dead = dead.sum(1)
        k_aux = int(min(self.cfg.aux_k, int(n_dead.max())))  # type: ignore[call-overload]
        with torch.no_grad():
            idx = torch.stack([_dead_top(pre[i], dead[i], k_aux) for i in range(len(pre))])
            keep = dead.unsqueeze(1).expand_as(pre).gather(-1, idx).to(pre.dtype)
        if code.xin is not None:  # sparse path
            patterns = [Pattern.from_row_indices(idx[i], pre.shape[2])
                        for i in range(pre.shape[0])]
            # entries of latents that are not dead get value 0: the ReLU drops them
            values = (pre.gather(-1, idx) * keep).flatten(1)
            err, _, _ = sparse_code_error(values, code.xin, self.b_dec, self.W_enc, self.b_enc,
                                          self.W_dec, patterns, target=resid)
            num = err.sum(1)
        else:
            vals = torch.relu(pre.gather(-1, idx)) * keep
            e_hat = torch.bmm(torch.zeros_like(pre).scatter(-1, idx, vals), self.W_dec)
            num = (e_hat - resid).pow(2).sum((1, 2))
        den = resid.pow(2).sum((1, 2)).clamp_min(1e-12)
        return (num / den) * (n_dead > 0).to(pre.dtype)


def _dead_top(pre: torch.Tensor, dead: torch.Tensor, k: int) -> torch.Tensor:
    """AuxK's ``k`` latents of each row of one seed's pre-activations (B, m), in column order:
    the ``k`` largest among the ``dead`` ones; where fewer than ``k`` are dead, all of them for
    every row, padded with live latents (which the caller masks out).

    Selects among the dead columns only: a top-k over all columns with the live ones set to
    -inf sends numpy's introselect through the ties, which doubled a training step."""
    cols = torch.nonzero(dead).squeeze(1)
    b = pre.shape[0]
    if len(cols) <= k:
        pad = torch.nonzero(~dead).squeeze(1)[:k - len(cols)]
        return torch.cat([cols, pad]).sort().values.expand(b, k)
    return cols[top_indices(pre[:, cols], k)]  # cols is sorted, so rows stay in column order


@register
class TopK(TopKFamily):
    """Keep the k largest pre-activations of each token, in training and at inference."""

    name = "topk"
    saelens_name = "topk"
    infers_with_k = True

    def activation(self, pre: torch.Tensor, step: int) -> torch.Tensor:
        return topk_activation(pre, int(self.cfg.k))  # type: ignore[arg-type]

    def sparse_select(self, pre: torch.Tensor) -> tuple[list[Pattern], torch.Tensor]:
        k = int(self.cfg.k)  # type: ignore[arg-type]
        idx = top_indices(pre, k)
        patterns = [Pattern.from_row_indices(idx[i], pre.shape[2]) for i in range(pre.shape[0])]
        return patterns, pre.gather(-1, idx).flatten(1)

    @classmethod
    def infer(cls, pre: torch.Tensor, sae: SAE) -> torch.Tensor:
        return topk_activation(pre, int(sae.cfg.k))  # type: ignore[arg-type]

    @classmethod
    def infer_sparse(cls, pre: torch.Tensor, sae: SAE) -> torch.Tensor:
        """The k selected entries of each row, ReLU'd (negative ones kept as explicit zeros)."""
        k = int(sae.cfg.k)  # type: ignore[arg-type]
        idx = top_indices(pre, k)
        crow = torch.arange(0, idx.numel() + 1, k, device=pre.device)
        return csr_code(crow, idx.reshape(-1), torch.relu(pre.gather(-1, idx)).reshape(-1),
                        (pre.shape[0], pre.shape[1]))
