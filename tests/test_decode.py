"""The compiled RWKV-7 decoding step (pianomuse/kernels/csrc/rwkv7_decode_cpu.cpp) against its twin, `RWKV7.step`."""

from __future__ import annotations

import warnings

import pytest
import torch

from pianomuse.decode_step import LAYER_WEIGHTS, CompiledStep, decode_step_for
from pianomuse.kernel_record import perturbed_model
from pianomuse.model import RWKV7, RWKV7Config, state_repeat

TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "n_layer, n_embd, head_size, batch",
    # Batches of 1-8 rows (one row block of the small-batch products), 12 and 20 (two and three blocks).
    [(1, 64, 32, 1), (3, 128, 64, 5), (2, 256, 64, 8), (2, 64, 32, 12), (1, 64, 32, 20)],
)
@torch.inference_mode()
def test_compiled_step_follows_the_twin_token_by_token(cpu_kernel, n_layer, n_embd, head_size, batch):
    model = perturbed_model(RWKV7Config(vocab_size=200, n_layer=n_layer, n_embd=n_embd, head_size=head_size), seed=3)
    tokens = torch.randint(0, 200, (batch, 40), generator=torch.Generator().manual_seed(4))
    _, prefilled = model(tokens[:, :10], return_state=True)  # att_x / ffn_x are views into the activations
    # The compiled step consumes the state it is given (see decode_step.Step), so it starts from a copy.
    compiled, state, twin_state = CompiledStep(cpu_kernel, model), state_repeat(prefilled, 1), prefilled
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
def test_a_row_decodes_to_the_same_bits_whatever_the_batch(cpu_kernel):
    """What one sample draws must not depend on how many samples run beside it (K, and the batch shrinking)."""
    model = perturbed_model(RWKV7Config(vocab_size=200, n_layer=2, n_embd=128, head_size=64), seed=8)
    compiled = CompiledStep(cpu_kernel, model)
    _, prefilled = model(torch.tensor([[5, 6, 7, 8]]), return_state=True)
    alone, _ = compiled(torch.tensor([9]), state_repeat(prefilled, 1))
    for batch in (3, 8, 9, 17, 24):
        logits, _ = compiled(torch.full((batch,), 9), state_repeat(prefilled, batch))
        assert torch.equal(logits, alone.expand(batch, -1)), batch


@torch.inference_mode()
def test_compiled_step_reads_the_parameters_in_place(cpu_kernel):
    """Weights are views of the parameters: an in-place update (an optimiser step, load_state_dict) is seen."""
    model = perturbed_model(RWKV7Config(vocab_size=200, n_layer=1, n_embd=64, head_size=32), seed=6)
    compiled = CompiledStep(cpu_kernel, model)
    model.load_state_dict(perturbed_model(model.config, seed=7).state_dict())
    ids = torch.tensor([3])
    torch.testing.assert_close(compiled(ids, model.init_state(1))[0], model.step(ids, model.init_state(1))[0], **TOL)


def test_bad_input_is_a_clear_error_and_changes_no_state(cpu_kernel):
    model = perturbed_model(RWKV7Config(vocab_size=200, n_layer=2, n_embd=64, head_size=32))
    compiled = CompiledStep(cpu_kernel, model)
    with pytest.raises(RuntimeError, match="expected 3 x 2 state tensors"):
        compiled(torch.tensor([1]), model.init_state(1)[:1])
    with pytest.raises(RuntimeError, match="layer 1 state does not match"):
        state = model.init_state(2)
        state[1] = state[1]._replace(wkv=torch.ones(2, 2, 16, 16))
        compiled(torch.tensor([1, 2]), state)
    assert not state[0].wkv.any()  # checked before anything is written
    block_1_decay_lora = len(compiled.weights) - len(LAYER_WEIGHTS) + LAYER_WEIGHTS.index(("att", "w1"))
    compiled.weights[block_1_decay_lora] = torch.zeros(64, 7)  # its up-projection no longer fits
    with pytest.raises(RuntimeError, match="does not fit"):
        compiled(torch.tensor([1]), model.init_state(1))


def test_a_state_from_inference_mode_can_be_stepped_outside_it(cpu_kernel):
    model = perturbed_model(RWKV7Config(vocab_size=200, n_layer=1, n_embd=64, head_size=32))
    with torch.inference_mode():
        _, state = model(torch.tensor([[1, 2, 3]]), return_state=True)
        twin_logits, _ = model.step(torch.tensor([4]), state)
    with torch.no_grad():
        logits, _ = CompiledStep(cpu_kernel, model)(torch.tensor([4]), state_repeat(state, 1))
    torch.testing.assert_close(logits, twin_logits, **TOL)


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
