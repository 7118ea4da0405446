"""One saved sparse autoencoder: its description (:class:`SAEConfig`) and inference model.

The model is ``f(x) = act(W_enc^T (x - b_dec) + b_enc)``, ``x_hat = W_dec^T f(x) + b_dec`` with
``W_enc`` stored as (d_in, d_sae) and ``W_dec`` as (d_sae, d_in) (the SAELens convention: row
``j`` of ``W_dec`` is feature ``j``'s decoder direction). The inference rule ``act`` and whether
a ``threshold`` is stored come from the architecture's class (:mod:`.architecture`), the same
class that trains it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .architecture import get_architecture

FORMAT = "saestab.sae"
VERSION = 1

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``."""
    for name, dt in DTYPES.items():
        if dt == dtype:
            return name
    raise ValueError(f"unsupported dtype {dtype}")


@dataclass
class SAEConfig:
    """What an SAE is: shape, architecture, provenance. ``recipe`` and ``seeds`` are free-form
    records (training hyper-parameters, init/data seeds) that travel in ``cfg.json``."""

    architecture: str
    d_in: int
    d_sae: int
    k: int | float | None = None
    model_name: str = ""
    hook_name: str = ""
    dtype: str = "float32"
    apply_b_dec_to_input: bool = True
    recipe: dict[str, Any] = field(default_factory=dict)
    seeds: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        arch = get_architecture(self.architecture)
        if self.d_in <= 0 or self.d_sae <= 0:
            raise ValueError(f"d_in and d_sae must be positive, got {self.d_in}, {self.d_sae}")
        if self.k is not None and not self.k > 0:
            raise ValueError(f"k must be positive or None, got {self.k}")
        if arch.infers_with_k and self.k is None:
            raise ValueError(f"architecture {self.architecture!r} needs k > 0, got {self.k}")
        if arch.infers_with_k and self.k > self.d_sae:  # type: ignore[operator]
            raise ValueError(f"k={self.k} exceeds d_sae={self.d_sae}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")

    def to_json(self) -> dict[str, Any]:
        """The ``cfg.json`` content (SAELens key names plus ours)."""
        return {
            "format": FORMAT,
            "version": VERSION,
            # SAELens's name for the inference rule (so its loader reads our files: BatchTopK
            # and Matryoshka infer with a threshold, i.e. as JumpReLU), and the trained variant
            "architecture": get_architecture(self.architecture).saelens_name,
            "saestab_architecture": self.architecture,
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "k": self.k,
            "model_name": self.model_name,
            "hook_name": self.hook_name,
            "dtype": self.dtype,
            "device": "cpu",
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
            "normalize_activations": "none",
            "metadata": {"model_name": self.model_name, "hook_name": self.hook_name},
            "recipe": self.recipe,
            "seeds": self.seeds,
        }


class SAE(torch.nn.Module):
    """One sparse autoencoder for inference and export (training: :mod:`saestab.training`)."""

    threshold: torch.Tensor

    def __init__(self, cfg: SAEConfig, device: str | torch.device = "cpu"):
        super().__init__()
        self.cfg = cfg
        self.arch = get_architecture(cfg.architecture)
        kw: dict[str, Any] = {"dtype": DTYPES[cfg.dtype], "device": device}
        self.W_enc = torch.nn.Parameter(torch.zeros(cfg.d_in, cfg.d_sae, **kw))
        self.W_dec = torch.nn.Parameter(torch.zeros(cfg.d_sae, cfg.d_in, **kw))
        self.b_enc = torch.nn.Parameter(torch.zeros(cfg.d_sae, **kw))
        self.b_dec = torch.nn.Parameter(torch.zeros(cfg.d_in, **kw))
        if self.arch.has_threshold:
            self.register_buffer("threshold", torch.zeros(cfg.d_sae, **kw))

    @property
    def device(self) -> torch.device:
        return self.W_dec.device

    @property
    def dtype(self) -> torch.dtype:
        return self.W_dec.dtype

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """``W_enc^T (x - b_dec) + b_enc`` for ``x`` of shape (..., d_in)."""
        x = x.to(dtype=self.dtype)
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations (..., d_sae) with the architecture's inference rule."""
        return self.arch.infer(self.pre_activations(x), self)

    def encode_sparse(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`encode` of a (B, d_in) batch as a sparse CSR (B, d_sae) tensor; it may hold
        explicit zeros (see ``Architecture.infer_sparse``). Cheaper to reduce and decode."""
        if x.dim() != 2:
            raise ValueError(f"encode_sparse takes a (batch, d_in) tensor, got {tuple(x.shape)}")
        return self.arch.infer_sparse(self.pre_activations(x), self)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``f @ W_dec + b_dec`` (``f`` dense or sparse CSR)."""
        if f.layout == torch.sparse_csr:
            return torch.addmm(self.b_dec, f.to(dtype=self.dtype), self.W_dec)
        return f.to(dtype=self.dtype) @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of ``x``."""
        return self.decode(self.encode(x))

    @torch.no_grad()
    def decoder_directions(self) -> torch.Tensor:
        """Unit-normalised rows of ``W_dec`` as float32, shape (d_sae, d_in)."""
        w = self.W_dec.detach().float()
        return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors written to ``sae_weights.safetensors`` (SAELens key names)."""
        out = {n: getattr(self, n).detach() for n in ("W_enc", "W_dec", "b_enc", "b_dec")}
        if self.arch.has_threshold:
            out["threshold"] = self.threshold.detach()
        return out

    def save(self, path: str | Path) -> Path:
        """Save to directory ``path`` atomically (see :func:`saestab.sae.save_sae`)."""
        from .files import save_sae  # the file format builds on this class

        return save_sae(self, path)

    def extra_repr(self) -> str:
        c = self.cfg
        return f"architecture={c.architecture}, d_in={c.d_in}, d_sae={c.d_sae}, k={c.k}"


def sae_from_tensors(cfg: SAEConfig, tensors: dict[str, torch.Tensor],
                     device: str | torch.device = "cpu") -> SAE:
    """Build an SAE from ``W_enc``, ``W_dec``, ``b_enc``, ``b_dec`` (and ``threshold``)."""
    sae = SAE(cfg, device=device)
    with torch.no_grad():
        for name, t in sae.state_tensors().items():
            if name not in tensors:
                raise KeyError(f"missing tensor {name!r} for a {cfg.architecture} SAE")
            src = tensors[name]
            if tuple(src.shape) != tuple(t.shape):
                raise ValueError(f"{name}: shape {tuple(src.shape)}, expected {tuple(t.shape)}")
            getattr(sae, name).copy_(src)
    return sae


def fold_input_scale(tensors: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """Turn the weights of an SAE trained on ``s * x`` into an SAE on raw ``x``.

    The trained model computes ``f' = act(W_enc^T (s x - b_dec) + b_enc)`` and reconstructs
    ``x_hat = (W_dec^T f' + b_dec) / s``. Dividing the features by ``s`` keeps the decoder rows
    (unit-norm where trained so) and every top-k ranking: ``b_dec/s``, ``b_enc/s``,
    ``threshold/s``; ``W_enc`` and ``W_dec`` unchanged. Returns new tensors.
    """
    inv = 1.0 / float(scale)
    out = {n: t.clone() for n, t in tensors.items()}
    for name in ("b_enc", "b_dec", "threshold"):
        if name in out:
            out[name] = out[name] * inv
    return out
