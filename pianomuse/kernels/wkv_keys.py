"""The WKV-7 inputs RWKV-7 derives from its key: a fused C++ op (kernels/csrc/wkv_keys_cpu.cpp) with a pure-PyTorch
twin.

For k and iclr [B, T, C] (the key and the in-context learning rate) and the per-channel parameters k_k and k_a:
kk = k * k_k L2-normalised per head, a = -kk, b = kk * iclr (the WKV-7 recurrence's in-context learning step), and
the key the recurrence reads, k * (1 + (iclr - 1) * k_a). Unfused this is about a dozen elementwise passes over
[B, T, C] forward and twice that backward; fused, the CPU training step is 3-6% faster at L4 D128 and 15-17% at
L6 D256 (README, "Training step").
"""

from __future__ import annotations

from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx

from pianomuse.kernels.wkv7 import compiled_kernel


def wkv_keys_reference(
    k: Tensor, iclr: Tensor, k_k: Tensor, k_a: Tensor, head_size: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The pure-PyTorch twin (differentiable by autograd): (the recurrence's key, a, b), each like k."""
    B, T, C = k.shape
    kk = F.normalize((k * k_k).view(B, T, C // head_size, head_size), dim=-1, p=2.0).view(B, T, C)
    return k * (1 + (iclr - 1) * k_a), -kk, kk * iclr


class _WKVKeysFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: FunctionCtx, kernel: ModuleType, k: Tensor, iclr: Tensor, k_k: Tensor, k_a: Tensor, head_size: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        ctx.kernel, ctx.head_size = kernel, head_size
        ctx.save_for_backward(k, iclr, k_k, k_a)
        return tuple(kernel.wkv_keys_forward(k, iclr, k_k, k_a, head_size))

    @staticmethod
    def backward(ctx: FunctionCtx, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        k, iclr, k_k, k_a = ctx.saved_tensors
        # A None gradient means that output did not reach the loss.
        grads = [torch.zeros_like(k) if g is None else g.contiguous() for g in grads]
        dk, diclr, dk_k, dk_a = ctx.kernel.wkv_keys_backward(k, iclr, k_k, k_a, ctx.head_size, *grads)
        return None, dk, diclr, dk_k, dk_a, None


def wkv_keys_compiled(
    kernel: ModuleType, k: Tensor, iclr: Tensor, k_k: Tensor, k_a: Tensor, head_size: int
) -> tuple[Tensor, Tensor, Tensor]:
    """wkv_keys through a given compiled CPU kernel module (no fallback); fp32 inputs."""
    return _WKVKeysFunction.apply(
        kernel, k.contiguous(), iclr.contiguous(), k_k.contiguous(), k_a.contiguous(), head_size
    )


def wkv_keys(k: Tensor, iclr: Tensor, k_k: Tensor, k_a: Tensor, head_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """(the recurrence's key, a, b) from k and iclr [B, T, C] and k_k, k_a (C values, e.g. [1, 1, C]).

    fp32 CPU tensors run the fused C++ op (the twin, after one warning, if it cannot be built); other devices and
    dtypes run the twin.
    """
    fp32 = all(x.dtype == torch.float32 for x in (k, iclr, k_k, k_a))
    kernel = compiled_kernel("cpu") if k.device.type == "cpu" and fp32 else None
    if kernel is None or k.numel() == 0:
        return wkv_keys_reference(k, iclr, k_k, k_a, head_size)
    return wkv_keys_compiled(kernel, k, iclr, k_k, k_a, head_size)
