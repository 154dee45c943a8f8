"""Ops layer: the WKV-7 recurrence of RWKV-7 (compiled CPU/CUDA kernels and a pure-PyTorch twin, in wkv7.py)."""
