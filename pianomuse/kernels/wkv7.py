"""The WKV-7 recurrence of RWKV-7: compiled CPU/CUDA kernels, a chunked matrix form and a pure-PyTorch twin.

Layout follows fla's `chunk_rwkv7` (head_first=False): r, w, k, v, a, b are [B, T, H, N], `w` is the log of the
per-channel decay (w <= 0), and the state S[b, h, i, j] has i = value dim, j = key dim. Per step t and head:

    S_t = S_{t-1} * exp(w_t)[None, :] + (S_{t-1} @ a_t)[:, None] * b_t[None, :] + v_t[:, None] * k_t[None, :]
    y_t = S_t @ r_t

RWKV-7 passes a = -kk and b = kk * iclr, so the middle term is its `state @ (a b^T)` in-context learning step.

`wkv7_chunked` computes the same in chunked matrix form (the WY/UT form of fla's `chunk_rwkv7`): within a chunk
of C steps starting from state S0, with W_t the cumulative log decay up to and including step t and
u_t = S_{t-1} a_t,

    S_t = S0 exp(W_t) + sum_{s<=t} (u_s b_s^T + v_s k_s^T) exp(W_t - W_s)
    u_t = S0 (a_t exp(W_{t-1})) + sum_{s<t} (u_s b_s^T + v_s k_s^T) (a_t exp(W_{t-1} - W_s))

so U = (I - L_ab)^{-1} (A~ S0^T + L_ak V) with strictly lower-triangular Gram matrices L_ab, L_ak: one
triangular inverse per chunk. Writing U = P S0^T + Q, only two [C, N] x [N, N] products per chunk run in order;
everything else is batched matrix products over all chunks. The Gram matrices factor exp(W_t - W_s) as
exp(W_t) * exp(-W_s), exact in fp32 while exp(-W) stays finite, so it refuses a `w` with chunk * max(-w) above
`MAX_CHUNK_LOG_DECAY`; RWKV-7 bounds -w by `MAX_LOG_DECAY` (about 19 per chunk of 32).
It does about twice the recurrence's FLOPs (18 C N + 8 N^2 per token and head), and on one CPU thread it is 1.5-2.3x
slower than the C++ kernel (forward + backward) at the training shapes (README, "WKV-7 kernel"), so it is only the
fallback when that kernel cannot be built: 20-60x faster than the twin there.
"""

from __future__ import annotations

import functools
import math
import warnings
from types import ModuleType

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx
from torch.nn import functional as F

_STATE_DTYPE = torch.float32
# RWKV-7's bound on -w (model.py: w = -MAX_LOG_DECAY * sigmoid(.)): each channel forgets at most 45% per token.
MAX_LOG_DECAY = math.exp(-0.5)

# Device type -> loaded extension module, or None once loading failed (we then stay on pure PyTorch).
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


def _checked_shapes(*tensors: Tensor) -> tuple[Tensor, ...]:
    if len({x.shape for x in tensors}) != 1 or tensors[0].dim() != 4:
        raise ValueError(f"r, w, k, v, a, b must share one [B, T, H, N] shape, got {[tuple(x.shape) for x in tensors]}")
    return tensors


