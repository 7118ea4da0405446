"""Where and how computations run: device choice, thread counts, and the run-time settings that
do not change results."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where it is used: the Snakefile imports this module
    import torch


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA if available, else CPU; otherwise the named device (checked to exist)."""
    import torch  # noqa: PLC0415

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available here; "
                           "use device: auto or cpu")
    return dev


def set_threads(n: int | None) -> None:
    """Limit torch's intra-op threads to what the scheduler granted the job."""
    import torch  # noqa: PLC0415

    if n is not None and n > 0:
        torch.set_num_threads(int(n))


# Settings that decide where and in what pieces a job computes, not what it computes. Rules must
# not pass them as `params` (Snakemake reruns a job whose params changed, so moving a finished
# study to a GPU node, or changing a chunk size, would redo it); scripts read them from the
# workflow config at run time with :func:`setting`, and rules pass their config sections through
# :func:`result_section`, which drops them.
RUNTIME_KEYS: tuple[str, ...] = (
    "device",
    "parallel_jobs",
    "sae.checkpoint_every",
    "sae.eval_batch_size",
    "stability.chunk_size",
    "function.masking.batch_size",
    "function.masking.ce_batch_size",
)


def setting(config: Mapping[str, Any], key: str) -> Any:
    """The run-time setting ``key`` (dotted, one of :data:`RUNTIME_KEYS`) of a validated config."""
    if key not in RUNTIME_KEYS:
        raise KeyError(f"{key!r} is not a run-time setting; those are {list(RUNTIME_KEYS)}. "
                       "A setting that changes results belongs in the rule's params.")
    value: Any = config
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise KeyError(f"config has no {key!r}: was it validated against the schema, which "
                           "fills in every default?")
        value = value[part]
    return value


def result_section(config: Mapping[str, Any], section: str) -> dict[str, Any]:
    """A copy of the config section ``section`` (dotted) without its run-time settings: what a
    rule passes as params, so that only settings that change results trigger a rerun."""
    value: Any = config
    for part in section.split("."):
        value = value[part]
    out = copy.deepcopy(dict(value))
    prefix = f"{section}."
    for key in RUNTIME_KEYS:
        if key.startswith(prefix) and "." not in key[len(prefix):]:
            out.pop(key[len(prefix):], None)
    return out


def job_device(config: Mapping[str, Any]) -> torch.device:
    """The device a job computes on: the config's ``device`` resolved on this machine."""
    return resolve_device(setting(config, "device"))
