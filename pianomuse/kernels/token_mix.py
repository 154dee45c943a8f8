"""RWKV-7's token-shift mixes: a fused C++ op (kernels/csrc/token_mix_cpu.cpp) with a pure-PyTorch twin.

For x [B, T, C], the previous token's input prev (x shifted one step along T, starting from x_prev [B, C] or zeros)
and M mixes [M, C]:  out_m = x + (prev - x) * mix[m],  M tensors [B, T, C]. The time mix takes its six inputs
(r, w, k, v, a, g) from one call, the channel mix its one. Unfused, autograd runs a cat, a sub and 2M elementwise
ops forward and about twice that backward, each a full pass over [B, T, C]; a stacked [M, B, T, C] output would
cost a copy of all M gradients in the backward.
"""

from __future__ import annotations

from types import ModuleType

import torch
from torch.autograd.function import FunctionCtx

from pianomuse.kernels.wkv7 import compiled_kernel


def token_mix_reference(x: torch.Tensor, x_prev: torch.Tensor | None, mix: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The pure-PyTorch twin (differentiable by autograd)."""
    first = torch.zeros_like(x[:, :1]) if x_prev is None else x_prev[:, None].to(x.dtype)
    xx = torch.cat([first, x[:, :-1]], dim=1) - x
    return tuple(x + xx * m for m in mix)


class _TokenMixFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: FunctionCtx, kernel: ModuleType, x: torch.Tensor, x_prev: torch.Tensor | None, mix: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        ctx.kernel = kernel
        ctx.has_prev = x_prev is not None
        ctx.save_for_backward(x, x_prev if x_prev is not None else x.new_empty(0), mix)
        return tuple(kernel.token_mix_forward(x, x_prev, mix))

    @staticmethod
    def backward(ctx: FunctionCtx, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        x, x_prev, mix = ctx.saved_tensors
        # A None gradient means that output did not reach the loss.
        grads = [torch.zeros_like(x) if g is None else g.contiguous() for g in grads]
        dx, dx_prev, dmix = ctx.kernel.token_mix_backward(x, x_prev if ctx.has_prev else None, mix, grads)
        return None, dx, dx_prev if ctx.has_prev else None, dmix


def token_mix_compiled(
    kernel: ModuleType, x: torch.Tensor, x_prev: torch.Tensor | None, mix: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """token_mix through a given compiled CPU kernel module (no fallback); fp32 contiguous inputs."""
    x_prev = x_prev.contiguous() if x_prev is not None else None
    return _TokenMixFunction.apply(kernel, x.contiguous(), x_prev, mix.contiguous())


def token_mix(x: torch.Tensor, x_prev: torch.Tensor | None, mix: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The M token-shift mixes [B, T, C] of x [B, T, C] (x_prev [B, C] or None: zeros before the first token).

    fp32 CPU tensors run the fused C++ op (the twin, after one warning, if it cannot be built); other devices and
    dtypes run the twin.
    """
    fp32 = x.dtype == mix.dtype == torch.float32 and (x_prev is None or x_prev.dtype == torch.float32)
    kernel = compiled_kernel("cpu") if x.device.type == "cpu" and fp32 else None
    if kernel is None or x.size(1) == 0:
        return token_mix_reference(x, x_prev, mix)
    return token_mix_compiled(kernel, x, x_prev, mix)
