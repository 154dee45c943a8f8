"""Scoring a model on bar windows: the NLL of the scored tokens of a batch, its mean over a loader, the unigram
baseline every model must beat, and the fixed subset of windows that training validates on and evaluation scores.

Training and the evaluate stage score with these same functions, so that their numbers compare.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow.compute as pc
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from contextlib import AbstractContextManager

    import datasets

    from pianomuse.batching import Batch


def batch_nll(model: torch.nn.Module, batch: Batch, reduction: str = "mean") -> torch.Tensor:
    """NLL of the batch's scored tokens; only their positions' hidden states go through the head."""
    logits = model(batch.inputs, head_positions=batch.head_positions)
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), batch.targets, reduction=reduction)


@torch.no_grad()
def mean_nll(
    model: torch.nn.Module,
    loader: Iterable[Batch],
    device: torch.device,
    autocast: Callable[[], AbstractContextManager],
) -> float:
    """Validation NLL per completion token over all batches of `loader`."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in loader:
        batch = batch.to(device)
        with autocast():
            total += batch_nll(model, batch, reduction="sum").item()
        count += batch.targets.numel()
    model.train(was_training)
    return total / count


def unigram_log_probs(train_ds: datasets.Dataset, vocab_size: int) -> np.ndarray:
    """Log-probability of each token under the train completion-token frequencies."""
    train_tokens = pc.list_flatten(train_ds.data.column("completion_ids")).to_numpy().astype(np.int64)
    counts = np.bincount(train_tokens, minlength=vocab_size) + 1.0  # add-one: unseen tokens keep a finite cost
    return np.log(counts / counts.sum())


def unigram_nll(train_ds: datasets.Dataset, val_ds: datasets.Dataset, vocab_size: int) -> float:
    """The baseline a model must beat: NLL per validation completion token under train completion-token frequencies."""
    val_tokens = pc.list_flatten(val_ds.data.column("completion_ids")).to_numpy().astype(np.int64)
    return float(-unigram_log_probs(train_ds, vocab_size)[val_tokens].mean())


def eval_subset(val_lengths: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A fixed random subset of validation windows, the same at every evaluation."""
    rng = np.random.default_rng([seed, 1_000_003])
    n = min(n, len(val_lengths))
    return np.sort(rng.choice(len(val_lengths), size=n, replace=False))
