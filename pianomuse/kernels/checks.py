"""Numerical checks of the compiled ops against their pure-PyTorch twins (used by the build record and tests).

The check of the whole-model decoding step builds a model, so it lives above the model, in `pianomuse.kernel_record`.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import torch
import torch.nn.functional as F

from pianomuse.kernels.token_mix import token_mix_compiled, token_mix_reference
from pianomuse.kernels.wkv7 import wkv7_compiled, wkv7_reference
from pianomuse.kernels.wkv_keys import wkv_keys_compiled, wkv_keys_reference

INPUT_NAMES = ("r", "w", "k", "v", "a", "b", "state")
# Maximum error relative to the largest reference magnitude of each compared tensor.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 5e-3}


def random_wkv7_inputs(
    batch: int, steps: int, heads: int, size: int, *, device: str = "cpu", dtype: torch.dtype = torch.float32,
    seed: int = 0, with_state: bool = True, max_log_decay: float | None = None,
) -> dict[str, torch.Tensor | None]:  # fmt: skip
    """RWKV-7-like inputs that keep the state bounded: decay exp(w) in (0, 1), a = -kk and b = kk * iclr with kk
    L2-normalised per head and iclr in (0, 1). Returns a dict of r, w, k, v, a, b (dtype) and state (fp32 or None).
    -w lies in [0.01, 5], or, given `max_log_decay`, in (0, max_log_decay) as the model draws it (max * sigmoid)."""
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, steps, heads, size)

    def randn(*dims: int) -> torch.Tensor:
        return torch.randn(*dims, generator=generator)

    kk = F.normalize(randn(*shape), dim=-1)
    iclr = torch.rand(*shape, generator=generator)
    inputs = {
        "r": randn(*shape),
        "w": -torch.exp(randn(*shape)).clamp(0.01, 5.0)
        if max_log_decay is None
        else -max_log_decay * torch.sigmoid(2 * randn(*shape)),
        "k": randn(*shape) * size**-0.5,
        "v": randn(*shape),
        "a": -kk,
        "b": kk * iclr,
    }
    inputs = {name: x.to(device=device, dtype=dtype) for name, x in inputs.items()}
    inputs["state"] = randn(batch, heads, size, size).to(device) * 0.1 if with_state else None
    return inputs


def outputs_and_grads(fn: Callable[..., tuple[torch.Tensor, torch.Tensor]], inputs: dict, seed: int = 1) -> dict:
    """y, the final state and the gradients of every input of `fn` for a fixed random linear loss, as fp32."""
    leaves = {name: x.detach().clone().requires_grad_(True) for name, x in inputs.items() if x is not None}
    y, state = fn(**{name: leaves.get(name) for name in INPUT_NAMES})
    generator = torch.Generator().manual_seed(seed)
    grad_y = torch.randn(y.shape, generator=generator).to(y.device)
    grad_state = torch.randn(state.shape, generator=generator).to(state.device)
    ((y.float() * grad_y).sum() + (state * grad_state).sum()).backward()
    results = {"y": y.detach().float(), "state_out": state.detach()}
    results.update({f"d{name}": leaf.grad.float() for name, leaf in leaves.items()})
    return results


def relative_errors(results: dict, reference: dict) -> dict[str, float]:
    """Max |result - reference| of each tensor over the max |reference| (at least 1e-6)."""
    return {
        name: ((results[name] - ref).abs().max() / ref.abs().max().clamp_min(1e-6)).item()
        for name, ref in reference.items()
    }


def check_kernel(
    kernel: ModuleType, device_type: str, dtype: torch.dtype, shape: tuple[int, int, int, int] = (2, 40, 3, 64),
    seed: int = 0,
) -> dict:  # fmt: skip
    """Compares a kernel module (forward, final state, all gradients) with the twin on one random problem."""
    inputs = random_wkv7_inputs(*shape, device=device_type, dtype=dtype, seed=seed)
    reference = outputs_and_grads(wkv7_reference, inputs)
    results = outputs_and_grads(lambda **kw: wkv7_compiled(kernel, **kw), inputs)
    errors = relative_errors(results, reference)
    tolerance = TOLERANCE[dtype]
    return {
        "kernel": "wkv7",
        "dtype": str(dtype).removeprefix("torch."),
        "shape_BTHN": list(shape),
        "max_relative_error": errors,
        "tolerance": tolerance,
        "passed": all(error <= tolerance for error in errors.values()),
    }


def outputs_and_input_grads(
    fn: Callable[..., tuple[torch.Tensor, ...]], inputs: dict[str, torch.Tensor], *args: object, seed: int = 1
) -> dict[str, torch.Tensor]:
    """The outputs of `fn(*inputs, *args)` and the gradients of its tensor inputs for a fixed random linear loss."""
    leaves = {name: x.clone().requires_grad_(True) for name, x in inputs.items()}
    outputs = fn(*leaves.values(), *args)
    weights = torch.Generator().manual_seed(seed)
    sum((out * torch.randn(out.shape, generator=weights)).sum() for out in outputs).backward()
    results = {f"out{m}": out.detach() for m, out in enumerate(outputs)}
    results.update({f"d{name}": leaf.grad for name, leaf in leaves.items()})
    return results


def float32_check(kernel_name: str, shape: dict, errors: dict[str, float]) -> dict:
    tolerance = TOLERANCE[torch.float32]
    return {
        "kernel": kernel_name,
        "dtype": "float32",
        **shape,
        "max_relative_error": errors,
        "tolerance": tolerance,
        "passed": all(error <= tolerance for error in errors.values()),
    }


def check_token_mix(
    kernel: ModuleType, shape: tuple[int, int, int] = (3, 70, 96), mixes: int = 6, seed: int = 0
) -> dict:
    """Compares the fused token-shift mixes (outputs and the gradients of x, x_prev and the mixes) with the twin on
    one random problem whose row blocks straddle sequences."""
    generator = torch.Generator().manual_seed(seed)
    batch, _, channels = shape
    inputs = {
        "x": torch.randn(*shape, generator=generator),
        "x_prev": torch.randn(batch, channels, generator=generator),
        "mix": torch.rand(mixes, channels, generator=generator),
    }
    ours = outputs_and_input_grads(lambda *a: token_mix_compiled(kernel, *a), inputs, seed=seed + 1)
    errors = relative_errors(ours, outputs_and_input_grads(token_mix_reference, inputs, seed=seed + 1))
    return float32_check("token_mix", {"shape_BTC": list(shape), "mixes": mixes}, errors)


def random_wkv_keys_inputs(batch: int, steps: int, channels: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """k, iclr in (0, 1), and k_k, k_a [1, 1, C] as the model holds them."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "k": torch.randn(batch, steps, channels, generator=generator),
        "iclr": torch.rand(batch, steps, channels, generator=generator),
        "k_k": torch.randn(1, 1, channels, generator=generator),
        "k_a": torch.randn(1, 1, channels, generator=generator),
    }


def check_wkv_keys(
    kernel: ModuleType, shape: tuple[int, int, int] = (3, 50, 128), head_size: int = 64, seed: int = 0
) -> dict:
    """Compares the fused WKV-7 key inputs (k', a, b and the gradients of k, iclr, k_k and k_a) with the twin on one
    random problem whose row blocks straddle sequences."""
    inputs = random_wkv_keys_inputs(*shape, seed=seed)
    ours = outputs_and_input_grads(lambda *a: wkv_keys_compiled(kernel, *a), inputs, head_size, seed=seed + 1)
    errors = relative_errors(ours, outputs_and_input_grads(wkv_keys_reference, inputs, head_size, seed=seed + 1))
    return float32_check("wkv_keys", {"shape_BTC": list(shape), "head_size": head_size}, errors)
