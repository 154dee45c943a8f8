"""Training-step FLOPs per token, counted from a model's shapes, and the machine's matrix-multiply peak: together
they give MFU, the achieved FLOP/s over that peak.

Conventions: a multiply-add is 2 FLOPs; a training step (forward + backward) costs 3x its forward (the backward of a
product computes two products of the same size). Only products are counted (matrix products, the WKV-7 recurrence's
matrix-vector and outer products, attention's QK^T and AV); elementwise work, norms and the softmax are not, as in
the usual MFU accounting (PaLM, appendix B). `scored_fraction` is the share of positions whose hidden state goes
through the head (1.0 when the loss scores every token of a window).
"""

from __future__ import annotations

import time

import torch

from pianomuse.devices import synchronize
from pianomuse.model import RWKV7Config
from pianomuse.transformer import TransformerConfig

TRAIN_MULTIPLIER = 3  # forward + backward (2x forward)


def rwkv7_forward_flops(
    n_layer: int,
    n_embd: int,
    head_size: int,
    vocab_size: int,
    lora: tuple[int, int, int, int],
    scored_fraction: float = 1.0,
) -> dict[str, float]:
    """Forward FLOPs per token of RWKV-7 by part; lora = (decay, iclr, value, gate) ranks.

    Per block: receptance/key/value/output (4 C x C), channel mix (C x 4C and 4C x C), the LoRA branches (C x r and
    r x C each; block 0 has no value-residual LoRA), and the WKV-7 recurrence: per head and token S a, y = S r (two
    N x N matrix-vector products) and the two rank-1 updates (S a) b^T and v k^T.
    """
    C, N = n_embd, head_size
    decay, iclr, value, gate = lora
    lora_ranks = n_layer * (decay + iclr + gate) + (n_layer - 1) * value
    return {
        "linear": n_layer * 2 * (4 * C * C + 8 * C * C),
        "lora": 2 * 2 * C * lora_ranks,
        "wkv": n_layer * (C // N) * 4 * 2 * N * N,
        "head": 2 * C * vocab_size * scored_fraction,
    }


def rwkv7_train_flops_per_token(config: RWKV7Config, scored_fraction: float = 1.0) -> float:
    """Training-step FLOPs per token of an `RWKV7Config`."""
    return train_flops(config, 1, scored_fraction, ctx=0)


def transformer_forward_flops(
    n_layer: int, d_model: int, d_ff: int, vocab_size: int, ctx: int, scored_fraction: float = 1.0
) -> dict[str, float]:
    """Forward FLOPs per token of a GPT-style causal Transformer over windows of `ctx` tokens, by part.

    Per layer: the Q, K, V and output projections (4 d x d), the MLP (d x d_ff and back) and attention. Under the
    causal mask the token at position t attends to t + 1 positions, (ctx + 1) / 2 on average; QK^T and AV cost
    2 d FLOPs each per attended position. Only the needed (unmasked) half counts.
    """
    d = d_model
    return {
        "linear": n_layer * 2 * (4 * d * d + 2 * d * d_ff),
        "attention": n_layer * 2 * 2 * d * (ctx + 1) / 2,
        "head": 2 * d * vocab_size * scored_fraction,
    }


def transformer_train_flops_per_token(
    n_layer: int, d_model: int, d_ff: int, vocab_size: int, ctx: int, scored_fraction: float = 1.0
) -> float:
    parts = transformer_forward_flops(n_layer, d_model, d_ff, vocab_size, ctx, scored_fraction)
    return TRAIN_MULTIPLIER * sum(parts.values())


def train_flops(config: RWKV7Config | TransformerConfig, tokens: float, scored: float, ctx: int) -> float:
    """Training-step FLOPs of `tokens` real (unpadded) input tokens of which `scored` go through the head, in
    windows padded to `ctx` (the Transformer's attention is counted at that length)."""
    if isinstance(config, RWKV7Config):
        lora = (config.decay_lora, config.iclr_lora, config.value_lora, config.gate_lora)
        parts = rwkv7_forward_flops(config.n_layer, config.n_embd, config.head_size, config.vocab_size, lora)
    else:
        parts = transformer_forward_flops(config.n_layer, config.n_embd, config.mlp_hidden, config.vocab_size, ctx)
    head = parts.pop("head")
    return TRAIN_MULTIPLIER * (sum(parts.values()) * tokens + head * scored)


def matmul_peak(
    device: torch.device | str, size: int = 2048, repeats: int = 3, dtype: torch.dtype = torch.float32
) -> float:
    """The best FLOP/s of a size x size x size torch.mm over `repeats` runs (after one warm-up), on `device` in
    `dtype`. The operands come from a private generator: measuring never moves torch's global random state."""
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.rand(size, size, generator=generator).to(device, dtype) for _ in range(2))
    best = float("inf")
    for i in range(repeats + 1):
        synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        if i:
            best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best
