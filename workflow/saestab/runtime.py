"""Where and how computations run: device choice and thread counts."""

from __future__ import annotations

import torch


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA if available, else CPU; otherwise the named device (checked to exist)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available here; "
                           "use device: auto or cpu")
    return dev


def set_threads(n: int | None) -> None:
    """Limit torch's intra-op threads to what the scheduler granted the job."""
    if n is not None and n > 0:
        torch.set_num_threads(int(n))
