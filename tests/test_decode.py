"""The compiled RWKV-7 decoding step (csrc/rwkv7_decode_cpu.cpp) against its twin, `RWKV7.step`."""

from __future__ import annotations

import warnings

import pytest
import torch

import pianomuse.kernels.build as kernel_build
from pianomuse.kernels.checks import perturbed_model
from pianomuse.kernels.decode import CompiledStep, decode_step_for
from pianomuse.model import RWKV7, RWKV7Config, state_repeat

TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def cpu_kernel():
    return kernel_build.load_kernel("cpu")


@pytest.mark.parametrize(
    "n_layer, n_embd, head_size, batch",
    # Batches of 1-8 rows, 8 + 4 (two row blocks) and 20 (past the small-batch kernels, through ATen).
    [(1, 64, 32, 1), (3, 128, 64, 5), (2, 256, 64, 8), (2, 64, 32, 12), (1, 64, 32, 20)],
)
@torch.inference_mode()
def test_compiled_step_follows_the_twin_token_by_token(cpu_kernel, n_layer, n_embd, head_size, batch):
    model = perturbed_model(RWKV7Config(vocab_size=200, n_layer=n_layer, n_embd=n_embd, head_size=head_size), seed=3)
    tokens = torch.randint(0, 200, (batch, 40), generator=torch.Generator().manual_seed(4))
    _, prefilled = model(tokens[:, :10], return_state=True)  # att_x / ffn_x come out as non-contiguous views
    compiled, state, twin_state = CompiledStep(cpu_kernel, model), prefilled, prefilled
    for t in range(10, 40):
        twin_logits, twin_state = model.step(tokens[:, t], twin_state)
        logits, state = compiled(tokens[:, t], state)
        torch.testing.assert_close(logits, twin_logits, **TOL)
    for ours, twin in zip(state, twin_state, strict=True):
        for name, x, y in zip(ours._fields, ours, twin):
            torch.testing.assert_close(x, y, **TOL, msg=lambda m: f"{name}: {m}")


@torch.inference_mode()
def test_compiled_step_from_the_zero_state_and_from_forked_states(cpu_kernel):
    model = perturbed_model(RWKV7Config(vocab_size=200, n_layer=2, n_embd=64, head_size=32), seed=5)
    compiled = CompiledStep(cpu_kernel, model)
    ids = torch.tensor([7, 8, 9])
    logits, _ = compiled(ids, model.init_state(3))
    torch.testing.assert_close(logits, model.step(ids, model.init_state(3))[0], **TOL)
    _, prefilled = model(torch.tensor([[1, 2, 3]]), return_state=True)
    logits, _ = compiled(ids, state_repeat(prefilled, 3))  # one prompt, three continuations
    torch.testing.assert_close(logits, model.step(ids, state_repeat(prefilled, 3))[0], **TOL)


@torch.inference_mode()
def test_compiled_step_reads_the_parameters_in_place(cpu_kernel):
    """Weights are views of the parameters: an in-place update (an optimiser step, load_state_dict) is seen."""
    model = perturbed_model(RWKV7Config(vocab_size=200, n_layer=1, n_embd=64, head_size=32), seed=6)
    compiled = CompiledStep(cpu_kernel, model)
    model.load_state_dict(perturbed_model(model.config, seed=7).state_dict())
    ids = torch.tensor([3])
    torch.testing.assert_close(compiled(ids, model.init_state(1))[0], model.step(ids, model.init_state(1))[0], **TOL)


def test_bad_state_is_a_clear_error(cpu_kernel):
    model = perturbed_model(RWKV7Config(vocab_size=200, n_layer=2, n_embd=64, head_size=32))
    compiled = CompiledStep(cpu_kernel, model)
    with pytest.raises(RuntimeError, match="expected 3 x 2 state tensors"):
        compiled(torch.tensor([1]), model.init_state(1)[:1])
    with pytest.raises(RuntimeError, match="layer 0 state does not match"):
        compiled(torch.tensor([1, 2]), model.init_state(1))


def test_decode_step_for_uses_the_compiled_step_on_cpu_fp32_only(cpu_kernel):
    model = RWKV7(RWKV7Config(vocab_size=200, n_layer=1, n_embd=64, head_size=32))
    assert isinstance(decode_step_for(model), CompiledStep)
    bf16 = RWKV7(RWKV7Config(vocab_size=200, n_layer=1, n_embd=64, head_size=32)).to(torch.bfloat16)
    assert decode_step_for(bf16) == bf16.step


def test_decode_step_for_falls_back_to_the_twin_with_a_warning(kernel_build_fails):
    model = RWKV7(RWKV7Config(vocab_size=200, n_layer=1, n_embd=64, head_size=32))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        step = decode_step_for(model)
    assert step == model.step
    assert len(caught) == 1 and "no compiler here" in str(caught[0].message)
