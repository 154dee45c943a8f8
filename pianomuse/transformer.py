"""A GPT-style causal Transformer over REMI tokens: the same-size baseline that RWKV-7 is measured against.

    forward(idx)                 parallel over [B, T]: training, validation NLL, prompt prefill (with a cache)
    forward(idx, cache=cache)    continues after what the KV cache holds and appends idx's keys and values to it

Pre-LayerNorm blocks (causal self-attention through `F.scaled_dot_product_attention`, then a GELU MLP), a final
LayerNorm and an untied head, as nanoGPT minus the biases of the linear layers (RWKV-7 has none either).
Choices made for a fair comparison with `pianomuse.model.RWKV7` at the same n_layer / n_embd / head_size:
- rotary positions (RoPE) rather than a learned table: no maximum length to configure, a prompt of any length can
  be read (as RWKV-7 can), and attention sees relative offsets, which is what repeating a bar-long figure needs;
- an untied head, as RWKV-7's: embedding and head hold the same parameters in both models, and the blocks differ;
- the MLP width is the free knob that brings the parameter count to RWKV-7's (see `pianomuse.models`);
- the embedding is `emb` and the head `head`, so the optimiser's decay groups apply unchanged
  (`train.optimizer_groups`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


@dataclass
class TransformerConfig:
    vocab_size: int
    n_layer: int
    n_embd: int
    mlp_hidden: int  # width of each block's MLP
    head_size: int = 64
    dropout: float = 0.0
    grad_checkpoint: bool = False
    rope_base: float = 10000.0

    def __post_init__(self):
        assert self.n_embd % self.head_size == 0, "n_embd must be a multiple of head_size"
        assert self.head_size % 2 == 0, "rotary positions rotate pairs of channels: head_size must be even"

    @property
    def n_head(self) -> int:
        return self.n_embd // self.head_size


@dataclass
class KVCache:
    """Keys and values of every position read so far, per layer [B, H, capacity, N]; the first `length` are used.

    The capacity doubles when full, so appending one token per step costs amortised O(1) copies."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    length: int = 0

    @classmethod
    def empty(
        cls, config: TransformerConfig, batch_size: int, device: torch.device | str, dtype: torch.dtype
    ) -> KVCache:
        shape = (batch_size, config.n_head, 0, config.head_size)
        return cls(
            [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)],
            [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)],
        )

    def reserve(self, length: int) -> None:
        capacity = self.keys[0].shape[2]
        if length <= capacity:
            return
        capacity = max(length, 2 * capacity, 64)

        def grown(t: torch.Tensor) -> torch.Tensor:
            bigger = t.new_zeros(t.shape[0], t.shape[1], capacity, t.shape[3])
            bigger[:, :, : self.length] = t[:, :, : self.length]
            return bigger

        self.keys, self.values = [grown(t) for t in self.keys], [grown(t) for t in self.values]

    def repeat(self, k: int) -> KVCache:
        """Each row k times (row b -> rows b*k .. b*k+k-1): prefill once, sample k ways."""
        return KVCache([t.repeat_interleave(k, dim=0) for t in self.keys],
                       [t.repeat_interleave(k, dim=0) for t in self.values], self.length)  # fmt: skip

    def select(self, rows: torch.Tensor) -> KVCache:
        """The rows a [B] bool mask keeps."""
        return KVCache([t[rows] for t in self.keys], [t[rows] for t in self.values], self.length)


