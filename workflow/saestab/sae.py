"""Sparse autoencoders: the model, its activation functions and its file format.

The model is ``f(x) = act(W_enc^T (x - b_dec) + b_enc)``, ``x_hat = W_dec^T f(x) + b_dec`` with
``W_enc`` stored as (d_in, d_sae) and ``W_dec`` as (d_sae, d_in) (the SAELens convention: row
``j`` of ``W_dec`` is feature ``j``'s decoder direction).

Architectures and their inference-time activation ``act``:

``relu``        ReLU (vanilla SAE trained with a decoder-norm-weighted L1 penalty).
``topk``        keep the ``k`` largest ReLU pre-activations of each row.
``batchtopk``   trained with a batch-global top ``k * B``; at inference a per-feature threshold
                (``pre > threshold``), the running estimate of the smallest kept activation.
``matryoshka``  Matryoshka BatchTopK: trained like ``batchtopk`` with nested reconstruction
                losses; same inference rule.
``jumprelu``    ``pre > threshold`` with a learned per-feature threshold.

On disk an SAE is a directory in SAELens's layout: ``sae_weights.safetensors`` (``W_enc``,
``W_dec``, ``b_enc``, ``b_dec`` and ``threshold`` where the architecture has one) and
``cfg.json``. :func:`load_sae` also reads SAEs saved by SAELens and by EleutherAI's sparsify.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import io
from .logs import get_logger

log = get_logger("sae")

ARCHITECTURES = ("relu", "topk", "batchtopk", "jumprelu", "matryoshka")
THRESHOLD_ARCHITECTURES = ("batchtopk", "jumprelu", "matryoshka")
"""Architectures whose inference rule is ``pre > threshold`` (they store a ``threshold``)."""
K_ARCHITECTURES = ("topk", "batchtopk", "matryoshka")
"""Architectures trained with a ``k`` (only ``topk`` needs it at inference)."""

WEIGHTS_FILE = "sae_weights.safetensors"
CFG_FILE = "cfg.json"
SPARSIFY_WEIGHTS_FILE = "sae.safetensors"
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


# ------------------------------------------------------------------------------------------
# activation functions (shared with the trainer, which applies them to stacked (S, B, m) input)
# ------------------------------------------------------------------------------------------
def topk_activation(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest ReLU'd values along the last dimension, zero the rest."""
    vals, idx = torch.topk(pre, k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter_(-1, idx, torch.relu(vals))


def batch_topk_activation(pre: torch.Tensor, k: int | float) -> torch.Tensor:
    """Keep the top ``round(k * B)`` ReLU'd values over the last two dims (B, m) jointly.

    ``pre`` is (B, m) or (S, B, m); with a leading S each slice is treated separately.
    """
    lead = pre.shape[:-2]
    b, m = pre.shape[-2:]
    n_keep = min(max(int(round(k * b)), 1), b * m)
    flat = pre.reshape(*lead, b * m)
    vals, idx = torch.topk(flat, n_keep, dim=-1, sorted=False)
    return torch.zeros_like(flat).scatter_(-1, idx, torch.relu(vals)).reshape(pre.shape)


def threshold_activation(pre: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """JumpReLU at inference: ``pre`` where ``pre > threshold`` (and > 0), else 0."""
    return torch.where(pre > threshold, torch.relu(pre), torch.zeros((), dtype=pre.dtype,
                                                                      device=pre.device))


# ------------------------------------------------------------------------------------------
# config and model
# ------------------------------------------------------------------------------------------
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
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, "
                             f"got {self.architecture!r}")
        if self.d_in <= 0 or self.d_sae <= 0:
            raise ValueError(f"d_in and d_sae must be positive, got {self.d_in}, {self.d_sae}")
        if self.architecture == "topk" and (self.k is None or self.k <= 0):
            raise ValueError(f"architecture 'topk' needs k > 0, got {self.k}")
        if self.k is not None and not self.k > 0:
            raise ValueError(f"k must be positive or None, got {self.k}")
        if self.architecture == "topk" and self.k is not None and self.k > self.d_sae:
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
            "architecture": SAELENS_INFERENCE_ARCH[self.architecture],
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
    """One sparse autoencoder (inference and export; training happens in :mod:`training`)."""

    threshold: torch.Tensor

    def __init__(self, cfg: SAEConfig, device: str | torch.device = "cpu"):
        super().__init__()
        self.cfg = cfg
        dt = DTYPES[cfg.dtype]
        kw: dict[str, Any] = {"dtype": dt, "device": device}
        self.W_enc = torch.nn.Parameter(torch.zeros(cfg.d_in, cfg.d_sae, **kw))
        self.W_dec = torch.nn.Parameter(torch.zeros(cfg.d_sae, cfg.d_in, **kw))
        self.b_enc = torch.nn.Parameter(torch.zeros(cfg.d_sae, **kw))
        self.b_dec = torch.nn.Parameter(torch.zeros(cfg.d_in, **kw))
        if cfg.architecture in THRESHOLD_ARCHITECTURES:
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
        pre = self.pre_activations(x)
        arch = self.cfg.architecture
        if arch == "relu":
            return torch.relu(pre)
        if arch == "topk":
            return topk_activation(pre, int(self.cfg.k))  # type: ignore[arg-type]
        return threshold_activation(pre, self.threshold)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``f @ W_dec + b_dec``."""
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
        if self.cfg.architecture in THRESHOLD_ARCHITECTURES:
            out["threshold"] = self.threshold.detach()
        return out

    def save(self, path: str | Path) -> Path:
        """Save to directory ``path`` atomically (see :func:`save_sae`)."""
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


# ------------------------------------------------------------------------------------------
# saving and loading
# ------------------------------------------------------------------------------------------
def save_sae(sae: SAE, path: str | Path) -> Path:
    """Write ``sae`` to directory ``path`` (SAELens layout) atomically; return ``path``."""
    path = Path(path)
    tensors = {n: t.to("cpu").contiguous() for n, t in sae.state_tensors().items()}
    with io.atomic_path(path) as tmp:
        tmp.mkdir()
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / CFG_FILE).write_text(json.dumps(sae.cfg.to_json(), indent=2,
                                               default=io._json_default) + "\n")
    return path


def load_sae(path: str | Path, device: str | torch.device = "cpu",
             dtype: torch.dtype | str | None = None) -> SAE:
    """Load an SAE saved by this library, by SAELens, or by sparsify.

    ``dtype`` (default: as stored) converts the weights after loading. Raises
    :class:`saestab.io.InputError` naming the file and what was expected if ``path`` is not a
    readable SAE.
    """
    path = Path(path)
    if not path.is_dir():
        raise io.InputError(f"{path}: expected an SAE directory (with {CFG_FILE} and "
                            f"{WEIGHTS_FILE} or {SPARSIFY_WEIGHTS_FILE}), but it does not exist")
    if (path / WEIGHTS_FILE).is_file():
        cfg_json = io.read_json(path / CFG_FILE, what="SAE config (cfg.json)")
        cfg, tensors = _from_saelens(path, cfg_json)
    elif (path / SPARSIFY_WEIGHTS_FILE).is_file():
        cfg_json = io.read_json(path / CFG_FILE, what="sparsify SAE config (cfg.json)")
        cfg, tensors = _from_sparsify(path, cfg_json)
    else:
        subdirs = sorted(p.name for p in path.iterdir()
                         if p.is_dir() and ((p / WEIGHTS_FILE).is_file()
                                            or (p / SPARSIFY_WEIGHTS_FILE).is_file()))
        hint = f"; it has SAE subdirectories {subdirs}, pass one of those" if subdirs else ""
        raise io.InputError(f"{path}: expected {WEIGHTS_FILE} (SAELens layout) or "
                            f"{SPARSIFY_WEIGHTS_FILE} (sparsify layout), found neither{hint}")
    if dtype is not None:
        cfg.dtype = dtype if isinstance(dtype, str) else dtype_name(dtype)
    target = DTYPES[cfg.dtype]
    tensors = {n: t.to(target) for n, t in tensors.items()}
    try:
        return sae_from_tensors(cfg, tensors, device=device)
    except (KeyError, ValueError) as err:
        raise io.InputError(f"{path}: {err} (d_in={cfg.d_in}, d_sae={cfg.d_sae} "
                            f"from {CFG_FILE})") from err


def _read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise io.InputError(f"{file}: expected a safetensors file of SAE weights, "
                            f"could not read it ({err})") from err


SAELENS_INFERENCE_ARCH = {
    "relu": "standard",
    "topk": "topk",
    "jumprelu": "jumprelu",
    "batchtopk": "jumprelu",
    "matryoshka": "jumprelu",
}
"""SAELens architecture name of each variant's inference rule, written to ``cfg.json``."""

_SAELENS_ARCH = {
    "standard": "relu",
    "relu": "relu",
    "topk": "topk",
    "jumprelu": "jumprelu",
    "batchtopk": "batchtopk",
    "matryoshka": "matryoshka",
    "matryoshka_batchtopk": "matryoshka",
}


def _find_arch_dict(cfg_json: dict[str, Any]) -> dict[str, Any]:
    """The dict holding ``architecture``: the top level or one nested config dict."""
    if "architecture" in cfg_json:
        return cfg_json
    for key in ("cfg", "sae_cfg", "config", "sae", "sae_config"):
        sub = cfg_json.get(key)
        if isinstance(sub, dict) and "architecture" in sub:
            return sub
    return cfg_json


def _from_saelens(path: Path, cfg_json: Any) -> tuple[SAEConfig, dict[str, torch.Tensor]]:
    cfg_file = path / CFG_FILE
    if not isinstance(cfg_json, dict):
        raise io.InputError(f"{cfg_file}: expected a JSON object, found {type(cfg_json).__name__}")
    c = _find_arch_dict(cfg_json)
    arch_raw = c.get("architecture")
    act_fn = c.get("activation_fn_str") or c.get("activation_fn")
    if arch_raw is None:
        raise io.InputError(f"{cfg_file}: expected an 'architecture' key "
                            f"(one of {sorted(_SAELENS_ARCH)})")
    arch_raw = str(arch_raw).lower()
    if arch_raw not in _SAELENS_ARCH:
        raise io.InputError(f"{cfg_file}: architecture {arch_raw!r} is not supported "
                            f"(expected one of {sorted(_SAELENS_ARCH)})")
    arch = _SAELENS_ARCH[arch_raw]
    if cfg_json.get("format") == FORMAT and cfg_json.get("saestab_architecture"):
        arch = str(cfg_json["saestab_architecture"])  # ours: the training variant
    k = c.get("k")
    if arch == "relu" and act_fn == "topk":  # older SAELens: standard + topk activation
        arch = "topk"
    if k is None and isinstance(c.get("activation_fn_kwargs"), dict):
        k = c["activation_fn_kwargs"].get("k")
    for key in ("d_in", "d_sae"):
        if not isinstance(c.get(key), int):
            raise io.InputError(f"{cfg_file}: expected an integer {key!r}, found {c.get(key)!r}")
    norm = c.get("normalize_activations", "none") or "none"
    if norm not in ("none", "expected_average_only_in"):
        raise io.InputError(f"{cfg_file}: normalize_activations={norm!r} is not supported "
                            "(only 'none' and a folded 'expected_average_only_in')")
    if norm == "expected_average_only_in":
        log.warning("%s: normalize_activations=expected_average_only_in; assuming the scaling "
                    "factor was folded into the weights on save", cfg_file)
    meta = c.get("metadata") or c.get("meta") or {}
    meta = meta if isinstance(meta, dict) else {}
    tensors = _read_safetensors(path / WEIGHTS_FILE)
    if "log_threshold" in tensors and "threshold" not in tensors:
        tensors["threshold"] = tensors.pop("log_threshold").exp()
    if "topk_threshold" in tensors and "threshold" not in tensors:  # BatchTopK training dump
        tensors["threshold"] = torch.full((int(c["d_sae"]),),
                                          float(tensors.pop("topk_threshold")))
    if "finetuning_scaling_factor" in tensors:  # f_j * s_j * d_j: fold s into the decoder
        s = tensors.pop("finetuning_scaling_factor")
        tensors["W_dec"] = tensors["W_dec"] * s[:, None].to(tensors["W_dec"].dtype)
    missing = [n for n in ("W_enc", "W_dec", "b_enc", "b_dec") if n not in tensors]
    if missing:
        raise io.InputError(f"{path / WEIGHTS_FILE}: expected tensors W_enc, W_dec, b_enc, "
                            f"b_dec; missing {missing} (found {sorted(tensors)})")
    if arch in THRESHOLD_ARCHITECTURES and "threshold" not in tensors:
        raise io.InputError(f"{path / WEIGHTS_FILE}: a {arch_raw} SAE needs a 'threshold' "
                            f"tensor (found {sorted(tensors)})")
    if arch == "topk" and k is None:
        raise io.InputError(f"{cfg_file}: a topk SAE needs 'k'")
    dtype = str(c.get("dtype", "float32")).replace("torch.", "")
    if dtype not in DTYPES:
        dtype = dtype_name(tensors["W_dec"].dtype)
    ours = cfg_json.get("format") == FORMAT
    cfg = SAEConfig(
        architecture=arch,
        d_in=int(c["d_in"]),
        d_sae=int(c["d_sae"]),
        k=(int(k) if isinstance(k, (int, float)) and float(k).is_integer() else k),
        model_name=str(c.get("model_name") or meta.get("model_name") or ""),
        hook_name=str(c.get("hook_name") or meta.get("hook_name") or ""),
        dtype=dtype,
        apply_b_dec_to_input=bool(c.get("apply_b_dec_to_input", True)),
        recipe=dict(cfg_json.get("recipe") or {}) if ours else {"source": "saelens"},
        seeds=dict(cfg_json.get("seeds") or {}) if ours else {},
    )
    return cfg, tensors


def _from_sparsify(path: Path, c: Any) -> tuple[SAEConfig, dict[str, torch.Tensor]]:
    cfg_file = path / CFG_FILE
    if not isinstance(c, dict):
        raise io.InputError(f"{cfg_file}: expected a JSON object, found {type(c).__name__}")
    if c.get("transcode") or c.get("skip_connection"):
        raise io.InputError(f"{cfg_file}: a sparsify transcoder / skip-connection coder is "
                            "not an SAE this library can load")
    if c.get("activation", "topk") != "topk":
        raise io.InputError(f"{cfg_file}: sparsify activation {c.get('activation')!r} is not "
                            "supported (expected 'topk')")
    if not isinstance(c.get("d_in"), int) or not isinstance(c.get("k"), int):
        raise io.InputError(f"{cfg_file}: expected integer 'd_in' and 'k' (sparsify layout), "
                            f"found d_in={c.get('d_in')!r}, k={c.get('k')!r}")
    d_in = int(c["d_in"])
    m = int(c.get("num_latents") or 0) or int(c.get("expansion_factor") or 0) * d_in
    if m <= 0:
        raise io.InputError(f"{cfg_file}: expected 'num_latents' or 'expansion_factor' "
                            "(sparsify layout)")
    raw = _read_safetensors(path / SPARSIFY_WEIGHTS_FILE)
    need = ("encoder.weight", "encoder.bias", "W_dec", "b_dec")
    missing = [n for n in need if n not in raw]
    if missing:
        raise io.InputError(f"{path / SPARSIFY_WEIGHTS_FILE}: expected tensors {list(need)} "
                            f"(sparsify layout); missing {missing} (found {sorted(raw)})")
    if "W_skip" in raw:
        raise io.InputError(f"{path / SPARSIFY_WEIGHTS_FILE}: has a skip connection (W_skip); "
                            "not supported")
    enc = raw["encoder.weight"]
    if tuple(enc.shape) != (m, d_in):
        raise io.InputError(f"{path / SPARSIFY_WEIGHTS_FILE}: encoder.weight has shape "
                            f"{tuple(enc.shape)}, expected ({m}, {d_in}) from {CFG_FILE}")
    tensors = {"W_enc": enc.T.contiguous(), "b_enc": raw["encoder.bias"],
               "W_dec": raw["W_dec"], "b_dec": raw["b_dec"]}
    cfg = SAEConfig(architecture="topk", d_in=d_in, d_sae=m, k=int(c["k"]),
                    dtype=dtype_name(enc.dtype) if enc.dtype in DTYPES.values() else "float32",
                    recipe={"source": "sparsify",
                            **{k: v for k, v in c.items() if isinstance(v, (int, float, str))}})
    return cfg, tensors