def wkv7_compiled(
    kernel: ModuleType, r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """wkv7 through a given compiled kernel module (no fallback); see `wkv7`. y comes back in r's dtype."""
    tensors = _checked_shapes(r, w, k, v, a, b)
    state0 = _initial_state(r, state).contiguous()
    y, state_out = _WKV7Function.apply(kernel, *_kernel_inputs(tensors), state0)
    return y.to(r.dtype), state_out


# The largest chunk * max(-w) for which exp(+-W) stays well inside fp32 (exp(60) ~ 1e26, max ~ 3e38).
MAX_CHUNK_LOG_DECAY = 60.0
CHUNK = 32


def chunk_fits(w: Tensor, chunk: int = CHUNK) -> bool:
    """Whether `w` keeps every chunk's cumulative log decay within the range where the factored form is exact."""
    return w.numel() == 0 or -w.detach().min().item() * chunk <= MAX_CHUNK_LOG_DECAY


def _chunks(x: Tensor, chunk: int) -> Tensor:
    """[B, T, H, N] -> [B, H, T / chunk, chunk, N] in fp32, zero-padding T (a zero step leaves the state as is)."""
    batch, steps, heads, size = x.shape
    x = x.float().transpose(1, 2)
    x = F.pad(x, (0, 0, 0, -steps % chunk))
    return x.reshape(batch, heads, -1, chunk, size)


def _intra_chunk(r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, ...]:
    """The chunk-local pieces ([..., C, N] inputs): U = P S0^T + Q, y = R~ S0^T + M_rb U + M_rk V, and the end
    state S0 exp(W_C) + U^T B' + V^T K' from (decay_end, b_end, vk_end). Separate products, no slices of a
    joint one: each slice's backward would write a full-size zero tensor."""
    chunk = r.shape[-2]
    log_decay = w.cumsum(-2)  # W_t, inclusive
    growth = (-log_decay).exp()
    to_end = (log_decay[..., -1:, :] - log_decay).exp()  # exp(W_C - W_s) <= 1
    a_tilde, r_tilde = a * (log_decay - w).exp(), r * log_decay.exp()  # a_t exp(W_{t-1}), r_t exp(W_t)
    b_hat, k_hat = (b * growth).transpose(-1, -2), (k * growth).transpose(-1, -2)
    # u_t mixes strictly earlier steps, y_t the steps up to and including t.
    not_earlier = torch.ones(chunk, chunk, dtype=torch.bool, device=r.device).triu()  # [t, s]: s >= t
    later = not_earlier.triu(1)
    l_ab, l_ak = ((a_tilde @ x).masked_fill(not_earlier, 0) for x in (b_hat, k_hat))
    m_rb, m_rk = ((r_tilde @ x).masked_fill(later, 0) for x in (b_hat, k_hat))
    # (I - L_ab)^{-1} as a solve against I, then products: MKL's batched solve with many right-hand sides is
    # several times slower here than the inverse and a matrix product.
    eye = torch.eye(chunk, dtype=r.dtype, device=r.device)
    inverse = torch.linalg.solve_triangular(eye - l_ab, eye.expand_as(l_ab), upper=False, unitriangular=True)
    p, q = inverse @ a_tilde, inverse @ (l_ak @ v)
    vk_end = v.transpose(-1, -2) @ (k * to_end)
    return p, q, r_tilde, m_rb, m_rk, log_decay[..., -1, :].exp(), b * to_end, vk_end


def _pass_states(
    state: Tensor, p: Tensor, q: Tensor, decay_end: Tensor, b_end: Tensor, vk_end: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Runs the chunks in order from `state` ([BH, N, N]); returns U ([BH, chunks, C, N]), each chunk's start
    state ([BH, chunks, N, N]) and the final state."""
    us, starts = [], []
    # unbind, not indexing: the backward of an index writes a full-size zero tensor per chunk
    for p_c, q_c, decay_c, b_c, vk_c in zip(*(x.unbind(1) for x in (p, q, decay_end, b_end, vk_end))):
        starts.append(state)
        u = torch.baddbmm(q_c, p_c, state.transpose(-1, -2))
        state = torch.baddbmm(torch.addcmul(vk_c, state, decay_c[:, None, :]), u.transpose(-1, -2), b_c)
        us.append(u)
    return torch.stack(us, 1), torch.stack(starts, 1), state


def wkv7_chunked(
    r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, state: Tensor | None = None, chunk: int = CHUNK
) -> tuple[Tensor, Tensor]:
    """wkv7 in chunked matrix form; returns (y in r's dtype, final state [B, H, N, N] fp32). Differentiable."""
    tensors = _checked_shapes(r, w, k, v, a, b)
    if not chunk_fits(w, chunk):
        raise ValueError(
            f"wkv7_chunked: chunk {chunk} * max(-w) = {-w.min().item() * chunk:.1f} exceeds {MAX_CHUNK_LOG_DECAY} "
            "(exp(-W) would leave fp32's range); use a shorter chunk or wkv7"
        )
    batch, steps, heads, size = r.shape
    state = _initial_state(r, state)
    chunks = [_chunks(x, chunk).flatten(0, 1) for x in tensors]  # [BH, chunks, C, N]
    if chunks[0].shape[1] == 0:
        return r.new_zeros(r.shape), state
    p, q, r_tilde, m_rb, m_rk, decay_end, b_end, vk_end = _intra_chunk(*chunks)
    u, starts, state = _pass_states(state.flatten(0, 1), p, q, decay_end, b_end, vk_end)
    y = m_rb @ u + m_rk @ chunks[3] + r_tilde @ starts.transpose(-1, -2)
    y = y.view(batch, heads, -1, size)
    y = (y[:, :, :steps] if y.shape[2] != steps else y).transpose(1, 2)  # a slice's backward costs a full copy
    return y.to(r.dtype), state.view(batch, heads, size, size)


def _warn_fallback_once(device_type: str, error: Exception) -> None:
    global _fallback_warned
    if not _fallback_warned:
        _fallback_warned = True
        warnings.warn(
            f"pianomuse: the compiled WKV-7 {device_type} kernel could not be built or loaded "
            f"({type(error).__name__}: {error}); using pure PyTorch instead (the chunked matrix form where the "
            "decays allow it, else the much slower twin).",
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
    warns once per process and runs `wkv7_chunked` (or `wkv7_reference` where `w` is beyond the chunked form's
    range); other devices run `wkv7_reference`. Differentiable w.r.t. all inputs and the initial state.
    """
    if r.device.type not in ("cpu", "cuda"):
        return wkv7_reference(r, w, k, v, a, b, state)
    kernel = compiled_kernel(r.device.type)
    if kernel is not None:
        return wkv7_compiled(kernel, r, w, k, v, a, b, state)
    if chunk_fits(w):
        return wkv7_chunked(r, w, k, v, a, b, state)
    return wkv7_reference(r, w, k, v, a, b, state)


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