def rotate(x: torch.Tensor, start: int, base: float) -> torch.Tensor:
    """RoPE on x [B, H, T, N] at positions start .. start+T-1 (the half-split form of GPT-NeoX / Llama)."""
    T, N = x.shape[2], x.shape[3]
    inv_freq = base ** (-torch.arange(0, N, 2, device=x.device, dtype=torch.float32) / N)
    angles = torch.arange(start, start + T, device=x.device, dtype=torch.float32)[:, None] * inv_freq
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., : N // 2], x[..., N // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class SelfAttention(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        C = config.n_embd
        self.n_head, self.head_size, self.rope_base = config.n_head, config.head_size, config.rope_base
        self.qkv = nn.Linear(C, 3 * C, bias=False)
        self.output = nn.Linear(C, C, bias=False)

    def forward(self, x: torch.Tensor, cache: KVCache | None, layer: int) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.head_size).permute(2, 0, 3, 1, 4)
        start = 0 if cache is None else cache.length
        q, k = rotate(q, start, self.rope_base), rotate(k, start, self.rope_base)
        mask, causal = None, True
        if cache is not None:
            cache.keys[layer][:, :, start : start + T] = k
            cache.values[layer][:, :, start : start + T] = v
            k, v = cache.keys[layer][:, :, : start + T], cache.values[layer][:, :, : start + T]
            if start > 0:  # queries at start.. see every cached key and the new ones up to their own position
                causal = False
                if T > 1:
                    positions = torch.arange(start + T, device=x.device)
                    mask = positions <= positions[start:, None]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and T > 1)
        return self.output(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        C = config.n_embd
        self.ln1 = nn.LayerNorm(C)
        self.att = SelfAttention(config)
        self.ln2 = nn.LayerNorm(C)
        self.mlp = nn.Sequential(
            nn.Linear(C, config.mlp_hidden, bias=False), nn.GELU(), nn.Linear(config.mlp_hidden, C, bias=False)
        )
        self.drop = nn.Dropout(config.dropout)  # on each branch's output, as RWKV-7's blocks

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.drop(self.att(self.ln1(x), cache, layer))
        return x + self.drop(self.mlp(self.ln2(x)))


class Transformer(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        C, V = config.n_embd, config.vocab_size
        self.emb = nn.Embedding(V, C)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_out = nn.LayerNorm(C)
        self.head = nn.Linear(C, V, bias=False)
        # GPT-2's initialisation: N(0, 0.02), the projections into the residual stream scaled by 1/sqrt(2L).
        residual = ("att.output.weight", "mlp.2.weight")
        for name, param in self.named_parameters():
            if param.ndim == 2:
                nn.init.normal_(param, std=0.02 / math.sqrt(2 * config.n_layer) if name.endswith(residual) else 0.02)

    def forward(
        self, idx: torch.Tensor, head_positions: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> torch.Tensor:
        """Logits [B, T, V] for idx [B, T], or [len(head_positions), V] at those flat positions (as
        `RWKV7.forward`). With a cache, idx follows the cached positions and its keys and values are appended."""
        B, T = idx.shape
        x = self.emb(idx)
        if cache is not None:
            cache.reserve(cache.length + T)
        for i, block in enumerate(self.blocks):
            if self.config.grad_checkpoint and self.training and torch.is_grad_enabled() and cache is None:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x, cache, i)
        if cache is not None:
            cache.length += T
        if head_positions is not None:
            x = x.reshape(B * T, -1)[head_positions]
        return self.head(self.ln_out(x))


class TransformerDecoder:
    """`pianomuse.decoding.Decoder` for the Transformer: the state is a KV cache."""

    def __init__(self, model: Transformer):
        self.model = model
        self.device = model.emb.weight.device

    def prefill(self, ids: list[int]) -> tuple[torch.Tensor, KVCache]:
        weight = self.model.emb.weight
        cache = KVCache.empty(self.model.config, 1, weight.device, weight.dtype)
        logits = self.model(torch.tensor([ids], device=self.device), cache=cache)
        return logits[:, -1], cache

    def step(self, ids: torch.Tensor, cache: KVCache) -> tuple[torch.Tensor, KVCache]:
        return self.model(ids[:, None], cache=cache)[:, 0], cache

    def repeat(self, cache: KVCache, k: int) -> KVCache:
        return cache.repeat(k)

    def select(self, cache: KVCache, rows: torch.Tensor) -> KVCache:
        return cache.select(rows.to(self.device))
