"""The WKV-7 recurrence: the pure-PyTorch twin against a dense formulation, the compiled C++ (and, on a GPU, CUDA)
kernels and the chunked matrix form against the twin (forward, final state and every gradient), the chunked form's
range guard, the RNN step, and the fallback to the chunked form (or the twin)."""

from __future__ import annotations

import warnings

import pytest
import torch

import pianomuse.kernels.build as kernel_build
import pianomuse.kernels.wkv7 as wkv7_module
from pianomuse.kernels.checks import TOLERANCE, outputs_and_grads, random_wkv7_inputs, relative_errors
from pianomuse.kernels.wkv7 import (
    CHUNK,
    MAX_CHUNK_LOG_DECAY,
    MAX_LOG_DECAY,
    chunk_fits,
    wkv7,
    wkv7_chunked,
    wkv7_compiled,
    wkv7_reference,
    wkv7_step,
)

NAMES = ("r", "w", "k", "v", "a", "b")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="session")
def cuda_kernel():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    return kernel_build.load_kernel("cuda")


def dense_wkv7(r, w, k, v, a, b, state):
    """The recurrence as RWKV-7 writes it, one head at a time in float64: S = S (diag(exp w) + a b^T) + v k^T."""
    batch, steps, heads, _ = r.shape
    y = torch.zeros(r.shape, dtype=torch.float64)
    state = state.double().clone()
    for bi in range(batch):
        for h in range(heads):
            s = state[bi, h]
            for t in range(steps):
                x = {name: tensor[bi, t, h].double() for name, tensor in zip(NAMES, (r, w, k, v, a, b))}
                transition = torch.diag(torch.exp(x["w"])) + torch.outer(x["a"], x["b"])
                s = s @ transition + torch.outer(x["v"], x["k"])
                y[bi, t, h] = s @ x["r"]
            state[bi, h] = s
    return y, state


def assert_close_to_reference(fn, inputs, tolerance):
    errors = relative_errors(outputs_and_grads(fn, inputs), outputs_and_grads(wkv7_reference, inputs))
    assert max(errors.values()) <= tolerance, errors


def test_reference_matches_dense_formulation():
    inputs = random_wkv7_inputs(2, 9, 3, 8, seed=3)
    y, state = wkv7_reference(**inputs)
    y_dense, state_dense = dense_wkv7(**inputs)
    torch.testing.assert_close(y.double(), y_dense, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state.double(), state_dense, rtol=1e-5, atol=1e-5)


def test_reference_state_stays_bounded_on_long_sequences():
    y, state = wkv7_reference(**random_wkv7_inputs(1, 512, 2, 16, seed=4))
    assert torch.isfinite(y).all() and state.abs().max() < 100


@pytest.mark.parametrize(
    "batch, steps, heads, size",
    [(1, 1, 1, 64), (3, 7, 5, 64), (2, 32, 3, 64), (2, 33, 3, 64), (3, 100, 5, 16), (1, 70, 2, 8)],
)
def test_cpu_kernel_matches_reference(cpu_kernel, batch, steps, heads, size):
    inputs = random_wkv7_inputs(batch, steps, heads, size, seed=steps)
    assert_close_to_reference(lambda **kw: wkv7_compiled(cpu_kernel, **kw), inputs, TOLERANCE[torch.float32])


def test_cpu_kernel_without_initial_state(cpu_kernel):
    inputs = random_wkv7_inputs(2, 40, 3, 32, seed=5, with_state=False)
    assert_close_to_reference(lambda **kw: wkv7_compiled(cpu_kernel, **kw), inputs, TOLERANCE[torch.float32])


