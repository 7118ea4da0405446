"""What an SAE was trained on, in the fields SAELens and SAEBench read from ``cfg.json``.

A user who loads one of our SAEs with ``SAE.load_from_disk`` must be able to tell the model (its
Hugging Face id, not our config key), the hook, the context size, whether contexts start with
BOS, the dataset and how activations were normalised. The facts are recorded once, when the
activations are cached (:func:`provenance`, stored in the cache header), and copied into every
SAE trained on that cache (:func:`sae_metadata`, :func:`annotate_cfg_json`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from . import io

# Our SAEs take raw activations: the constant input scale used in training is folded into the
# weights on export, so SAELens must not normalise again.
NORMALIZATION = ("none: trained on activations scaled by one constant (by default to unit "
                 "variance), folded into the exported weights (the SAE takes raw activations)")


def hf_id(spec: dict[str, Any]) -> str | None:
    """The Hugging Face id of a model spec: a hub model's name (unless it is a local directory),
    the checkpoint a GGUF file was converted from; None for a native test model."""
    if spec.get("source") == "gguf":
        return spec.get("architecture_name")
    if spec.get("source") == "hub":
        name = str(spec.get("name", ""))
        return None if Path(name).is_dir() else name
    return None


def dataset_path(corpus: dict[str, Any]) -> str:
    """The corpus as one string, in the spirit of SAELens's ``dataset_path`` (a hub dataset id)."""
    source = corpus["source"]
    if source == "hf_dataset":
        hf = corpus["hf_dataset"]
        parts = [hf["name"]] + ([hf["config"]] if hf.get("config") else [])
        rev = f"@{hf['revision']}" if hf.get("revision") else ""
        return f"{'/'.join(parts)}{rev} (split {hf.get('split', 'train')})"
    if source == "gensim_wiki":
        wiki = corpus["gensim_wiki"]
        return f"{wiki['wheel']}:{wiki['member']}"
    return f"local text files {corpus.get('text_glob')}"


def model_source(spec: dict[str, Any]) -> str:
    """Where the weights came from, in words: a GGUF file's weights are a quantised copy of the
    checkpoint named by ``hf_id``, so activations of the original checkpoint differ slightly."""
    source = spec.get("source")
    if source == "gguf":
        file = spec.get("path") or f"{spec.get('wheel')}:{spec.get('member')}"
        return (f"GGUF file {file}, dequantised to float32 (a quantised copy of "
                f"{spec.get('architecture_name')})")
    if source == "hub":
        rev = f"@{spec['revision']}" if spec.get("revision") else ""
        return f"Hugging Face {spec.get('name')}{rev}"
    return f"{source} model"


def provenance(spec: dict[str, Any], model_key: str, tokens: dict[str, Any],
               corpus: dict[str, Any]) -> dict[str, Any]:
    """The facts about a cache's model and data that its SAEs' ``cfg.json`` must carry.

    ``spec`` is the model's config entry, ``model_key`` its name in the config, ``tokens`` and
    ``corpus`` the validated config sections. Stored under ``provenance`` in the cache header.
    """
    return {
        "model_key": model_key,
        "hf_id": hf_id(spec),
        "revision": spec.get("revision"),
        "source": spec.get("source"),
        "model_source": model_source(spec),
        "context_size": int(tokens["context_length"]),
        "prepend_bos": bool(tokens["prepend_bos"]),
        "dataset_path": dataset_path(corpus),
    }


def sae_metadata(cache_header: dict[str, Any]) -> dict[str, Any]:
    """The ``metadata`` section of ``cfg.json`` for an SAE trained on the cache with this header.

    ``model_name`` is the Hugging Face id where there is one (else our config key); a cache of
    re-initialised ("random") weights says so in ``model_weights``, since the id names only the
    architecture then.
    """
    prov = cache_header.get("provenance") or {}
    key = str(cache_header.get("model") or prov.get("model_key") or "")
    return {
        "model_name": prov.get("hf_id") or key,
        "hook_name": str(cache_header.get("hook") or ""),
        "context_size": prov.get("context_size"),
        "prepend_bos": prov.get("prepend_bos"),
        "dataset_path": prov.get("dataset_path"),
        "model_class_name": "HookedTransformer",  # hook names follow transformer-lens
        "model_revision": prov.get("revision"),
        "model_source": prov.get("model_source"),
        "model_weights": cache_header.get("weights"),
        "saestab_model": key,
        "normalization": NORMALIZATION,
    }


def annotate_cfg_json(sae_dir: str | os.PathLike, cache_header: dict[str, Any]) -> dict[str, Any]:
    """Write :func:`sae_metadata` into the ``cfg.json`` of ``sae_dir`` (atomically) and return it.

    SAELens (v6) reads ``metadata``; older readers and SAEBench also look at the top-level
    ``model_name``, ``hook_name``, ``context_size`` and ``prepend_bos``, which are set too.
    """
    path = Path(sae_dir) / "cfg.json"
    cfg = io.read_json(path, what="SAE config (cfg.json)")
    meta = sae_metadata(cache_header)
    cfg["metadata"] = {**(cfg.get("metadata") or {}), **meta}
    for key in ("model_name", "hook_name", "context_size", "prepend_bos", "dataset_path"):
        cfg[key] = meta[key]
    cfg["normalize_activations"] = "none"
    with io.atomic_path(path) as tmp:
        tmp.write_text(json.dumps(cfg, indent=2) + "\n")
    return cfg
