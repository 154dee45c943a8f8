"""The decoding interface that the completion engine (`pianomuse.complete`) drives, and RWKV-7's implementation.

The engine reads a prompt once, forks the result K ways, then steps the K streams together one token at a time;
a stream leaves the batch when it is done. Any model that can do the four operations of `Decoder` can be sampled
that way, under the same grammar mask and with the same seeded draws:

    RWKV7Decoder        state: the RNN state (constant size); each step is one call into the compiled CPU kernel
    TransformerDecoder  state: a KV cache (pianomuse.transformer)
    NgramDecoder        state: the last n-1 tokens of each stream (pianomuse.ngram)
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from pianomuse.decode_step import decode_step_for
from pianomuse.model import RWKV7, LayerState, State, state_repeat


class Decoder(Protocol):
    model: Any  # what is decoded (the torch module, or the n-gram tables)
    device: torch.device | str  # where ids and row masks go

    def prefill(self, ids: list[int]) -> tuple[torch.Tensor, Any]:
        """Read one stream's ids: (logits [1, V] for the token after them, the state after them)."""

    def step(self, ids: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """One token per stream, ids [B] -> (logits [B, V], the state after it). The state passed in may be
        consumed (advanced in place): callers pass each state once and go on with the returned one."""

    def repeat(self, state: Any, k: int) -> Any:
        """Each stream's state k times: row b becomes rows b*k .. b*k+k-1."""

    def select(self, state: Any, rows: torch.Tensor) -> Any:
        """The streams a [B] bool mask keeps."""


class RWKV7Decoder:
    """RWKV-7 in its two exact modes: the prompt in parallel (GPT) mode, then RNN steps. `step` is the compiled CPU
    kernel's where it can be built for this model, else `RWKV7.step` (see `decode_step_for`)."""

    def __init__(self, model: RWKV7):
        self.model = model
        self.device = model.emb.weight.device
        self.step = decode_step_for(model)

    def prefill(self, ids: list[int]) -> tuple[torch.Tensor, State]:
        logits, state = self.model(torch.tensor([ids], device=self.device), return_state=True)
        return logits[:, -1], state

    def repeat(self, state: State, k: int) -> State:
        return state_repeat(state, k)

    def select(self, state: State, rows: torch.Tensor) -> State:
        rows = rows.to(self.device)
        return [LayerState(*(tensor[rows] for tensor in layer)) for layer in state]
