"""The WKV-7 recurrence of RWKV-7: compiled CPU/CUDA kernels with a pure-PyTorch twin.

Layout follows fla's `chunk_rwkv7` (head_first=False): r, w, k, v, a, b are [B, T, H, N], `w` is the log of the
per-channel decay (w <= 0), and the state S[b, h, i, j] has i = value dim, j = key dim. Per step t and head:

    S_t = S_{t-1} * exp(w_t)[None, :] + (S_{t-1} @ a_t)[:, None] * b_t[None, :] + v_t[:, None] * k_t[None, :]
    y_t = S_t @ r_t

RWKV-7 passes a = -kk and b = kk * iclr, so the middle term is its `state @ (a b^T)` in-context learning step.
"""

from __future__ import annotations

import functools
import warnings
from types import ModuleType

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx

_STATE_DTYPE = torch.float32

# Device type -> loaded extension module, or None once loading failed (we then stay on the twin).
_kernels: dict[str, object | None] = {}
_fallback_warned = False


def _rwkv7_step(
    r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, state: Tensor
) -> tuple[Tensor, Tensor]:
    """One step of the recurrence in fp32 on [B, H, N] inputs and a [B, H, N, N] state; returns (y, state)."""
    r, w, k, v, a, b = (x.to(_STATE_DTYPE) for x in (r, w, k, v, a, b))
    state_a = torch.einsum("bhij,bhj->bhi", state, a)
    decayed = state * torch.exp(w)[..., None, :]
    state = decayed + state_a[..., :, None] * b[..., None, :] + v[..., :, None] * k[..., None, :]
    y = torch.einsum("bhij,bhj->bhi", state, r)
    return y, state


def _initial_state(r: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
    batch, _, heads, head_size = r.shape
    if state is None:
        return r.new_zeros(batch, heads, head_size, head_size, dtype=_STATE_DTYPE)
    return state.to(_STATE_DTYPE)


def wkv7_reference(
    r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The pure-PyTorch twin: a plain loop over T in fp32, differentiable by autograd. Returns (y, final state)."""
    state = _initial_state(r, state)
    outputs = []
    for t in range(r.shape[1]):
        y, state = _rwkv7_step(r[:, t], w[:, t], k[:, t], v[:, t], a[:, t], b[:, t], state)
        outputs.append(y)
    y = torch.stack(outputs, dim=1) if outputs else r.new_zeros(r.shape, dtype=_STATE_DTYPE)
    return y.to(r.dtype), state


class _WKV7Function(torch.autograd.Function):
    """Runs a compiled kernel module; backward recomputes states from the forward's checkpoints."""

    @staticmethod
    def forward(
        ctx: FunctionCtx, kernel: ModuleType, r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor,
        state0: Tensor,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        y, state_out, checkpoints = kernel.forward(r, w, k, v, a, b, state0)
        ctx.kernel = kernel
        ctx.save_for_backward(r, w, k, v, a, b, checkpoints)
        return y, state_out

    @staticmethod
    def backward(
        ctx: FunctionCtx, grad_y: torch.Tensor | None, grad_state_out: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        r, w, k, v, a, b, checkpoints = ctx.saved_tensors
        # A None gradient means that output did not reach the loss.
        grad_y = torch.zeros_like(r) if grad_y is None else grad_y.to(r.dtype).contiguous()
        if grad_state_out is None:
            grad_state_out = r.new_zeros(r.shape[0], r.shape[2], r.shape[3], r.shape[3], dtype=_STATE_DTYPE)
        grads = ctx.kernel.backward(r, w, k, v, a, b, checkpoints, grad_y, grad_state_out.float().contiguous())
        return (None, *grads)


def _kernel_inputs(tensors: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """r, w, k, v, a, b as contiguous tensors of the one dtype the compiled kernel reads: on CUDA their promoted
    dtype (fp32, bf16 or fp16; an fp32 w under bf16 autocast keeps its precision), on the CPU fp32."""
    dtype = functools.reduce(torch.promote_types, (x.dtype for x in tensors))
    if tensors[0].device.type != "cuda" or dtype not in (torch.float32, torch.bfloat16, torch.float16):
        dtype = torch.float32
    return [x.to(dtype).contiguous() for x in tensors]


def wkv7_compiled(
    kernel: ModuleType, r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """wkv7 through a given compiled kernel module (no fallback); see `wkv7`. y comes back in r's dtype."""
    tensors = (r, w, k, v, a, b)
    if len({x.shape for x in tensors}) != 1 or r.dim() != 4:
        raise ValueError(f"r, w, k, v, a, b must share one [B, T, H, N] shape, got {[tuple(x.shape) for x in tensors]}")
    state0 = _initial_state(r, state).contiguous()
    y, state_out = _WKV7Function.apply(kernel, *_kernel_inputs(tensors), state0)
    return y.to(r.dtype), state_out


def _warn_fallback_once(device_type: str, error: Exception) -> None:
    global _fallback_warned
    if not _fallback_warned:
        _fallback_warned = True
        warnings.warn(
            f"pianomuse: the compiled WKV-7 {device_type} kernel could not be built or loaded "
            f"({type(error).__name__}: {error}); using the slow pure-PyTorch twin instead.",
            RuntimeWarning,
            stacklevel=4,  # the caller of wkv7 / wkv7_step
        )


def compiled_kernel(device_type: str) -> ModuleType | None:
    """The compiled kernel for a device type, built on first use; None (after one warning) if that fails."""
    if device_type not in _kernels:
        from pianomuse.kernels.build import load_kernel

        try:
            _kernels[device_type] = load_kernel(device_type)
        except Exception as error:  # any build/load failure degrades to the twin
            _kernels[device_type] = None
            _warn_fallback_once(device_type, error)
    return _kernels[device_type]


def wkv7(
    r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The WKV-7 recurrence over [B, T, H, N] inputs; returns (y in the input dtype, final state [B, H, N, N] fp32).

    CUDA tensors run the CUDA kernel, CPU tensors the C++ kernel; if that kernel cannot be built or loaded this
    warns once per process and runs `wkv7_reference`. Differentiable w.r.t. all inputs and the initial state.
    """
    kernel = compiled_kernel(r.device.type) if r.device.type in ("cpu", "cuda") else None
    if kernel is None:
        return wkv7_reference(r, w, k, v, a, b, state)
    return wkv7_compiled(kernel, r, w, k, v, a, b, state)


def wkv7_step(r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
    """One recurrence step for RNN-mode decoding: [B, H, N] inputs, [B, H, N, N] fp32 state -> (y, new state).

    On CUDA, outside autograd, this runs the single-step kernel; otherwise it is plain torch (differentiable).
    """
    needs_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (r, w, k, v, a, b, state))
    if r.device.type == "cuda" and not needs_grad:
        kernel = compiled_kernel("cuda")
        if kernel is not None:
            y, state = kernel.step(*_kernel_inputs((r, w, k, v, a, b)), state.to(_STATE_DTYPE).contiguous())
            return y.to(r.dtype), state
    y, state = _rwkv7_step(r, w, k, v, a, b, state.to(_STATE_DTYPE))
    return y.to(r.dtype), state
