"""RNN-mode decoding: a whole RWKV-7 step (every block and the head) in one call to the compiled CPU kernel.

It sits beside the model it steps (it reads the model's weights and state), above the kernels layer.

In RNN mode every op of `RWKV7.step` works on one token per stream, so on a CPU that step's time goes into
dispatching ~100 small torch ops per block rather than into arithmetic. `kernels/csrc/rwkv7_decode_cpu.cpp` computes the
same step with plain loops between its matrix products. `RWKV7.step` is its twin: tests compare the two, and
`decode_step_for` falls back to it (with the compiled-kernel warning) where the kernel cannot be built.
"""

from __future__ import annotations

from types import ModuleType
from typing import Callable

import torch

from pianomuse.kernels.wkv7 import compiled_kernel
from pianomuse.model import RWKV7, LayerState, State

# (idx [B], state) -> (logits [B, V], the state after idx). A step may consume the state it is given (CompiledStep
# advances it in place): callers pass each state once and go on with the returned one.
Step = Callable[[torch.Tensor, State], tuple[torch.Tensor, State]]

# The order of kernels/csrc/rwkv7_decode_cpu.cpp's `LayerWeight`: (module path in a Block, parameter) per slot.
LAYER_WEIGHTS = [
    ("ln0", "weight"), ("ln0", "bias"), ("ln1", "weight"), ("ln1", "bias"), ("ln2", "weight"), ("ln2", "bias"),
    ("att", "x_r"), ("att", "x_w"), ("att", "x_k"), ("att", "x_v"), ("att", "x_a"), ("att", "x_g"),
    ("att", "w0"), ("att", "w1"), ("att", "w2"), ("att", "a0"), ("att", "a1"), ("att", "a2"),
    ("att", "v0"), ("att", "v1"), ("att", "v2"), ("att", "g1"), ("att", "g2"),
    ("att", "k_k"), ("att", "k_a"), ("att", "r_k"),
    ("att.receptance", "weight"), ("att.key", "weight"), ("att.value", "weight"), ("att.output", "weight"),
    ("att.ln_x", "weight"), ("att.ln_x", "bias"),
    ("ffn", "x_k"), ("ffn.key", "weight"), ("ffn.value", "weight"),
]  # fmt: skip
VECTORS = {"x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "a0", "v0", "k_k", "k_a", "r_k"}  # stored [1, 1, C] / [H, N]


def decode_weights(model: RWKV7) -> list[torch.Tensor]:
    """The kernel's flat weight list: views of the model's parameters (no copies), so it sees in-place updates.
    Slots a block lacks (ln0 after block 0, the value residual of block 0) are empty tensors."""
    weights = [model.emb.weight, model.ln_out.weight, model.ln_out.bias, model.head.weight]
    for block in model.blocks:
        for module_path, name in LAYER_WEIGHTS:
            try:
                tensor = getattr(block.get_submodule(module_path), name)
            except AttributeError:  # the block has no such module or parameter
                tensor = torch.empty(0)
            weights.append(tensor.reshape(-1) if name in VECTORS else tensor)
    return [w.detach() for w in weights]


class CompiledStep:
    """`RWKV7.step` through the compiled CPU kernel; same arguments and results, except that the state passed in is
    consumed: its tensors are advanced in place (a fresh WKV state per step costs more than the step's arithmetic)."""

    def __init__(self, kernel: ModuleType, model: RWKV7):
        self.kernel = kernel
        self.weights = decode_weights(model)
        self.head_size = model.config.head_size
        self.ln_eps = model.blocks[0].ln1.eps
        self.ln_x_eps = model.blocks[0].att.ln_x.eps

    def __call__(self, idx: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        flat = [tensor.contiguous() for layer in state for tensor in layer]  # a forward's att_x/ffn_x are views
        logits = self.kernel.decode_step(idx, self.weights, flat, self.head_size, self.ln_eps, self.ln_x_eps)
        return logits, [LayerState(*flat[i : i + 3]) for i in range(0, len(flat), 3)]


def decode_step_for(model: RWKV7) -> Step:
    """The fastest inference RNN step for this model (eval mode: no dropout, no autograd): the compiled one for an
    fp32 model on the CPU, else `model.step`. See `Step`: the state passed in may be consumed."""
    weight = model.emb.weight
    if weight.device.type != "cpu" or weight.dtype != torch.float32:
        return model.step
    kernel = compiled_kernel("cpu")
    return model.step if kernel is None else CompiledStep(kernel, model)
