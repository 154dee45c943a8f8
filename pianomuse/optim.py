"""The optimiser and its schedule: AdamW with RWKV-LM's parameter groups, linear warmup, then a cosine decay."""

from __future__ import annotations

import math
from functools import partial

import torch


def optimizer_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups in the RWKV-LM manner.

    Only the 2-D weight matrices of the linear layers decay; the embedding, norms, biases, token-shift mixes and
    the LoRA-style time-mix parameters (w1, a2, ... , which are not `.weight`s) do not. The decay base `att.w0`
    learns at twice the rate, as in RWKV-LM's train_temp.
    """
    decay, no_decay, fast = [], [], []
    for name, param in model.named_parameters():
        if name.endswith("att.w0"):
            fast.append(param)
        elif name.endswith(".weight") and param.ndim == 2 and name != "emb.weight":
            decay.append(param)
        else:
            no_decay.append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
        {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0},
        {"params": fast, "weight_decay": 0.0, "lr_scale": 2.0},
    ]
    return [group for group in groups if group["params"]]


def lr_factor(step: int, warmup_steps: int, max_steps: int, min_ratio: float) -> float:
    """Linear warmup to 1 over `warmup_steps`, then a cosine down to `min_ratio` at `max_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(
    model: torch.nn.Module,
    lr: float,
    min_lr: float,
    warmup_steps: int,
    max_steps: int,
    weight_decay: float,
    betas: tuple[float, float],
    adam_eps: float,
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over `optimizer_groups` and its LambdaLR schedule (`lr_factor`), stepped once per optimiser step."""
    groups = optimizer_groups(model, weight_decay)
    for group in groups:
        group["lr"] = lr * group["lr_scale"]
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=adam_eps)
    schedule = partial(lr_factor, warmup_steps=warmup_steps, max_steps=max_steps, min_ratio=min_lr / lr)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