def test_cpu_kernel_is_deterministic(cpu_kernel):
    inputs = random_wkv7_inputs(2, 50, 4, 64, seed=6)
    first, second = (outputs_and_grads(lambda **kw: wkv7_compiled(cpu_kernel, **kw), inputs) for _ in range(2))
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_wkv7_dispatches_to_the_cpu_kernel_and_keeps_the_dtype(cpu_kernel):
    inputs = random_wkv7_inputs(1, 20, 2, 64, dtype=torch.bfloat16, seed=7)
    inputs["w"] = inputs["w"].float()  # as under autocast: mixed dtypes are accepted, y keeps r's dtype
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the kernel is built, so no fallback warning
        y, state = wkv7(**inputs)
    y_ref, state_ref = wkv7_reference(**inputs)
    assert y.dtype == torch.bfloat16 and state.dtype == torch.float32
    torch.testing.assert_close(state, state_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(y, y_ref)


def test_step_composed_over_time_equals_wkv7(cpu_kernel):
    inputs = random_wkv7_inputs(2, 37, 3, 64, seed=8)
    y, state = wkv7(**inputs)
    step_state, outputs = inputs["state"], []
    for t in range(37):
        step_y, step_state = wkv7_step(*(inputs[name][:, t] for name in NAMES), step_state)
        outputs.append(step_y)
    torch.testing.assert_close(torch.stack(outputs, dim=1), y, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(step_state, state, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "batch, steps, heads, size, chunk",
    [
        (1, 1, 1, 64, 32),  # T < chunk
        (2, 5, 3, 8, 32),  # T < chunk
        (2, 32, 3, 64, 32),  # T = chunk
        (2, 33, 3, 64, 32),  # one step into a second chunk
        (3, 100, 2, 16, 32),  # T not a multiple of the chunk
        (2, 70, 2, 64, 16),
        (1, 130, 2, 64, 64),
    ],
)
def test_chunked_form_matches_reference(batch, steps, heads, size, chunk):
    inputs = random_wkv7_inputs(batch, steps, heads, size, seed=steps, max_log_decay=MAX_LOG_DECAY)
    chunked = outputs_and_grads(lambda **kw: wkv7_chunked(**kw, chunk=chunk), inputs)
    assert set(chunked) == {"y", "state_out", "dr", "dw", "dk", "dv", "da", "db", "dstate"}
    errors = relative_errors(chunked, outputs_and_grads(wkv7_reference, inputs))
    assert max(errors.values()) <= TOLERANCE[torch.float32], errors


def test_chunked_form_without_initial_state():
    inputs = random_wkv7_inputs(2, 45, 3, 32, seed=11, with_state=False, max_log_decay=MAX_LOG_DECAY)
    assert_close_to_reference(wkv7_chunked, inputs, TOLERANCE[torch.float32])


def test_chunked_form_is_deterministic():
    inputs = random_wkv7_inputs(2, 50, 2, 64, seed=12, max_log_decay=MAX_LOG_DECAY)
    first, second = (outputs_and_grads(wkv7_chunked, inputs) for _ in range(2))
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_chunked_form_is_exact_up_to_its_range_limit_and_refuses_beyond(monkeypatch):
    inputs = random_wkv7_inputs(2, 64, 2, 64, seed=13)
    # Most channels decay at the limit: each chunk's cumulative log decay reaches -MAX_CHUNK_LOG_DECAY.
    limit = -(MAX_CHUNK_LOG_DECAY / CHUNK) * torch.rand(inputs["w"].shape).clamp_min(0.9)
    assert chunk_fits(limit) and not chunk_fits(limit * 1.01)
    assert_close_to_reference(wkv7_chunked, {**inputs, "w": limit}, TOLERANCE[torch.float32])
    with pytest.raises(ValueError, match="exceeds"):
        wkv7_chunked(**{**inputs, "w": limit * 2})
    # The guard is needed: past exp's fp32 range (88.7) the factored form breaks down.
    monkeypatch.setattr(wkv7_module, "MAX_CHUNK_LOG_DECAY", float("inf"))
    y, _ = wkv7_chunked(**{**inputs, "w": limit * 2})
    assert not torch.isfinite(y).all()


def test_fallback_warns_once_and_runs_the_chunked_form_or_the_twin(kernel_build_fails):
    inputs = random_wkv7_inputs(1, 40, 2, 8, seed=9, max_log_decay=MAX_LOG_DECAY)
    wide = random_wkv7_inputs(1, 40, 2, 8, seed=9)  # decays beyond the chunked form's range
    assert chunk_fits(inputs["w"]) and not chunk_fits(wide["w"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = [wkv7(**inputs) for _ in range(2)] + [wkv7(**wide)]
    assert len(caught) == 1 and "no compiler here" in str(caught[0].message)
    y_chunked, state_chunked = wkv7_chunked(**inputs)
    for y, state in results[:2]:
        assert torch.equal(y, y_chunked) and torch.equal(state, state_chunked)
    y_ref, state_ref = wkv7_reference(**wide)
    assert torch.equal(results[2][0], y_ref) and torch.equal(results[2][1], state_ref)


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch, steps, heads, size", [(1, 1, 1, 64), (3, 33, 5, 64), (2, 100, 3, 64), (2, 17, 3, 32)])
def test_cuda_kernel_matches_reference(cuda_kernel, dtype, batch, steps, heads, size):
    inputs = random_wkv7_inputs(batch, steps, heads, size, device="cuda", dtype=dtype, seed=steps)
    assert_close_to_reference(lambda **kw: wkv7_compiled(cuda_kernel, **kw), inputs, TOLERANCE[dtype])


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_step_kernel_matches_wkv7(cuda_kernel, dtype):
    inputs = random_wkv7_inputs(2, 24, 3, 64, device="cuda", dtype=dtype, seed=10)
    with torch.no_grad():
        y, state = wkv7(**inputs)
        step_state, outputs = inputs["state"], []
        for t in range(24):
            step_y, step_state = wkv7_step(*(inputs[name][:, t] for name in NAMES), step_state)
            outputs.append(step_y)
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(step_state, state, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(torch.stack(outputs, dim=1).float(), y.float(), rtol=tolerance, atol=tolerance)
