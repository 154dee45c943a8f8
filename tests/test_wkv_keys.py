"""The fused WKV-7 key inputs (pianomuse/kernels/csrc/wkv_keys_cpu.cpp) against their pure-PyTorch twin: outputs and
every gradient across row-block boundaries and head sizes, a head whose key is zero (the clamped norm), unused
outputs; bits independent of the thread count; the fallback to the twin; the model's step unchanged."""

from __future__ import annotations

import warnings

import pytest
import torch

import pianomuse.model as model_module
from pianomuse.kernels.checks import outputs_and_input_grads, random_wkv_keys_inputs
from pianomuse.kernels.wkv_keys import wkv_keys, wkv_keys_compiled, wkv_keys_reference


def assert_all_close(ours: dict, twin: dict) -> None:
    assert ours.keys() == twin.keys()
    for name in twin:
        torch.testing.assert_close(ours[name], twin[name], rtol=1e-5, atol=1e-5, msg=name)


# 1 x 1: one token; 3 x 50 and 2 x 97: row blocks of 64 that start and end inside a sequence; head sizes 64 and 32.
@pytest.mark.parametrize("batch, steps, channels, head_size", [(1, 1, 64, 64), (3, 50, 128, 64), (2, 97, 96, 32)])
def test_fused_keys_match_the_twin(cpu_kernel, batch, steps, channels, head_size):
    inputs = random_wkv_keys_inputs(batch, steps, channels, seed=steps)
    ours = outputs_and_input_grads(lambda *a: wkv_keys_compiled(cpu_kernel, *a), inputs, head_size)
    twin = outputs_and_input_grads(wkv_keys_reference, inputs, head_size)
    assert set(twin) == {"out0", "out1", "out2", "dk", "diclr", "dk_k", "dk_a"}
    assert ours["dk_k"].shape == ours["dk_a"].shape == (1, 1, channels)
    assert_all_close(ours, twin)


def test_a_zero_key_head_clamps_its_norm_as_the_twin_does(cpu_kernel):
    inputs = random_wkv_keys_inputs(2, 5, 128, seed=3)
    inputs["k"][1, 2, 64:] = 0  # one head of one token: |k * k_k| = 0 < eps
    ours = outputs_and_input_grads(lambda *a: wkv_keys_compiled(cpu_kernel, *a), inputs, 64)
    twin = outputs_and_input_grads(wkv_keys_reference, inputs, 64)
    assert not ours["out1"][1, 2, 64:].any() and ours["out1"][1, 2, :64].abs().sum() > 0
    assert_all_close(ours, twin)


def test_keys_are_the_same_bits_at_any_thread_count(cpu_kernel):
    inputs = random_wkv_keys_inputs(3, 300, 128, seed=5)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = outputs_and_input_grads(lambda *a: wkv_keys_compiled(cpu_kernel, *a), inputs, 64)
        torch.set_num_threads(3)
        three = outputs_and_input_grads(lambda *a: wkv_keys_compiled(cpu_kernel, *a), inputs, 64)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(one[name], three[name]) for name in one)


def test_an_unused_output_gets_no_gradient_and_the_rest_match(cpu_kernel):
    inputs = random_wkv_keys_inputs(2, 70, 64, seed=2)

    def loss_of_b(fn):
        leaves = {name: x.clone().requires_grad_(True) for name, x in inputs.items()}
        fn(*leaves.values(), 32)[2].square().sum().backward()
        return {name: leaf.grad for name, leaf in leaves.items()}

    ours, twin = loss_of_b(lambda *a: wkv_keys_compiled(cpu_kernel, *a)), loss_of_b(wkv_keys_reference)
    assert twin.pop("k_a") is None and not ours.pop("k_a").any()  # k_a only reaches k', whose gradient was None
    assert_all_close(ours, twin)


def test_fallback_to_the_twin_warns_once(kernel_build_fails):
    inputs = list(random_wkv_keys_inputs(2, 5, 64).values())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = [wkv_keys(*inputs, 32) for _ in range(2)]
    assert len(caught) == 1 and "no compiler here" in str(caught[0].message)
    twin = wkv_keys_reference(*inputs, 32)
    assert all(torch.equal(a, b) for outs in results for a, b in zip(outs, twin, strict=True))


def test_the_model_trains_the_same_with_the_fused_op_or_the_twin(monkeypatch):
    """A training step's loss and every parameter gradient, through TimeMix with either implementation."""
    config = model_module.RWKV7Config(vocab_size=40, n_layer=2, n_embd=128, head_size=64)
    torch.manual_seed(0)
    model = model_module.RWKV7(config)
    with torch.no_grad():  # RWKV-LM zeroes some projections at init: give every gradient something to carry
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    idx = torch.randint(0, 40, (2, 70), generator=torch.Generator().manual_seed(1))

    def loss_and_grads():
        model.zero_grad()
        logits = model(idx[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten())
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    fused_loss, fused = loss_and_grads()
    monkeypatch.setattr(model_module, "wkv_keys", wkv_keys_reference)
    twin_loss, twin = loss_and_grads()
    torch.testing.assert_close(fused_loss, twin_loss, rtol=1e-6, atol=1e-6)
    assert fused.keys() == twin.keys() and any("k_k" in name for name in fused)
    for name in twin:
        torch.testing.assert_close(fused[name], twin[name], rtol=1e-4, atol=1e-5, msg=name)
