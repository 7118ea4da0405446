"""Train a group of SAEs that differ only in their initialisation seed.

:func:`train_group` trains S SAEs on the same activation cache in one pass of the data per
epoch: each batch is read once and fed to all S models. Each SAE's initial weights come from its
own ``torch.Generator`` seeded with its ``init_seed``; the data order is shared (a permutation
per epoch derived from ``(data_seed, epoch)``), so the group isolates the effect of the
initialisation.

Recipes (all losses are per-token sums over dimensions, averaged over the batch, on
activations scaled to unit mean squared norm, E||x||^2 = 1):

``relu``        ||x - x_hat||^2 + lambda * sum_j f_j ||d_j||  (Anthropic, April 2024 update);
                lambda warms up linearly; the decoder is not norm-constrained.
``topk``        ||x - x_hat||^2 + aux_coefficient * AuxK (Gao et al. 2024); unit-norm decoder
                rows with the gradient component parallel to each row removed before the step.
``batchtopk``   as topk with a batch-global top k*B (Bussmann et al. 2024); the inference
                threshold is an EMA of the smallest kept activation per batch.
``matryoshka``  BatchTopK with the reconstruction loss averaged over nested prefixes of the
                latents (``matryoshka_groups``) (Bussmann et al. 2025).
``jumprelu``    ||x - x_hat||^2 + lambda * L0 with rectangle-kernel pseudo-gradients for the
                log-thresholds (Rajamanoharan et al. 2024); unit-norm decoder rows.

Implementation: parameters of the S models are stacked, (S, d_in, m) etc. In "stacked" mode one
batched matmul serves all S models (the GPU path); in "loop" mode each model is its own block
and is stepped in turn. For TopK/BatchTopK on CPU a sparse path decodes through the k active
rows only (CSR matmuls) and back-propagates into the encoder through the selected
pre-activations only. The comment above :class:`TrainConfig` records the measurements behind
what "auto" picks.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from . import io
from .activations import ActivationCache
from .logs import get_logger, progress
from .sae import (
    ARCHITECTURES,
    K_ARCHITECTURES,
    SAE,
    THRESHOLD_ARCHITECTURES,
    SAEConfig,
    fold_input_scale,
    sae_from_tensors,
)

log = get_logger("training")

CHECKPOINT_FORMAT = "saestab.train-checkpoint"
DEFAULT_EPOCHS = 8.0
"""Training length when neither ``n_epochs`` nor ``n_tokens`` is given."""

# How "auto" chooses the layout on CPU (measured, not assumed). Setting: this project's 2-core
# AMD EPYC sandbox, torch 2.13 CPU, 2 threads, float32, synthetic data of the default shape
# d_in=576, m=1152, k=32, batch 512, S=6 seeds. Time of one full training step (forward,
# backward, Adam, decoder projection and renormalisation) divided by S: median over steps 4-10
# of a run, best of 2 interleaved repetitions taken while the shared box was quiet (the two
# agreed within 5%; runs while other jobs were busy were up to 10x slower and are not used).
#
#     architecture   layout   decode   ms per SAE-step   tokens/s per SAE
#     topk           stacked  dense         33.8             15.1k
#     topk           loop     dense         33.4             15.3k
#     topk           loop     sparse        19.9             25.7k    <- auto on CPU
#     topk + AuxK*   stacked  dense         32.3             15.8k
#     topk + AuxK*   loop     sparse        20.1             25.5k
#     batchtopk      stacked  dense         33.2             15.4k
#     batchtopk      loop     dense         37.6             13.6k
#     batchtopk      loop     sparse        24.1             21.2k    <- auto on CPU
#     relu           stacked  dense         30.4             16.9k    <- auto on CPU
#     relu           loop     dense         30.7             16.7k
#     jumprelu       stacked  dense         33.4             15.3k    <- auto on CPU
#     jumprelu       loop     dense         33.9             15.1k
#     matryoshka     stacked  dense         38.2             13.4k    <- auto on CPU
#     matryoshka     loop     dense         43.2             11.9k
#     (* AuxK active every step, but with few dead latents on this random data)
#
# So on CPU the sparse CSR path (a loop over seeds) for topk and batchtopk, 1.7x and 1.4x faster
# than the best dense layout. For the other architectures stacked vs loop is a tie within the
# noise except matryoshka (stacked 12% faster); "auto" takes stacked for all of them, which is
# also the CUDA code path, so CPU runs exercise it. The encoder GEMM (~4.3 ms) and the top-k
# (~2.9 ms) per SAE are a floor the sparse path cannot remove. On CUDA "auto" is always stacked
# + dense (batched GEMMs); that has not been benchmarked (no GPU was available when this was
# written).


# ------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """Hyper-parameters of one SAE training recipe (shared by all seeds of a group).

    ``None`` means "derive the default from the data / the architecture" (:meth:`resolved`):

    * ``lr``: TopK family (topk, batchtopk, matryoshka) ``2e-4 / sqrt(m / 2**14)`` (Gao et al.'s
      fit); relu and jumprelu ``5e-5 * sqrt(2**14 / m)``: Anthropic's 5e-5 at m = 2**14 with the
      same 1/sqrt(m) scaling (1.9e-4 at m = 1152).
    * ``l1_coefficient`` (relu): ``5 / sqrt(d_in)``, Anthropic's lambda = 5 (defined at
      E||x||^2 = d_in) converted to our E||x||^2 = 1 scale.
    * ``l1_warmup_steps``: 5% of the total steps (also warms up jumprelu's ``l0_coefficient``).
    * ``aux_k``: ``d_in // 2``; ``dead_steps``: steps without firing after which a latent counts
      as dead for AuxK, default ``2**17 / batch_size`` (~131k tokens).
    * ``matryoshka_groups``: m/16, m/16, m/8, m/4, m/2 (nested prefixes of the latents).
    * length: ``n_epochs`` or ``n_tokens`` (not both); neither: :data:`DEFAULT_EPOCHS` epochs.

    BatchTopK/Matryoshka inference threshold: ``theta <- (1 - r) theta + r * min kept activation``
    per step with ``r = threshold_ema_rate``; the first step sets it directly. JumpReLU's
    ``jumprelu_bandwidth``, ``jumprelu_init_threshold`` (0.001 each, in units of the normalised
    activations) and ``l0_coefficient`` (1e-3) are starting points, not tuned values.
    """

    architecture: str = "topk"
    d_sae: int = 1152
    k: int | None = 32
    lr: float | None = None
    batch_size: int = 512
    n_epochs: float | None = None  # neither given: DEFAULT_EPOCHS
    n_tokens: int | None = None
    warmup_steps: int = 100
    lr_decay_fraction: float = 0.2
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 6.25e-10
    # relu
    l1_coefficient: float | None = None
    l1_warmup_steps: int | None = None
    # TopK family: AuxK
    aux_k: int | None = None
    aux_coefficient: float = 1 / 32
    dead_steps: int | None = None
    threshold_ema_rate: float = 0.01
    # jumprelu (units of the normalised activations)
    jumprelu_bandwidth: float = 0.001
    jumprelu_init_threshold: float = 0.001
    l0_coefficient: float = 1e-3
    # matryoshka
    matryoshka_groups: list[int] | None = None
    # data and init
    b_dec_init: str = "geometric_median"
    b_dec_init_sample: int = 8192
    normalize: bool = True
    # implementation choices (same maths, different float rounding); "auto" picks by device
    parallel: str = "auto"  # "stacked" | "loop" | "auto"
    decode: str = "auto"  # "dense" | "sparse" | "auto"

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, "
                             f"got {self.architecture!r}")
        if self.architecture in K_ARCHITECTURES:
            if self.k is None or not 0 < self.k <= self.d_sae:
                raise ValueError(f"{self.architecture} needs 0 < k <= d_sae, got k={self.k}")
        if self.n_epochs is not None and self.n_tokens is not None:
            raise ValueError("give n_epochs or n_tokens, not both")
        if self.b_dec_init not in ("geometric_median", "mean", "zeros"):
            raise ValueError(f"b_dec_init must be geometric_median, mean or zeros, "
                             f"got {self.b_dec_init!r}")
        if self.parallel not in ("auto", "stacked", "loop"):
            raise ValueError(f"parallel must be auto, stacked or loop, got {self.parallel!r}")
        if self.decode not in ("auto", "dense", "sparse"):
            raise ValueError(f"decode must be auto, dense or sparse, got {self.decode!r}")
        if self.decode == "sparse" and self.architecture not in ("topk", "batchtopk"):
            raise ValueError("decode='sparse' is implemented for topk and batchtopk only")
        if self.matryoshka_groups is not None and sum(self.matryoshka_groups) != self.d_sae:
            raise ValueError(f"matryoshka_groups {self.matryoshka_groups} must sum to "
                             f"d_sae={self.d_sae}")
        if not 0 <= self.lr_decay_fraction <= 1:
            raise ValueError("lr_decay_fraction must be in [0, 1]")
        self.adam_betas = (float(self.adam_betas[0]), float(self.adam_betas[1]))

    @property
    def topk_family(self) -> bool:
        return self.architecture in K_ARCHITECTURES

    def resolved(self, d_in: int, n_rows: int, device: torch.device) -> TrainConfig:
        """A copy with every ``None``/``"auto"`` replaced by its concrete value."""
        m = self.d_sae
        c = dataclasses.replace(self)
        if c.lr is None:
            c.lr = (2e-4 / math.sqrt(m / 2**14) if self.topk_family
                    else 5e-5 * math.sqrt(2**14 / m))
        if c.l1_coefficient is None:
            c.l1_coefficient = 5.0 / math.sqrt(d_in)
        if c.aux_k is None:
            c.aux_k = d_in // 2
        c.aux_k = min(c.aux_k, m)
        if not self.topk_family:
            c.k = None  # only the TopK family uses k
        if c.dead_steps is None:
            c.dead_steps = max(1, round(2**17 / c.batch_size))
        if c.matryoshka_groups is None and c.architecture == "matryoshka":
            g = [m // 16, m // 16, m // 8, m // 4]
            c.matryoshka_groups = [x for x in g if x > 0] + [m - sum(g)]
        if c.n_tokens is None:
            c.n_tokens = int((c.n_epochs or DEFAULT_EPOCHS) * n_rows)
            c.n_epochs = None
        total = c.n_tokens // c.batch_size
        if c.l1_warmup_steps is None:
            c.l1_warmup_steps = int(0.05 * total) if c.architecture in ("relu",
                                                                        "jumprelu") else 0
        sparse_ok = c.architecture in ("topk", "batchtopk")
        if c.parallel == "auto":  # see the measurements above TrainConfig
            c.parallel = "loop" if device.type == "cpu" and sparse_ok else "stacked"
        if c.decode == "auto":
            c.decode = ("sparse" if device.type == "cpu" and c.parallel == "loop" and sparse_ok
                        else "dense")
        if c.decode == "sparse" and c.parallel != "loop":
            raise ValueError("decode='sparse' needs parallel='loop'")
        return c

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def total_steps(self, n_rows: int) -> int:
        """Training steps on a cache of ``n_rows`` rows."""
        tokens = (self.n_tokens if self.n_tokens is not None
                  else int((self.n_epochs or DEFAULT_EPOCHS) * n_rows))
        return tokens // self.batch_size


_IMPL_FIELDS = ("parallel", "decode")
"""Fields that do not change the maths; a checkpoint may be resumed with other values."""


# ------------------------------------------------------------------------------------------
# JumpReLU with straight-through pseudo-gradients for the threshold
# ------------------------------------------------------------------------------------------
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


class _JumpReLU(torch.autograd.Function):
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


class _Step(torch.autograd.Function):
    """``H(z - theta)``; d/dz = 0, d/dtheta = -(1/eps) K((z - theta)/eps)."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[None, torch.Tensor, None]:
        z, theta = ctx.saved_tensors
        eps = ctx.eps
        gt = -(1.0 / eps) * _rectangle((z - theta) / eps) * g
        return None, _reduce_to(gt, theta.shape), None


# ------------------------------------------------------------------------------------------
# sparse path (CPU): CSR matmuls through the active latents only
# ------------------------------------------------------------------------------------------
class _Pattern:
    """Positions (row, col) of the active latents of a (B, m) code, row-major, with the
    transposed (column-major) order precomputed for the backward matmuls."""

    def __init__(self, row: torch.Tensor, col: torch.Tensor, n_rows: int, n_cols: int):
        self.shape = (n_rows, n_cols)
        self.col = col
        self.crow = torch.zeros(n_rows + 1, dtype=torch.int64, device=col.device)
        self.crow[1:] = torch.bincount(row, minlength=n_rows).cumsum(0)
        self.order = torch.argsort(col, stable=True)
        self.crow_t = torch.zeros(n_cols + 1, dtype=torch.int64, device=col.device)
        self.crow_t[1:] = torch.bincount(col, minlength=n_cols).cumsum(0)
        self.col_t = row[self.order]

    @classmethod
    def from_row_indices(cls, idx: torch.Tensor, n_cols: int) -> _Pattern:
        """From (B, k) column indices sorted within each row."""
        b, k = idx.shape
        row = torch.arange(b, device=idx.device).repeat_interleave(k)
        return cls(row, idx.reshape(-1), b, n_cols)

    def csr(self, values: torch.Tensor) -> torch.Tensor:
        return torch.sparse_csr_tensor(self.crow, self.col, values, self.shape)

    def csr_t(self, values: torch.Tensor) -> torch.Tensor:
        return torch.sparse_csr_tensor(self.crow_t, self.col_t, values[self.order],
                                       (self.shape[1], self.shape[0]))


class _SparsePre(torch.autograd.Function):
    """Pre-activations at the active positions, ``(xin @ W_enc + b_enc)[row, col]``.

    The values are computed outside (they were needed to choose the positions); this function
    supplies the sparse backward into ``xin``, ``W_enc`` (d, m) and ``b_enc``.
    """

    @staticmethod
    def forward(ctx: Any, xin: torch.Tensor, w_enc: torch.Tensor, b_enc: torch.Tensor,
                values: torch.Tensor, pattern: _Pattern) -> torch.Tensor:
        ctx.save_for_backward(xin, w_enc)
        ctx.pattern = pattern
        return values.clone()

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        xin, w_enc = ctx.saved_tensors
        p: _Pattern = ctx.pattern
        g_xin = p.csr(g) @ w_enc.T.contiguous() if ctx.needs_input_grad[0] else None
        g_w = (p.csr_t(g) @ xin).T.contiguous() if ctx.needs_input_grad[1] else None
        g_b = (torch.zeros(p.shape[1], dtype=g.dtype, device=g.device).index_add_(0, p.col, g)
               if ctx.needs_input_grad[2] else None)
        return g_xin, g_w, g_b, None, None


class _SparseDecode(torch.autograd.Function):
    """``f @ W_dec`` for a code with values ``vals`` at ``pattern``'s positions."""

    @staticmethod
    def forward(ctx: Any, vals: torch.Tensor, w_dec: torch.Tensor,
                pattern: _Pattern) -> torch.Tensor:
        ctx.save_for_backward(vals, w_dec)
        ctx.pattern = pattern
        return pattern.csr(vals) @ w_dec

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        vals, w_dec = ctx.saved_tensors
        p: _Pattern = ctx.pattern
        g_vals = (torch.sparse.sampled_addmm(p.csr(vals), g, w_dec.T, beta=0.0).values()
                  if ctx.needs_input_grad[0] else None)
        g_w = p.csr_t(vals) @ g if ctx.needs_input_grad[1] else None
        return g_vals, g_w, None


# ------------------------------------------------------------------------------------------
# the group of models
# ------------------------------------------------------------------------------------------
PARAM_NAMES = ("W_enc", "W_dec", "b_enc", "b_dec", "log_threshold")


@dataclass
class _StepOut:
    loss: torch.Tensor  # scalar, sum over the block's seeds
    sse: torch.Tensor  # (S_b,) summed squared error over the batch
    l0: torch.Tensor  # (S_b,) mean number of active latents per token
    aux: torch.Tensor  # (S_b,) auxiliary loss (AuxK, L1 or L0 term)
    fired: torch.Tensor  # (S_b, m) bool: latent fired in this batch
    min_pos: torch.Tensor | None  # (S_b,) smallest positive kept activation (batchtopk)


def _init_params(cfg: TrainConfig, d_in: int, seed: int, b_dec: torch.Tensor,
                 device: torch.device) -> dict[str, torch.Tensor]:
    """One model's initial parameters from its own generator (created on CPU, then moved)."""
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    w_dec = torch.randn(cfg.d_sae, d_in, generator=g, dtype=torch.float32)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    p = {
        "W_enc": w_dec.T.clone(),
        "W_dec": w_dec,
        "b_enc": torch.zeros(cfg.d_sae),
        "b_dec": b_dec.float().cpu().clone(),
    }
    if cfg.architecture == "jumprelu":
        p["log_threshold"] = torch.full((cfg.d_sae,), math.log(cfg.jumprelu_init_threshold))
    return {n: t.to(device) for n, t in p.items()}


def params_from_sae_tensors(cfg: TrainConfig, tensors: dict[str, torch.Tensor], scale: float,
                           device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The trainer's parameters (normalised units) of an SAE given by its tensors (raw units).

    The inverse of the export (:func:`saestab.sae.fold_input_scale`): ``b_enc``, ``b_dec`` (and
    the threshold, as jumprelu's ``log_threshold``) are multiplied by ``scale``; ``W_enc`` and
    ``W_dec`` are unchanged. Architectures with a unit-norm decoder need unit rows (within 1e-3).
    BatchTopK/Matryoshka keep a single training threshold, re-estimated from the first batch,
    so their per-feature ``threshold`` is not needed here.
    """
    d_in, m = tensors["W_enc"].shape
    want = {"W_enc": (d_in, cfg.d_sae), "W_dec": (cfg.d_sae, d_in), "b_enc": (cfg.d_sae,),
            "b_dec": (d_in,)}
    if cfg.architecture == "jumprelu":
        want["threshold"] = (cfg.d_sae,)
    for name, shape in want.items():
        if name not in tensors or tuple(tensors[name].shape) != shape:
            got = tuple(tensors[name].shape) if name in tensors else None
            raise ValueError(f"initial tensor {name!r} has shape {got}, expected {shape}")
    t = {n: tensors[n].detach().float().cpu().clone() for n in want}
    if cfg.architecture != "relu":
        norms = t["W_dec"].norm(dim=1)
        if (norms - 1).abs().max() > 1e-3:
            raise ValueError(f"{cfg.architecture} trains with unit-norm decoder rows; the given "
                             f"W_dec has row norms in [{float(norms.min()):.4g}, "
                             f"{float(norms.max()):.4g}]")
        t["W_dec"] /= norms[:, None]
    p = {"W_enc": t["W_enc"], "W_dec": t["W_dec"], "b_enc": t["b_enc"] * scale,
         "b_dec": t["b_dec"] * scale}
    if cfg.architecture == "jumprelu":
        p["log_threshold"] = (t["threshold"] * scale).clamp_min(1e-12).log()
    return {n: v.contiguous().to(device) for n, v in p.items()}


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


class _Group:
    """S models' parameters and Adam state as blocks of stacked tensors.

    ``parallel == "stacked"``: one block with leading dimension S; ``"loop"``: S blocks of 1.
    """

    def __init__(self, cfg: TrainConfig, params: list[dict[str, torch.Tensor]]):
        self.cfg = cfg
        self.n = len(params)
        names = [n for n in PARAM_NAMES if n in params[0]]
        sizes = [self.n] if cfg.parallel == "stacked" else [1] * self.n
        self.blocks: list[dict[str, torch.Tensor]] = []
        i = 0
        for s in sizes:
            self.blocks.append({n: torch.stack([params[j][n] for j in range(i, i + s)])
                                .contiguous().requires_grad_(True) for n in names})
            i += s
        self.adam_m = [{n: torch.zeros_like(t) for n, t in b.items()} for b in self.blocks]
        self.adam_v = [{n: torch.zeros_like(t) for n, t in b.items()} for b in self.blocks]
        dev = params[0]["W_dec"].device
        self.since_fired = torch.zeros(self.n, cfg.d_sae, dtype=torch.int64, device=dev)
        self.threshold = torch.zeros(self.n, dtype=torch.float64, device=dev)
        self.names = names

    # -- state I/O (always as full (S, ...) tensors, independent of the block layout) ---------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for n in self.names:
            out[n] = torch.cat([b[n].detach() for b in self.blocks])
            out[f"adam_m.{n}"] = torch.cat([b[n] for b in self.adam_m])
            out[f"adam_v.{n}"] = torch.cat([b[n] for b in self.adam_v])
        out["since_fired"] = self.since_fired
        out["threshold"] = self.threshold
        return {k: v.detach().cpu().contiguous() for k, v in out.items()}

    @torch.no_grad()
    def load_state_tensors(self, t: dict[str, torch.Tensor], where: Path) -> None:
        expected = self.state_tensors()
        for key, ref in expected.items():
            if key not in t or tuple(t[key].shape) != tuple(ref.shape):
                raise io.InputError(f"{where}: checkpoint tensor {key!r} missing or of shape "
                                    f"{None if key not in t else tuple(t[key].shape)}, expected "
                                    f"{tuple(ref.shape)}")
        i = 0
        for bi, b in enumerate(self.blocks):
            s = b[self.names[0]].shape[0]
            for n in self.names:
                b[n].copy_(t[n][i:i + s])
                self.adam_m[bi][n].copy_(t[f"adam_m.{n}"][i:i + s])
                self.adam_v[bi][n].copy_(t[f"adam_v.{n}"][i:i + s])
            i += s
        self.since_fired.copy_(t["since_fired"])
        self.threshold.copy_(t["threshold"])

    def model_tensors(self, i: int) -> dict[str, torch.Tensor]:
        """Model ``i``'s parameters (detached views)."""
        j = i
        for b in self.blocks:
            s = b[self.names[0]].shape[0]
            if j < s:
                return {n: b[n][j].detach() for n in self.names}
            j -= s
        raise IndexError(i)


def _dense_block_step(cfg: TrainConfig, p: dict[str, torch.Tensor], x: torch.Tensor,
                      dead: torch.Tensor | None, sparsity_coef: float) -> _StepOut:
    """Losses of one block of S_b models on batch ``x`` (B, d) with batched dense matmuls."""
    arch = cfg.architecture
    xin = x.unsqueeze(0) - p["b_dec"].unsqueeze(1)  # (S,B,d)
    pre = torch.baddbmm(p["b_enc"].unsqueeze(1), xin, p["W_enc"])  # (S,B,m)
    s_b, b, m = pre.shape
    min_pos = None
    aux = pre.new_zeros(s_b)
    if arch == "relu":
        f = torch.relu(pre)
    elif arch == "topk":
        f = _topk_dense(pre, int(cfg.k))  # type: ignore[arg-type]
    elif arch in ("batchtopk", "matryoshka"):
        f = _batch_topk_dense(pre, cfg.k)  # type: ignore[arg-type]
    else:  # jumprelu
        theta = p["log_threshold"].exp().unsqueeze(1)  # (S,1,m)
        f = _JumpReLU.apply(pre, theta, cfg.jumprelu_bandwidth)
        l0 = _Step.apply(pre, theta, cfg.jumprelu_bandwidth).sum(-1).mean(-1)  # (S,)
        aux = sparsity_coef * l0
    if arch == "matryoshka":
        xh, per_prefix = _matryoshka_decode(f, p, x, cfg.matryoshka_groups)  # type: ignore[arg-type]
        err = (xh - x).pow(2).sum(-1)
        main = per_prefix
    else:
        xh = torch.baddbmm(p["b_dec"].unsqueeze(1), f, p["W_dec"])
        err = (xh - x).pow(2).sum(-1)  # (S,B)
        main = err.mean(-1)
    if arch == "relu":
        dec_norm = p["W_dec"].norm(dim=-1)  # (S,m)
        aux = sparsity_coef * (f * dec_norm.unsqueeze(1)).sum(-1).mean(-1)
    if cfg.topk_family and dead is not None:
        aux = cfg.aux_coefficient * _auxk_dense(cfg, p, pre, x - xh.detach(), dead)
    fired_mask = f > 0
    if arch in ("batchtopk", "matryoshka"):
        with torch.no_grad():
            min_pos = torch.where(fired_mask, f, torch.inf).flatten(1).amin(1).double()
    loss = (main + aux).sum()
    return _StepOut(loss=loss, sse=err.detach().sum(-1), aux=aux.detach(),
                    l0=fired_mask.sum((1, 2)).to(x.dtype) / b, fired=fired_mask.any(1),
                    min_pos=min_pos)


def _topk_dense(pre: torch.Tensor, k: int) -> torch.Tensor:
    vals, idx = pre.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))


def _batch_topk_dense(pre: torch.Tensor, k: float) -> torch.Tensor:
    s_b, b, m = pre.shape
    n_keep = min(max(int(round(k * b)), 1), b * m)
    flat = pre.reshape(s_b, b * m)
    vals, idx = flat.topk(n_keep, dim=-1, sorted=False)
    return torch.zeros_like(flat).scatter(-1, idx, torch.relu(vals)).reshape(pre.shape)


def _matryoshka_decode(f: torch.Tensor, p: dict[str, torch.Tensor], x: torch.Tensor,
                       groups: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Full reconstruction and the mean over nested prefixes of their squared errors (S,)."""
    recon = p["b_dec"].unsqueeze(1).expand(-1, x.shape[0], -1)
    total = f.new_zeros(f.shape[0])
    start = 0
    for size in groups:
        stop = start + size
        recon = recon + torch.bmm(f[..., start:stop], p["W_dec"][:, start:stop])
        total = total + (recon - x).pow(2).sum(-1).mean(-1)
        start = stop
    return recon, total / len(groups)


def _auxk_dense(cfg: TrainConfig, p: dict[str, torch.Tensor], pre: torch.Tensor,
                resid: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
    """AuxK: the top ``aux_k`` dead latents reconstruct the residual; normalised MSE (S,)."""
    n_dead = dead.sum(1)  # (S,)
    k_aux = int(min(cfg.aux_k, int(n_dead.max())))  # type: ignore[call-overload]
    if k_aux == 0:
        return pre.new_zeros(pre.shape[0])
    with torch.no_grad():
        masked = torch.where(dead.unsqueeze(1), pre, -torch.inf)
        idx = masked.topk(k_aux, dim=-1, sorted=False).indices
        keep = dead.unsqueeze(1).expand_as(pre).gather(-1, idx).to(pre.dtype)
    vals = torch.relu(pre.gather(-1, idx)) * keep
    f_aux = torch.zeros_like(pre).scatter(-1, idx, vals)
    e_hat = torch.bmm(f_aux, p["W_dec"])
    num = (e_hat - resid).pow(2).sum((1, 2))
    den = resid.pow(2).sum((1, 2)).clamp_min(1e-12)
    return (num / den) * (n_dead > 0).to(pre.dtype)


def _sparse_block_step(cfg: TrainConfig, p: dict[str, torch.Tensor], x: torch.Tensor,
                       dead: torch.Tensor | None) -> _StepOut:
    """Losses of a single model (block of 1) with the sparse CSR path (topk, batchtopk)."""
    w_enc, w_dec = p["W_enc"].squeeze(0), p["W_dec"].squeeze(0)
    b_enc, b_dec = p["b_enc"].squeeze(0), p["b_dec"].squeeze(0)
    b, m = x.shape[0], w_enc.shape[1]
    xin = x - b_dec
    with torch.no_grad():
        pre = torch.addmm(b_enc, xin, w_enc)  # (B,m)
        if cfg.architecture == "topk":
            idx = pre.topk(int(cfg.k), dim=-1, sorted=False).indices  # type: ignore[arg-type]
            idx = idx.sort(dim=-1).values
            pattern = _Pattern.from_row_indices(idx, m)
            values = pre.gather(1, idx).reshape(-1)
        else:  # batchtopk
            n_keep = min(max(int(round(cfg.k * b)), 1), b * m)  # type: ignore[operator]
            flat_idx = pre.reshape(-1).topk(n_keep, sorted=False).indices.sort().values
            row, col = flat_idx // m, flat_idx % m
            pattern = _Pattern(row, col, b, m)
            values = pre.reshape(-1)[flat_idx]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        vals = torch.relu(_SparsePre.apply(xin, w_enc, b_enc, values, pattern))
        xh = _SparseDecode.apply(vals, w_dec, pattern) + b_dec
        err = (xh - x).pow(2).sum(-1)
        main = err.mean()
        aux = x.new_zeros(())
        if dead is not None and bool(dead.any()):
            aux = cfg.aux_coefficient * _auxk_sparse(cfg, xin, w_enc, b_enc, w_dec, pre,
                                                     (x - xh).detach(), dead[0])
    fired = torch.zeros(m, dtype=torch.bool, device=x.device)
    pos = vals.detach() > 0
    fired[pattern.col[pos]] = True
    min_pos = None
    if cfg.architecture == "batchtopk":
        v = vals.detach()[pos]
        min_pos = (v.min() if v.numel() else x.new_tensor(torch.inf)).double().reshape(1)
    return _StepOut(loss=main + aux, sse=err.detach().sum().reshape(1), aux=aux.detach()
                    .reshape(1), l0=pos.sum().to(x.dtype).reshape(1) / b,
                    fired=fired.unsqueeze(0), min_pos=min_pos)


def _auxk_sparse(cfg: TrainConfig, xin: torch.Tensor, w_enc: torch.Tensor, b_enc: torch.Tensor,
                 w_dec: torch.Tensor, pre: torch.Tensor, resid: torch.Tensor,
                 dead: torch.Tensor) -> torch.Tensor:
    k_aux = int(min(cfg.aux_k, int(dead.sum())))  # type: ignore[call-overload]
    with torch.no_grad():
        masked = torch.where(dead, pre, -torch.inf)
        idx = masked.topk(k_aux, dim=-1, sorted=False).indices.sort(dim=-1).values
        pattern = _Pattern.from_row_indices(idx, pre.shape[1])
        values = pre.gather(1, idx).reshape(-1)
    vals = torch.relu(_SparsePre.apply(xin, w_enc, b_enc, values, pattern))
    e_hat = _SparseDecode.apply(vals, w_dec, pattern)
    return (e_hat - resid).pow(2).sum() / resid.pow(2).sum().clamp_min(1e-12)


# ------------------------------------------------------------------------------------------
# optimiser and schedules
# ------------------------------------------------------------------------------------------
def lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    """Linear warm-up over ``warmup_steps``, constant, linear decay to 0 over the last
    ``lr_decay_fraction`` of the steps. ``step`` counts from 0."""
    lr = float(cfg.lr)  # type: ignore[arg-type]
    if cfg.warmup_steps > 0:
        lr *= min(1.0, (step + 1) / cfg.warmup_steps)
    decay_steps = int(round(cfg.lr_decay_fraction * total))
    if decay_steps > 0 and step >= total - decay_steps:
        lr *= (total - step) / decay_steps
    return lr


def sparsity_coefficient_at(cfg: TrainConfig, step: int) -> float:
    """relu's L1 / jumprelu's L0 coefficient with its linear warm-up."""
    coef = cfg.l1_coefficient if cfg.architecture == "relu" else cfg.l0_coefficient
    warm = cfg.l1_warmup_steps or 0
    return float(coef) * (min(1.0, (step + 1) / warm) if warm > 0 else 1.0)  # type: ignore


@torch.no_grad()
def _adam_step(p: torch.Tensor, m: torch.Tensor, v: torch.Tensor, step: int, lr: float,
               betas: tuple[float, float], eps: float) -> None:
    """One Adam update (elementwise, so stacked models stay independent). ``step`` from 1."""
    g = p.grad
    if g is None:
        return
    b1, b2 = betas
    m.mul_(b1).add_(g, alpha=1 - b1)
    v.mul_(b2).addcmul_(g, g, value=1 - b2)
    denom = (v / (1 - b2**step)).sqrt_().add_(eps)
    p.addcdiv_(m, denom, value=-lr / (1 - b1**step))


@torch.no_grad()
def _project_decoder_grad(w_dec: torch.Tensor) -> None:
    """Remove each decoder row's gradient component parallel to the (unit) row."""
    if w_dec.grad is not None:
        w_dec.grad -= (w_dec.grad * w_dec).sum(-1, keepdim=True) * w_dec


@torch.no_grad()
def _renormalise_decoder(w_dec: torch.Tensor) -> None:
    w_dec /= w_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12)


# ------------------------------------------------------------------------------------------
# data, checkpoints, export
# ------------------------------------------------------------------------------------------
def epoch_order(data_seed: int, epoch: int, n: int) -> np.ndarray:
    """The row permutation of ``epoch`` (a function of ``(data_seed, epoch)`` only)."""
    return np.random.default_rng([int(data_seed), int(epoch)]).permutation(n)


def _fingerprint(cfg: TrainConfig, init_seeds: Sequence[int], data_seed: int,
                 cache: ActivationCache,
                 init: Sequence[dict[str, torch.Tensor]] | None = None) -> dict[str, Any]:
    c = {k: v for k, v in cfg.to_json().items() if k not in _IMPL_FIELDS}
    fp = {"cfg": c, "init_seeds": [int(s) for s in init_seeds], "data_seed": int(data_seed),
          "n_tokens_cache": cache.n_tokens, "d_in": cache.d,
          "mean_sq_norm": cache.stats.mean_sq_norm}
    if init is not None:  # a checkpoint belongs to these initial tensors only
        fp["init_sha256"] = [io.sha256_bytes(b"".join(
            t[n].detach().float().cpu().contiguous().numpy().tobytes() for n in sorted(t)))
            for t in init]
    return fp


def _write_checkpoint(ckpt_dir: Path, group: _Group, step: int, fp: dict[str, Any]) -> None:
    with io.atomic_path(ckpt_dir / "checkpoint") as tmp:
        tmp.mkdir()
        save_file(group.state_tensors(), str(tmp / "state.safetensors"))
        (tmp / "state.json").write_text(json.dumps(
            {"format": CHECKPOINT_FORMAT, "step": step, "fingerprint": fp}, indent=1) + "\n")


def _read_checkpoint(ckpt_dir: Path, fp: dict[str, Any]) -> tuple[int, dict[str, torch.Tensor]]:
    where = ckpt_dir / "checkpoint"
    meta = io.read_json(where / "state.json", what="training checkpoint state")
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise io.InputError(f"{where / 'state.json'}: not a training checkpoint")
    if json.loads(json.dumps(meta.get("fingerprint"))) != json.loads(json.dumps(fp)):
        raise io.InputError(f"{where}: checkpoint was written for a different recipe, seeds or "
                            "cache; delete it to start over")
    try:
        tensors = load_file(str(where / "state.safetensors"))
    except Exception as err:  # noqa: BLE001 (safetensors raises several types)
        raise io.InputError(f"{where / 'state.safetensors'}: unreadable checkpoint ({err})") \
            from err
    return int(meta["step"]), tensors


def _export(group: _Group, i: int, cfg: TrainConfig, scale: float, cache: ActivationCache,
            init_seed: int, data_seed: int, step: int, init_given: bool = False) -> SAE:
    """Model ``i`` as an :class:`SAE` on raw activations (normalisation folded in)."""
    t = {n: v.float().cpu() for n, v in group.model_tensors(i).items()}
    tensors = {n: t[n] for n in ("W_enc", "W_dec", "b_enc", "b_dec")}
    if cfg.architecture == "jumprelu":
        tensors["threshold"] = t["log_threshold"].exp()
    elif cfg.architecture in THRESHOLD_ARCHITECTURES:
        tensors["threshold"] = torch.full((cfg.d_sae,), float(group.threshold[i]))
    tensors = fold_input_scale(tensors, scale)
    recipe = cfg.to_json()
    recipe.update({"steps": step, "tokens_seen": step * cfg.batch_size,
                   "epochs_seen": step * cfg.batch_size / cache.n_tokens,
                   "normalization_scale": scale, "cache": str(cache.path),
                   "cache_n_tokens": cache.n_tokens})
    sae_cfg = SAEConfig(architecture=cfg.architecture, d_in=cache.d, d_sae=cfg.d_sae,
                        k=cfg.k if cfg.topk_family else None,
                        model_name=str(cache.header.get("model") or ""),
                        hook_name=str(cache.header.get("hook") or ""),
                        recipe=recipe, seeds={"init_seed": int(init_seed),
                                              "data_seed": int(data_seed)})
    if init_given:  # continued from given tensors: the seed is only a label
        sae_cfg.seeds["init"] = "given"
    return sae_from_tensors(sae_cfg, tensors)


# ------------------------------------------------------------------------------------------
# the trainer
# ------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """What :func:`train_group` returns."""

    saes: list[SAE]
    history: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    resumed_from: int = 0
    seconds: float = 0.0
    tokens_per_second_per_sae: float = 0.0


def _default_snapshot_path(out_dir: Path, epoch: int) -> Path:
    return out_dir.parent / "snapshots" / f"epoch{epoch}" / out_dir.name


def train_group(
    cache: ActivationCache | str | Path,
    cfg: TrainConfig,
    init_seeds: Sequence[int],
    data_seed: int,
    out_dirs: Sequence[str | Path] | None = None,
    device: str | torch.device = "cpu",
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 500,
    snapshots_at_epochs: Sequence[int] = (1, 2, 4, 8),
    snapshot_path: Callable[[int, int], str | Path] | None = None,
    log_every: int = 100,
    callback: Callable[[int], None] | None = None,
    keep_checkpoint: bool = False,
    init: Sequence[dict[str, torch.Tensor]] | None = None,
) -> TrainResult:
    """Train one SAE per init seed on ``cache``, sharing the data order; save and return them.

    Parameters
    ----------
    init_seeds:
        One per SAE, all different (seeds never share an initialisation).
    data_seed:
        The data order of epoch ``e`` is :func:`epoch_order` ``(data_seed, e, n)``.
    out_dirs:
        Where to save the final SAEs (one per seed); None: do not save.
    checkpoint_dir:
        Checkpoints (``checkpoint/state.safetensors`` + ``state.json``) go here every
        ``checkpoint_every`` steps; an existing one is resumed (bit-identical on CPU). Removed
        after success unless ``keep_checkpoint``.
    snapshots_at_epochs:
        After these many epochs save every SAE to ``snapshot_path(seed_index, epoch)``
        (default ``<out_dir>/../snapshots/epoch<e>/<out_dir name>``); needs ``out_dirs`` or
        ``snapshot_path``.
    callback:
        Called with the number of completed steps after each step (after checkpointing).
    init:
        Start from these SAEs instead of a seeded initialisation (continued training, e.g. of
        a pooled SAE): one dict of tensors per seed in :meth:`SAE.state_tensors` form, raw
        activation units (see :func:`params_from_sae_tensors`). ``init_seeds`` then only label
        the models; ``b_dec_init`` is not used. Adam state starts at zero and the schedule
        (warm-up, decay) is the recipe's, over ``cfg``'s length.
    """
    cache = cache if isinstance(cache, ActivationCache) else ActivationCache.open(cache)
    device = torch.device(device)
    init_seeds = [int(s) for s in init_seeds]
    if len(set(init_seeds)) != len(init_seeds):
        raise ValueError(f"init seeds must all differ (seeds never share an initialisation), "
                         f"got {init_seeds}")
    if not init_seeds:
        raise ValueError("need at least one init seed")
    if out_dirs is not None and len(out_dirs) != len(init_seeds):
        raise ValueError(f"{len(out_dirs)} out_dirs for {len(init_seeds)} seeds")
    if init is not None and len(init) != len(init_seeds):
        raise ValueError(f"{len(init)} initial SAEs for {len(init_seeds)} seeds")
    n_rows, d_in = cache.n_tokens, cache.d
    if n_rows < cfg.batch_size:
        raise io.InputError(f"{cache.path}: {n_rows} rows, fewer than one batch "
                            f"({cfg.batch_size})")
    cfg = cfg.resolved(d_in, n_rows, device)
    total = cfg.total_steps(n_rows)
    if total <= 0:
        raise ValueError(f"{cfg.n_tokens} training tokens make no full batch of {cfg.batch_size}")
    spe = n_rows // cfg.batch_size  # steps per epoch (the last partial batch is dropped)
    s_count = len(init_seeds)

    # data: once into RAM (or GPU memory) as float32, scaled to unit mean squared norm
    scale = 1.0 / math.sqrt(cache.stats.mean_sq_norm) if cfg.normalize else 1.0
    t0 = time.perf_counter()
    data = torch.from_numpy(cache.load(dtype=np.float32))
    if scale != 1.0:
        data.mul_(scale)
    data = data.to(device)
    log.info("loaded %d x %d activations in %.1f s (scale %.4g); %d steps (%d per epoch), "
             "%d seeds, %s", n_rows, d_in, time.perf_counter() - t0, scale, total, spe,
             s_count, cfg.architecture)

    # initialisation (b_dec is data-derived and shared; everything else per seed)
    if init is not None:
        params = [params_from_sae_tensors(cfg, t, scale, device) for t in init]
        w_dec_init = [p["W_dec"].cpu().clone() for p in params]
    else:
        if cfg.b_dec_init == "zeros":
            b_dec = torch.zeros(d_in)
        else:
            sample_idx = torch.linspace(0, n_rows - 1, min(n_rows, cfg.b_dec_init_sample)).long()
            sample = data[sample_idx.to(device)].cpu()
            b_dec = geometric_median(sample) if cfg.b_dec_init == "geometric_median" else \
                sample.double().mean(0).float()
        params = [_init_params(cfg, d_in, s, b_dec, device) for s in init_seeds]
        w_dec_init = None
    group = _Group(cfg, params)

    fp = _fingerprint(cfg, init_seeds, data_seed, cache, init)
    start = 0
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt is not None and (ckpt / "checkpoint" / "state.json").is_file():
        start, tensors = _read_checkpoint(ckpt, fp)
        group.load_state_tensors(tensors, ckpt / "checkpoint")
        log.info("resuming from checkpoint at step %d/%d", start, total)

    def snap_dir(i: int, e: int) -> Path:
        if snapshot_path is not None:
            return Path(snapshot_path(i, e))
        assert out_dirs is not None
        return _default_snapshot_path(Path(out_dirs[i]), e)

    snap_epochs = {int(e) for e in snapshots_at_epochs
                   if e >= 1 and e * spe <= total} if (out_dirs or snapshot_path) else set()

    history: list[dict[str, Any]] = []
    acc = _Accumulator(s_count, device)
    order_t = torch.empty(0, dtype=torch.int64)
    order_epoch = -1
    t_start = time.perf_counter()
    betas = cfg.adam_betas
    for step in progress(range(start, total), total=total - start,
                         desc=f"train {cfg.architecture} x{s_count}", unit="step"):
        epoch, pos = divmod(step, spe)
        if epoch != order_epoch:
            order_t = torch.from_numpy(epoch_order(data_seed, epoch, n_rows)).to(device)
            order_epoch = epoch
        x = data[order_t[pos * cfg.batch_size:(pos + 1) * cfg.batch_size]]
        lr = lr_at(cfg, step, total)
        coef = sparsity_coefficient_at(cfg, step)
        dead_all = (group.since_fired >= cfg.dead_steps) if (
            cfg.topk_family and step >= cfg.dead_steps) else None  # type: ignore[operator]
        outs: list[_StepOut] = []
        i0 = 0
        for bi, p in enumerate(group.blocks):
            s_b = p["W_dec"].shape[0]
            dead = None if dead_all is None else dead_all[i0:i0 + s_b]
            if cfg.decode == "sparse":
                out = _sparse_block_step(cfg, p, x, dead)
            else:
                out = _dense_block_step(cfg, p, x, dead, coef)
            for t in p.values():
                t.grad = None
            out.loss.backward()
            if cfg.architecture != "relu":
                _project_decoder_grad(p["W_dec"])
            for n, t in p.items():
                _adam_step(t, group.adam_m[bi][n], group.adam_v[bi][n], step + 1, lr, betas,
                           cfg.adam_eps)
            if cfg.architecture != "relu":
                _renormalise_decoder(p["W_dec"])
            outs.append(out)
            i0 += s_b
        with torch.no_grad():
            fired = torch.cat([o.fired for o in outs])
            group.since_fired = torch.where(fired, 0, group.since_fired + 1)
            if cfg.architecture in ("batchtopk", "matryoshka"):
                mp = torch.cat([o.min_pos for o in outs])  # type: ignore[misc]
                ok = torch.isfinite(mp)
                rate = 1.0 if step == 0 else cfg.threshold_ema_rate
                group.threshold = torch.where(ok, (1 - rate) * group.threshold + rate * mp,
                                              group.threshold)
            acc.add(outs, x)
        done = step + 1
        if done % log_every == 0 or done == total:
            rec = acc.summary(done, lr, group, cfg)
            history.append(rec)
            log.info("step %d/%d  loss %.4g  EV %.4f  L0 %.1f  dead %.3f  lr %.2e", done, total,
                     rec["loss"], rec["ev"], rec["l0"], rec["dead_fraction"], lr)
        if done % spe == 0 and done // spe in snap_epochs:
            e = done // spe
            for i, seed in enumerate(init_seeds):
                _export(group, i, cfg, scale, cache, seed, data_seed, done,
                        init is not None).save(snap_dir(i, e))
            log.info("saved epoch-%d snapshots", e)
        if ckpt is not None and checkpoint_every > 0 and done % checkpoint_every == 0 \
                and done < total:
            _write_checkpoint(ckpt, group, done, fp)
        if callback is not None:
            callback(done)
    seconds = time.perf_counter() - t_start
    steps_run = total - start
    tps = steps_run * cfg.batch_size / seconds if seconds > 0 else 0.0
    saes = [_export(group, i, cfg, scale, cache, s, data_seed, total, init is not None)
            for i, s in enumerate(init_seeds)]
    # How far each decoder moved from its seed-specific initialisation (an under-trained SAE
    # stays close to it, and its features then match nothing in another seed).
    init_cos = [decoder_init_cosine(sae, w_dec_init[i] if w_dec_init is not None
                                    else _init_params(cfg, d_in, s, b_dec, "cpu")["W_dec"])
                for i, (sae, s) in enumerate(zip(saes, init_seeds, strict=True))]
    if out_dirs is not None:
        for sae, out, ic in zip(saes, out_dirs, init_cos, strict=True):
            sae.save(out)
            io.write_json(Path(out) / "training.json",
                          {"history": history, "steps": total, "resumed_from": start,
                           "seconds": seconds, "tokens_per_second_per_sae": tps,
                           "decoder_init_cosine_median": ic, "recipe": cfg.to_json()})
    if ckpt is not None and not keep_checkpoint:
        shutil.rmtree(ckpt / "checkpoint", ignore_errors=True)
    log.info("trained %d SAEs for %d steps in %.1f s (%.0f tokens/s per SAE)", s_count,
             steps_run, seconds, tps)
    return TrainResult(saes=saes, history=history, steps=total, resumed_from=start,
                       seconds=seconds, tokens_per_second_per_sae=tps)


def decoder_init_cosine(sae: SAE, w_dec_init: torch.Tensor) -> float:
    """Median over latents of the cosine between a decoder row and its initial value."""
    a = sae.decoder_directions().cpu()
    b = w_dec_init.detach().float().cpu()
    b = b / b.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return float((a * b).sum(1).median())


class _Accumulator:
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
    def add(self, outs: list[_StepOut], x: torch.Tensor) -> None:
        self.sse += torch.cat([o.sse for o in outs]).double()
        self.aux += torch.cat([o.aux for o in outs]).double()
        self.l0 += torch.cat([o.l0 for o in outs]).double()
        self.var += (x - x.mean(0)).double().pow(2).sum()
        self.n_batches += 1
        self.n_tokens += x.shape[0]

    def summary(self, step: int, lr: float, group: _Group, cfg: TrainConfig) -> dict[str, Any]:
        nb = max(self.n_batches, 1)
        mse = (self.sse / max(self.n_tokens, 1)).cpu().numpy()
        ev = (1 - self.sse / self.var.clamp_min(1e-30)).cpu().numpy()
        aux = (self.aux / nb).cpu().numpy()
        l0 = (self.l0 / nb).cpu().numpy()
        dead = (group.since_fired >= cfg.dead_steps).double().mean(1).cpu().numpy()  # type: ignore
        rec = {"step": step, "lr": lr, "loss": float(np.mean(mse + aux)), "mse": float(mse.mean()),
               "ev": float(ev.mean()), "l0": float(l0.mean()), "aux": float(aux.mean()),
               "dead_fraction": float(dead.mean()),
               "per_seed": {"mse": mse.tolist(), "ev": ev.tolist(), "l0": l0.tolist(),
                            "aux": aux.tolist(), "dead_fraction": dead.tolist()}}
        if cfg.architecture in ("batchtopk", "matryoshka"):
            rec["per_seed"]["threshold"] = group.threshold.cpu().tolist()
        self.reset()
        return rec
