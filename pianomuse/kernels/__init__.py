"""Ops layer: the WKV-7 recurrence of RWKV-7 (compiled CPU/CUDA kernels and a pure-PyTorch twin)."""

from pianomuse.kernels.wkv7 import wkv7, wkv7_reference, wkv7_step

__all__ = ["wkv7", "wkv7_reference", "wkv7_step"]
