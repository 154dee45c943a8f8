"""RWKV-7 ("x070", Goose) over REMI music tokens: one model, two exact modes.

    forward(idx)      parallel "GPT mode" over [B, T]: training and prompt prefill
    step(idx, state)  RNN mode, one token per call with a constant-size state: generation

Parameter names, shapes and initialisation follow RWKV-LM's RWKV-v7/train_temp, so `model.state_dict()` is an
RWKV-LM .pth that the `rwkv` pip package (RWKV_V7_ON=1) runs as it is. The one departure: block 0 has no
value-residual parameters (att.v0/v1/v2). RWKV-LM creates them but never uses them (layer 0 *defines* v_first),
and unused parameters break DistributedDataParallel; `save_rwkv_pth` writes placeholders so RWKV-LM loads strictly.

The WKV-7 recurrence, per head, with S an N x N matrix (value dim x key dim):
    S_t = S_{t-1} diag(exp(w_t)) + (S_{t-1} a_t) b_t^T + v_t k_t^T,    y_t = S_t r_t
with w the log decay, a = -kk and b = kk * iclr (kk: the normalised key, iclr: the in-context learning rate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
from torch import Tensor
from torch.autograd.function import FunctionCtx
from torch.utils.checkpoint import checkpoint

from pianomuse.kernels.token_mix import token_mix
from pianomuse.kernels.wkv7 import MAX_LOG_DECAY, wkv7, wkv7_step
from pianomuse.kernels.wkv_keys import wkv_keys


def lora_dim(n_embd: int, factor: float) -> int:
    """RWKV-LM's suggested LoRA rank: factor * sqrt(C), rounded to a multiple of 32, at least 32."""
    return max(32, int(round(factor * n_embd**0.5 / 32) * 32))


@dataclass
class RWKV7Config:
    vocab_size: int
    n_layer: int
    n_embd: int
    head_size: int = 64
    dropout: float = 0.0
    grad_checkpoint: bool = False
    # LoRA ranks of the data-dependent decay (w), in-context learning rate (a), value residual (v) and gate (g).
    # None: RWKV-LM's defaults for n_embd. Checkpoints made elsewhere may use others (load_rwkv_pth reads them).
    decay_lora: int | None = None
    iclr_lora: int | None = None
    value_lora: int | None = None
    gate_lora: int | None = None

    def __post_init__(self):
        assert self.n_embd % self.head_size == 0, "n_embd must be a multiple of head_size"
        self.decay_lora = self.decay_lora or lora_dim(self.n_embd, 2.5)
        self.iclr_lora = self.iclr_lora or lora_dim(self.n_embd, 2.5)
        self.value_lora = self.value_lora or lora_dim(self.n_embd, 1.7)
        self.gate_lora = self.gate_lora or lora_dim(self.n_embd, 5.0)

    @property
    def n_head(self) -> int:
        return self.n_embd // self.head_size


class LayerState(NamedTuple):
    """What one block carries from token to token in RNN mode."""

    att_x: torch.Tensor  # [B, C] the time-mix input of the previous token (token shift)
    wkv: torch.Tensor  # [B, H, N, N] fp32 WKV state, S[b, h, value i, key j]
    ffn_x: torch.Tensor  # [B, C] the channel-mix input of the previous token


State = list[LayerState]


def run_wkv(
    r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, state: Tensor | None
) -> tuple[Tensor, Tensor]:
    """WKV-7 over [B, T, H, N] inputs; a single token with a state goes through the one-step (RNN) kernel."""
    if r.size(1) == 1 and state is not None:
        y, state = wkv7_step(r[:, 0], w[:, 0], k[:, 0], v[:, 0], a[:, 0], b[:, 0], state)
        return y[:, None], state
    return wkv7(r, w, k, v, a, b, state)


def orthogonal(shape: tuple[int, int], gain: float) -> torch.Tensor:
    return nn.init.orthogonal_(torch.empty(shape), gain=gain)


