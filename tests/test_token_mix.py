"""The fused token-shift mixes (pianomuse/kernels/csrc/token_mix_cpu.cpp) against their pure-PyTorch twin: outputs
and every gradient, with and without the previous token's input, across row-block boundaries; bits independent of
the thread count; the fallback to the twin."""

from __future__ import annotations

import warnings

import pytest
import torch

from pianomuse.kernels.token_mix import token_mix, token_mix_compiled, token_mix_reference


def random_inputs(batch, steps, channels, mixes, with_prev, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, steps, channels, generator=generator)
    x_prev = torch.randn(batch, channels, generator=generator) if with_prev else None
    mix = torch.rand(mixes, channels, generator=generator)
    return x, x_prev, mix


def outputs_and_grads(fn, x, x_prev, mix, seed=1):
    leaves = [t.clone().requires_grad_(True) if t is not None else None for t in (x, x_prev, mix)]
    outs = fn(*leaves)
    generator = torch.Generator().manual_seed(seed)
    sum(((out * torch.randn(out.shape, generator=generator)).sum() for out in outs)).backward()
    return [out.detach() for out in outs] + [leaf.grad for leaf in leaves if leaf is not None]


# 1 x 1: a single token; 3 x 50 and 2 x 97: row blocks of 64 that start and end inside a sequence.
@pytest.mark.parametrize(
    "batch, steps, channels, mixes", [(1, 1, 8, 6), (3, 50, 24, 6), (2, 97, 40, 1), (4, 64, 16, 2)]
)
@pytest.mark.parametrize("with_prev", [False, True])
def test_fused_mix_matches_the_twin(cpu_kernel, batch, steps, channels, mixes, with_prev):
    inputs = random_inputs(batch, steps, channels, mixes, with_prev, seed=steps)
    ours = outputs_and_grads(lambda *a: token_mix_compiled(cpu_kernel, *a), *inputs)
    twin = outputs_and_grads(token_mix_reference, *inputs)
    assert len(ours) == len(twin) == mixes + (3 if with_prev else 2)
    for got, want in zip(ours, twin):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_fused_mix_gives_the_same_bits_at_any_thread_count(cpu_kernel):
    inputs = random_inputs(3, 300, 32, 6, with_prev=True, seed=5)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = outputs_and_grads(lambda *a: token_mix_compiled(cpu_kernel, *a), *inputs)
        torch.set_num_threads(3)
        three = outputs_and_grads(lambda *a: token_mix_compiled(cpu_kernel, *a), *inputs)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, three))


def test_first_token_mixes_with_x_prev_or_zeros():
    x, x_prev, mix = random_inputs(2, 3, 4, 2, with_prev=True)
    out = token_mix(x, x_prev, mix)
    torch.testing.assert_close(out[1][:, 0], x[:, 0] + (x_prev - x[:, 0]) * mix[1])
    torch.testing.assert_close(out[0][:, 2], x[:, 2] + (x[:, 1] - x[:, 2]) * mix[0])
    torch.testing.assert_close(token_mix(x, None, mix)[0][:, 0], x[:, 0] * (1 - mix[0]))


def test_fallback_to_the_twin_warns_once(kernel_build_fails):
    inputs = random_inputs(2, 5, 8, 6, with_prev=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = [token_mix(*inputs) for _ in range(2)]
    assert len(caught) == 1 and "no compiler here" in str(caught[0].message)
    twin = token_mix_reference(*inputs)
    assert all(torch.equal(a, b) for outs in results for a, b in zip(outs, twin, strict=True))


def test_an_unused_mix_gets_no_gradient_and_the_rest_match(cpu_kernel):
    x, x_prev, mix = random_inputs(2, 70, 8, 3, with_prev=True, seed=2)

    def loss_of_mix_1(fn):
        leaves = [t.clone().requires_grad_(True) for t in (x, x_prev, mix)]
        fn(*leaves)[1].square().sum().backward()
        return [leaf.grad for leaf in leaves]

    ours = loss_of_mix_1(lambda *a: token_mix_compiled(cpu_kernel, *a))
    twin = loss_of_mix_1(token_mix_reference)
    for got, want in zip(ours, twin):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not ours[2][[0, 2]].any()
