"""The SAE file format: SAELens's directory layout, and readers of SAELens's and sparsify's files.

On disk an SAE is a directory: ``sae_weights.safetensors`` (``W_enc``, ``W_dec``, ``b_enc``,
``b_dec`` and ``threshold`` where the architecture has one) and ``cfg.json``, whose
``architecture`` is SAELens's name of the inference rule, so SAELens loads our files.
:func:`load_sae` also reads SAEs saved by SAELens and by EleutherAI's sparsify.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .. import io
from ..logs import get_logger
from .architecture import architectures, get_architecture
from .model import DTYPES, FORMAT, SAE, SAEConfig, dtype_name, sae_from_tensors

log = get_logger("sae")

WEIGHTS_FILE = "sae_weights.safetensors"
CFG_FILE = "cfg.json"
SPARSIFY_WEIGHTS_FILE = "sae.safetensors"


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


_SAELENS_ALIASES = {"standard": "relu", "matryoshka_batchtopk": "matryoshka"}
"""SAELens's architecture names that differ from ours."""


def _saelens_arch() -> dict[str, str]:
    """SAELens's (or our) architecture name in a ``cfg.json`` -> our architecture."""
    return {**{a: a for a in architectures()}, **_SAELENS_ALIASES}


def _find_arch_dict(cfg_json: dict[str, Any]) -> dict[str, Any]:
    """The dict holding ``architecture``: the top level or one nested config dict."""
    if "architecture" in cfg_json:
        return cfg_json
    for key in ("cfg", "sae_cfg", "config", "sae", "sae_config"):
        sub = cfg_json.get(key)
        if isinstance(sub, dict) and "architecture" in sub:
            return sub
    return cfg_json


def _saelens_architecture(cfg_file: Path, cfg_json: dict[str, Any],
                          c: dict[str, Any]) -> tuple[str, str]:
    """``(our architecture, the file's own name for it)`` of a SAELens-layout ``cfg.json``."""
    known = _saelens_arch()
    arch_raw = c.get("architecture")
    if arch_raw is None:
        raise io.InputError(f"{cfg_file}: expected an 'architecture' key "
                            f"(one of {sorted(known)})")
    arch_raw = str(arch_raw).lower()
    if arch_raw not in known:
        raise io.InputError(f"{cfg_file}: architecture {arch_raw!r} is not supported "
                            f"(expected one of {sorted(known)})")
    arch = known[arch_raw]
    if cfg_json.get("format") == FORMAT and cfg_json.get("saestab_architecture"):
        arch = str(cfg_json["saestab_architecture"])  # ours: the training variant
    act_fn = c.get("activation_fn_str") or c.get("activation_fn")
    if arch == "relu" and act_fn == "topk":  # older SAELens: standard + topk activation
        arch = "topk"
    return arch, arch_raw


def _saelens_tensors(path: Path, d_sae: int) -> dict[str, torch.Tensor]:
    """The weights in our names: SAELens's training-time variants folded into them."""
    tensors = _read_safetensors(path / WEIGHTS_FILE)
    if "log_threshold" in tensors and "threshold" not in tensors:
        tensors["threshold"] = tensors.pop("log_threshold").exp()
    if "topk_threshold" in tensors and "threshold" not in tensors:  # BatchTopK training dump
        tensors["threshold"] = torch.full((d_sae,), float(tensors.pop("topk_threshold")))
    if "finetuning_scaling_factor" in tensors:  # f_j * s_j * d_j: fold s into the decoder
        s = tensors.pop("finetuning_scaling_factor")
        tensors["W_dec"] = tensors["W_dec"] * s[:, None].to(tensors["W_dec"].dtype)
    missing = [n for n in ("W_enc", "W_dec", "b_enc", "b_dec") if n not in tensors]
    if missing:
        raise io.InputError(f"{path / WEIGHTS_FILE}: expected tensors W_enc, W_dec, b_enc, "
                            f"b_dec; missing {missing} (found {sorted(tensors)})")
    return tensors


def _from_saelens(path: Path, cfg_json: Any) -> tuple[SAEConfig, dict[str, torch.Tensor]]:
    cfg_file = path / CFG_FILE
    if not isinstance(cfg_json, dict):
        raise io.InputError(f"{cfg_file}: expected a JSON object, found {type(cfg_json).__name__}")
    c = _find_arch_dict(cfg_json)
    arch, arch_raw = _saelens_architecture(cfg_file, cfg_json, c)
    k = c.get("k")
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
    tensors = _saelens_tensors(path, int(c["d_sae"]))
    if get_architecture(arch).has_threshold and "threshold" not in tensors:
        raise io.InputError(f"{path / WEIGHTS_FILE}: a {arch_raw} SAE needs a 'threshold' "
                            f"tensor (found {sorted(tensors)})")
    if get_architecture(arch).infers_with_k and k is None:
        raise io.InputError(f"{cfg_file}: a {arch} SAE needs 'k'")
    return _saelens_config(cfg_json, c, arch, k, tensors["W_dec"].dtype), tensors


def _saelens_config(cfg_json: dict[str, Any], c: dict[str, Any], arch: str, k: Any,
                    stored: torch.dtype) -> SAEConfig:
    meta = c.get("metadata") or c.get("meta") or {}
    meta = meta if isinstance(meta, dict) else {}
    dtype = str(c.get("dtype", "float32")).replace("torch.", "")
    ours = cfg_json.get("format") == FORMAT
    return SAEConfig(
        architecture=arch,
        d_in=int(c["d_in"]),
        d_sae=int(c["d_sae"]),
        k=(int(k) if isinstance(k, (int, float)) and float(k).is_integer() else k),
        model_name=str(c.get("model_name") or meta.get("model_name") or ""),
        hook_name=str(c.get("hook_name") or meta.get("hook_name") or ""),
        dtype=dtype if dtype in DTYPES else dtype_name(stored),
        apply_b_dec_to_input=bool(c.get("apply_b_dec_to_input", True)),
        recipe=dict(cfg_json.get("recipe") or {}) if ours else {"source": "saelens"},
        seeds=dict(cfg_json.get("seeds") or {}) if ours else {},
    )


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