class TimeMix(nn.Module):
    """WKV-7 attention: data-dependent decay, in-context learning rate, value residual, output gate."""

    def __init__(self, config: RWKV7Config, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        self.n_head, self.head_size = config.n_head, config.head_size
        C, L, N = config.n_embd, config.n_layer, config.head_size

        # Initialisation as RWKV-LM: token-shift mixes that shrink with depth, per-channel decay/ICLR/residual
        # profiles (`linear` ramps across channels, `zigzag` repeats within each head), LoRA up-projections at
        # 0.1-orthogonal and down-projections at zero so that every LoRA starts as its constant term.
        ratio_0_to_1 = layer_id / max(1, L - 1)
        ratio_1_to_almost0 = 1.0 - layer_id / L
        channel = torch.arange(C, dtype=torch.float32)
        ddd = (channel / C).view(1, 1, C)
        linear = channel / (C - 1) - 0.5
        zigzag = ((channel % N) - (N - 1) / 2) / ((N - 1) / 2)
        zigzag = zigzag * zigzag.abs()
        www = -6 + 6 * (channel / (C - 1)) ** (1 + ratio_0_to_1**0.3)

        def mix(power: float) -> nn.Parameter:
            return nn.Parameter(1.0 - torch.pow(ddd, power * ratio_1_to_almost0))

        self.x_r, self.x_w, self.x_k = mix(0.2), mix(0.9), mix(0.7)
        self.x_v, self.x_a, self.x_g = mix(0.7), mix(0.9), mix(0.2)

        self.w0 = nn.Parameter((www + 0.5 + zigzag * 2.5).view(1, 1, C))
        self.w1 = nn.Parameter(torch.zeros(C, config.decay_lora))
        self.w2 = nn.Parameter(orthogonal((config.decay_lora, C), 0.1))

        self.a0 = nn.Parameter((-0.19 + zigzag * 0.3 + linear * 0.4).view(1, 1, C))
        self.a1 = nn.Parameter(torch.zeros(C, config.iclr_lora))
        self.a2 = nn.Parameter(orthogonal((config.iclr_lora, C), 0.1))

        if layer_id > 0:  # layer 0 sets v_first and mixes nothing in
            self.v0 = nn.Parameter((0.73 - linear * 0.4).view(1, 1, C))
            self.v1 = nn.Parameter(torch.zeros(C, config.value_lora))
            self.v2 = nn.Parameter(orthogonal((config.value_lora, C), 0.1))

        self.g1 = nn.Parameter(torch.zeros(C, config.gate_lora))
        self.g2 = nn.Parameter(orthogonal((config.gate_lora, C), 0.1))

        self.k_k = nn.Parameter((0.71 - linear * 0.1).view(1, 1, C))
        self.k_a = nn.Parameter(torch.full((1, 1, C), 1.02))
        self.r_k = nn.Parameter(torch.full((self.n_head, N), -0.04))

        self.receptance = nn.Linear(C, C, bias=False)
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)
        self.ln_x = nn.GroupNorm(self.n_head, C, eps=64e-5)  # RWKV-LM's eps: (head_size_divisor 8)^2 * 1e-5

        with torch.no_grad():
            self.receptance.weight.copy_(orthogonal((C, C), 1.0))
            self.key.weight.copy_(orthogonal((C, C), 0.1))
            self.value.weight.copy_(orthogonal((C, C), 1.0))
            self.output.weight.zero_()  # every block starts as the identity
            self.ln_x.weight.fill_(((1 + layer_id) / L) ** 0.7)

    def forward(
        self,
        x: torch.Tensor,
        v_first: torch.Tensor | None,
        x_prev: torch.Tensor | None = None,
        wkv_state: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: [B, T, C] (already ln1-normalised). Returns (output, v_first, last input, WKV state after x)."""
        B, T, C = x.shape
        H, N = self.n_head, self.head_size

        # Token shift: each projection reads its own mix of this token's input and the previous one's.
        mixes = torch.cat([self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g]).view(6, C)
        xr, xw, xk, xv, xa, xg = token_mix(x, x_prev, mixes)

        r = self.receptance(xr)
        # RWKV-LM's decay is exp(-exp(-softplus(-z) - 0.5)) with z = w0 + LoRA; its log is -exp(-0.5) * sigmoid(z),
        # always in (-0.607, 0): every channel forgets at least a little and at most 45% per token.
        w = -MAX_LOG_DECAY * torch.sigmoid(self.w0 + torch.tanh(xw @ self.w1) @ self.w2)
        k = self.key(xk)
        v = self.value(xv)
        if self.layer_id == 0:
            v_first = v
        else:  # value residual: a learned, data-dependent pull towards layer 0's values
            v = v + (v_first - v) * torch.sigmoid(self.v0 + (xv @ self.v1) @ self.v2)
        iclr = torch.sigmoid(self.a0 + (xa @ self.a1) @ self.a2)  # in-context learning rate
        g = torch.sigmoid(xg @ self.g1) @ self.g2

        # a = -kk and b = kk * iclr (kk: the key times k_k, L2-normalised per head), and the key scaled by iclr
        k, a, b = wkv_keys(k, iclr, self.k_k, self.k_a, N)

        def heads(
            t: torch.Tensor,
        ) -> torch.Tensor:  # [B, T, C] -> [B, T, H, N], in one dtype (under autocast w and iclr come out fp32)
            return t.reshape(B, T, H, N).to(r.dtype)

        y, wkv_state = run_wkv(heads(r), heads(w), heads(k), heads(v), heads(a), heads(b), wkv_state)

        y = self.ln_x(y.reshape(B * T, C)).view(B, T, C)
        # The "bonus": the current token's own value, weighted by its receptance-key match (r_k per channel).
        y = y + ((heads(r) * heads(k) * self.r_k).sum(dim=-1, keepdim=True) * heads(v)).view(B, T, C)
        return self.output(y * g), v_first, x[:, -1], wkv_state


class _SquaredReLU(torch.autograd.Function):
    """relu(x)^2 saving only relu(x): autograd's `** 2` backward recomputes a power of the 4C-wide activation."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        positive = torch.relu(x)
        ctx.save_for_backward(positive)
        return positive * positive

    @staticmethod
    def backward(ctx: FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        (positive,) = ctx.saved_tensors
        return grad * (positive + positive)


def squared_relu(x: torch.Tensor) -> torch.Tensor:
    return _SquaredReLU.apply(x)


class ChannelMix(nn.Module):
    """The feed-forward: token shift, then a squared-ReLU MLP of width 4C."""

    def __init__(self, config: RWKV7Config, layer_id: int):
        super().__init__()
        C = config.n_embd
        ddd = (torch.arange(C, dtype=torch.float32) / C).view(1, 1, C)
        self.x_k = nn.Parameter(1.0 - torch.pow(ddd, (1.0 - layer_id / config.n_layer) ** 4))
        self.key = nn.Linear(C, 4 * C, bias=False)
        self.value = nn.Linear(4 * C, C, bias=False)
        with torch.no_grad():
            self.key.weight.copy_(orthogonal((4 * C, C), 1.0))
            self.value.weight.zero_()

    def forward(self, x: torch.Tensor, x_prev: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        k = squared_relu(self.key(token_mix(x, x_prev, self.x_k.view(1, -1))[0]))
        return self.value(k), x[:, -1]


class Block(nn.Module):
    def __init__(self, config: RWKV7Config, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        C = config.n_embd
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(C)  # normalises the (tiny-initialised) embeddings
        self.ln1 = nn.LayerNorm(C)
        self.ln2 = nn.LayerNorm(C)
        self.att = TimeMix(config, layer_id)
        self.ffn = ChannelMix(config, layer_id)
        self.drop = nn.Dropout(config.dropout)  # on each branch's output; RWKV-LM's x070 has none (dropout 0)

    def forward(
        self, x: torch.Tensor, v_first: torch.Tensor | None, state: LayerState | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, LayerState]:
        if self.layer_id == 0:
            x = self.ln0(x)
        att_x, wkv, ffn_x = state if state is not None else (None, None, None)
        att_out, v_first, att_x, wkv = self.att(self.ln1(x), v_first, att_x, wkv)
        x = x + self.drop(att_out)
        ffn_out, ffn_x = self.ffn(self.ln2(x), ffn_x)
        x = x + self.drop(ffn_out)
        return x, v_first, LayerState(att_x, wkv, ffn_x)


class RWKV7(nn.Module):
    """Embedding, L blocks (time-mix + channel-mix, pre-LayerNorm residuals), final LayerNorm and head."""

    def __init__(self, config: RWKV7Config):
        super().__init__()
        self.config = config
        C, V = config.n_embd, config.vocab_size
        self.emb = nn.Embedding(V, C)
        self.blocks = nn.ModuleList([Block(config, i) for i in range(config.n_layer)])
        self.ln_out = nn.LayerNorm(C)
        self.head = nn.Linear(C, V, bias=False)
        with torch.no_grad():
            nn.init.uniform_(self.emb.weight, -1e-4, 1e-4)  # ln0 rescales them; small embeddings train faster
            self.head.weight.copy_(orthogonal((V, C), 0.5 * math.sqrt(V / C) if V > C else 0.5))

    def forward(
        self,
        idx: torch.Tensor,
        state: State | None = None,
        head_positions: torch.Tensor | None = None,
        return_state: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, State]:
        """Parallel mode over idx [B, T], continuing from `state` (None: the start of a sequence).

        head_positions: a LongTensor of flat indices into the B*T positions (row b, time t -> b*T + t); only those
        hidden states go through ln_out and the head, and the logits are [len(head_positions), V] instead of
        [B, T, V]. See `head_positions_from_spans`.
        return_state: also return the state after the last token, to continue with `step` or another forward.
        """
        B, T = idx.shape
        x = self.emb(idx)
        v_first = None
        new_state = []
        for i, block in enumerate(self.blocks):
            layer_state = None if state is None else state[i]
            if self.config.grad_checkpoint and self.training and torch.is_grad_enabled():
                x, v_first, layer_state = checkpoint(block, x, v_first, layer_state, use_reentrant=False)
            else:
                x, v_first, layer_state = block(x, v_first, layer_state)
            new_state.append(layer_state)
        if head_positions is not None:
            x = x.reshape(B * T, -1)[head_positions]
        logits = self.head(self.ln_out(x))
        return (logits, new_state) if return_state else logits

    def step(self, idx: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """RNN mode: one token per row, idx [B] -> (logits [B, V], the state after it)."""
        logits, state = self.forward(idx[:, None], state, return_state=True)
        return logits[:, 0], state

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """The state before the first token: all zeros."""
        C, H, N = self.config.n_embd, self.config.n_head, self.config.head_size
        dtype = self.emb.weight.dtype
        device = device if device is not None else self.emb.weight.device
        return [
            LayerState(
                att_x=torch.zeros(batch_size, C, dtype=dtype, device=device),
                wkv=torch.zeros(batch_size, H, N, N, dtype=torch.float32, device=device),
                ffn_x=torch.zeros(batch_size, C, dtype=dtype, device=device),
            )
            for _ in range(self.config.n_layer)
        ]


def state_repeat(state: State, k: int) -> State:
    """Each row's state k times, in place order: row b becomes rows b*k .. b*k+k-1 (prefill once, sample k ways)."""
    return [LayerState(*(t.repeat_interleave(k, dim=0) for t in layer)) for layer in state]


def head_positions_from_spans(spans: list[tuple[int, int]], seq_len: int) -> torch.Tensor:
    """Flat head positions for `forward`: spans[b] = (start, end) selects positions start..end-1 of row b.

    For a row holding context c followed by completion m (inputs = tokens[:-1]), the positions that predict the
    completion are (len(c) - 1, len(c) + len(m) - 1).
    """
    return torch.cat([torch.arange(start, end) + row * seq_len for row, (start, end) in enumerate(spans)])


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints in RWKV-LM's .pth layout

# Layer 0's value-residual parameters exist in RWKV-LM checkpoints but are never used (see the module docstring).
UNUSED_LAYER0_KEYS = ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2")


def save_rwkv_pth(model: RWKV7, path: str | Path) -> None:
    """The weights as an RWKV-LM .pth (fp32, CPU), with layer 0's unused v0/v1/v2 as zeros so it loads strictly."""
    weights = {name: t.detach().cpu().clone() for name, t in model.state_dict().items()}
    C, value_lora = model.config.n_embd, model.config.value_lora
    weights["blocks.0.att.v0"] = torch.zeros(1, 1, C)
    weights["blocks.0.att.v1"] = torch.zeros(C, value_lora)
    weights["blocks.0.att.v2"] = torch.zeros(value_lora, C)
    torch.save(weights, path)


def config_from_state_dict(weights: dict[str, torch.Tensor], **overrides) -> RWKV7Config:
    """The shapes of an RWKV-LM x070 state dict, as a config (dropout / grad_checkpoint come from `overrides`)."""
    vocab_size, n_embd = weights["emb.weight"].shape
    n_head, head_size = weights["blocks.0.att.r_k"].shape
    n_layer = 1 + max(int(name.split(".")[1]) for name in weights if name.startswith("blocks."))
    value_key = "blocks.1.att.v1" if n_layer > 1 else "blocks.0.att.v1"  # a 1-layer model may have none
    value_lora = weights[value_key].shape[1] if value_key in weights else None
    return RWKV7Config(
        vocab_size=vocab_size,
        n_layer=n_layer,
        n_embd=n_embd,
        head_size=head_size,
        decay_lora=weights["blocks.0.att.w1"].shape[1],
        iclr_lora=weights["blocks.0.att.a1"].shape[1],
        value_lora=value_lora,
        gate_lora=weights["blocks.0.att.g1"].shape[1],
        **overrides,
    )


def load_rwkv_pth(path: str | Path, **overrides: object) -> RWKV7:
    """A model from an RWKV-LM x070 .pth (ours or RWKV-LM's), config inferred from the shapes, weights in fp32."""
    weights = torch.load(path, map_location="cpu", weights_only=True)
    config = config_from_state_dict(weights, **overrides)
    model = RWKV7(config)
    model.load_state_dict({name: t.float() for name, t in weights.items() if name not in UNUSED_LAYER0_KEYS})
    return model
