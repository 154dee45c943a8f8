"""The torch device a stage runs on, from a setting ("auto", "cpu" or "cuda"), and waiting for it."""

from __future__ import annotations

import torch


def resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("train.device is 'cuda' but no CUDA device is available")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def synchronize(device: torch.device | str) -> None:
    """Waits for the device's queued work (a no-op on the CPU), so that a timer around it measures that work."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
