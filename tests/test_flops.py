"""FLOPs per token from shapes, checked against torch's own FLOP counter on a real forward + backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

import pianomuse.model as model_module
from pianomuse.flops import (
    matmul_peak,
    rwkv7_forward_flops,
    rwkv7_train_flops_per_token,
    train_flops,
    transformer_forward_flops,
    transformer_train_flops_per_token,
)
from pianomuse.model import RWKV7, RWKV7Config
from pianomuse.transformer import TransformerConfig


def counted_train_flops(model: nn.Module, idx: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        model(idx).float().square().mean().backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("n_layer, n_embd, lora", [(1, 64, (32, 32, 32, 32)), (3, 128, (32, 64, 32, 96))])
def test_rwkv7_matrix_products_match_the_flop_counter(monkeypatch, n_layer, n_embd, lora):
    """Every matrix product of a training step is counted (the WKV op is replaced by product-free arithmetic, which
    the counter would not see in the compiled kernel either, and counted apart below)."""
    monkeypatch.setattr(model_module, "run_wkv", lambda r, w, k, v, a, b, state: (r * w * k + v * a * b, None))
    config = RWKV7Config(
        vocab_size=37,
        n_layer=n_layer,
        n_embd=n_embd,
        head_size=32,
        decay_lora=lora[0],
        iclr_lora=lora[1],
        value_lora=lora[2],
        gate_lora=lora[3],
    )
    model = RWKV7(config)
    idx = torch.randint(0, 37, (2, 11))
    parts = rwkv7_forward_flops(n_layer, n_embd, 32, 37, lora)
    assert counted_train_flops(model, idx) == 3 * (parts["linear"] + parts["lora"] + parts["head"]) * idx.numel()
    assert rwkv7_train_flops_per_token(config) == 3 * sum(parts.values())


def test_wkv_flops_are_four_products_per_head_and_token():
    parts = rwkv7_forward_flops(2, 128, 64, 10, (32, 32, 32, 32))
    # per layer, 2 heads x (S a, S r, (S a) b^T, v k^T), each 64 x 64 multiply-adds
    assert parts["wkv"] == 2 * 2 * 4 * 2 * 64 * 64


def test_head_flops_scale_with_the_scored_positions():
    full = rwkv7_forward_flops(2, 128, 64, 100, (32, 32, 32, 32))
    half = rwkv7_forward_flops(2, 128, 64, 100, (32, 32, 32, 32), scored_fraction=0.5)
    assert half["head"] == full["head"] / 2 == 128 * 100
    assert {k: v for k, v in half.items() if k != "head"} == {k: v for k, v in full.items() if k != "head"}


def test_transformer_linear_flops_match_the_flop_counter():
    d, d_ff, vocab, ctx = 64, 256, 41, 12

    class Tiny(nn.Module):  # the linear parts of a pre-norm GPT layer stack (attention itself is not counted by torch)
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(vocab, d)
            layer = nn.TransformerEncoderLayer(d, 2, d_ff, dropout=0.0, batch_first=True, norm_first=True)
            self.layers = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = nn.Linear(d, vocab, bias=False)

        def forward(self, idx):
            mask = nn.Transformer.generate_square_subsequent_mask(idx.size(1))
            return self.head(self.layers(self.emb(idx), mask=mask, is_causal=True))

    idx = torch.randint(0, vocab, (3, ctx))
    parts = transformer_forward_flops(2, d, d_ff, vocab, ctx)
    assert counted_train_flops(Tiny(), idx) == 3 * (parts["linear"] + parts["head"]) * idx.numel()


def test_causal_attention_counts_the_unmasked_triangle():
    ctx, d, layers = 10, 8, 3
    attended = sum(t + 1 for t in range(ctx))  # query t sees keys 0..t
    per_token = transformer_forward_flops(layers, d, 4 * d, 5, ctx)["attention"]
    assert per_token * ctx == layers * 2 * 2 * d * attended  # QK^T and AV, one multiply-add per entry and channel
    longer = transformer_train_flops_per_token(layers, d, 4 * d, 5, 2 * ctx)
    assert longer - transformer_train_flops_per_token(layers, d, 4 * d, 5, ctx) == 3 * layers * 2 * d * ctx


def test_a_batch_costs_its_tokens_through_the_body_and_its_scored_positions_through_the_head():
    config = RWKV7Config(vocab_size=100, n_layer=2, n_embd=128, head_size=64)
    lora = (config.decay_lora, config.iclr_lora, config.value_lora, config.gate_lora)
    parts = rwkv7_forward_flops(2, 128, 64, 100, lora)
    body = parts["linear"] + parts["lora"] + parts["wkv"]
    assert train_flops(config, tokens=10, scored=4, ctx=7) == 3 * (10 * body + 4 * parts["head"])
    assert train_flops(config, tokens=10, scored=10, ctx=7) == 10 * rwkv7_train_flops_per_token(config)
    transformer = TransformerConfig(vocab_size=100, n_layer=2, n_embd=128, mlp_hidden=256)
    at_ctx = transformer_forward_flops(2, 128, 256, 100, ctx=33)
    expected = 3 * (10 * (at_ctx["linear"] + at_ctx["attention"]) + 4 * at_ctx["head"])
    assert train_flops(transformer, tokens=10, scored=4, ctx=33) == expected


def test_the_matmul_peak_is_a_rate_and_leaves_the_global_random_state_alone():
    """Measuring at the start of training must not shift the seeded run's random numbers (bit-exact resume)."""
    before = torch.random.get_rng_state()
    peak = matmul_peak("cpu", 64, repeats=2)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert 0 < peak < float("inf")
