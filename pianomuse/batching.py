"""Token-budget batches of bar windows: similar lengths together, so little of each batch is padding.

A window is `context_ids + completion_ids`. The model reads all but its last token and is scored on the
predictions of every token (`scored="window"`, the training default) or of the completion tokens only
(`scored="completion"`, how validation and test NLL are measured), so a batch carries, besides the padded inputs,
the flat positions whose hidden states reach the head and the tokens they must predict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow.compute as pc
import torch

if TYPE_CHECKING:
    import datasets


def window_lengths(dataset: datasets.Dataset) -> np.ndarray:
    """Tokens per window (context + completion), read from the Arrow columns without decoding the lists."""
    table = dataset.data
    context = pc.list_value_length(table.column("context_ids")).to_numpy()
    completion = pc.list_value_length(table.column("completion_ids")).to_numpy()
    return (context + completion).astype(np.int64)


def pack_by_length(indices: np.ndarray, lengths: np.ndarray, batch_tokens: int) -> list[list[int]]:
    """Sort `indices` by length and cut them into batches whose padded size (rows x longest row) fits the budget."""
    too_long = lengths[indices] > batch_tokens
    if too_long.any():
        raise ValueError(
            f"{too_long.sum()} windows are longer than batch_tokens={batch_tokens} "
            f"(longest: {lengths[indices].max()}); raise train.batch_tokens to at least windows.max_tokens"
        )
    ordered = indices[np.argsort(lengths[indices], kind="stable")]
    batches, batch = [], []
    for i in ordered.tolist():
        # Ascending order: the newcomer is the longest row so far.
        if batch and (len(batch) + 1) * lengths[i] > batch_tokens:
            batches.append(batch)
            batch = []
        batch.append(i)
    if batch:
        batches.append(batch)
    return batches


def epoch_batches(lengths: np.ndarray, batch_tokens: int, seed: int, epoch: int, chunk_windows: int) -> list[list[int]]:
    """One epoch of training batches, reshuffled deterministically from (seed, epoch).

    The windows are shuffled, cut into chunks of `chunk_windows`, and each chunk is packed by length: batches are
    tight, yet which windows meet in a batch changes every epoch. The batch order is shuffled again so that
    consecutive steps do not all see long (or short) windows.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    batches = []
    for start in range(0, len(order), chunk_windows):
        batches += pack_by_length(order[start : start + chunk_windows], lengths, batch_tokens)
    return [batches[i] for i in rng.permutation(len(batches))]


def shard_for_rank(batches: list[list[int]], rank: int, world_size: int) -> list[list[int]]:
    """This rank's share of the batches (data parallel): every rank gets the same number, the remainder is dropped."""
    usable = len(batches) - len(batches) % world_size
    return batches[rank:usable:world_size]


@dataclass
class Batch:
    inputs: torch.Tensor  # (B, T) token ids, right-padded
    head_positions: torch.Tensor  # (N,) flat indices into B*T of the scored positions
    targets: torch.Tensor  # (N,) the tokens those positions must predict
    real_tokens: int  # input tokens that are not padding

    @property
    def padding_fraction(self) -> float:
        return 1.0 - self.real_tokens / self.inputs.numel()

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.inputs.to(device), self.head_positions.to(device), self.targets.to(device), self.real_tokens)


SCORED = ("window", "completion")


def collate_windows(windows: list[tuple[list[int], list[int]]], pad_id: int, scored: str) -> Batch:
    """Pad (context, completion) windows into a batch. Position t predicts token t+1: the last token is no input.

    `scored` picks the predictions that count: every token after the first ("window") or the completion's
    ("completion").
    """
    if scored not in SCORED:
        raise ValueError(f"scored must be one of {SCORED}, not {scored!r}")
    sequences = [list(context) + list(completion) for context, completion in windows]
    width = max(len(s) for s in sequences) - 1
    inputs = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    head_positions, targets = [], []
    for row, ((context, _), sequence) in enumerate(zip(windows, sequences)):
        inputs[row, : len(sequence) - 1] = torch.tensor(sequence[:-1])
        # Positions len(context)-1 .. len(sequence)-2 predict the completion tokens.
        first = len(context) - 1 if scored == "completion" else 0
        head_positions.append(torch.arange(first, len(sequence) - 1) + row * width)
        targets.append(torch.tensor(sequence[first + 1 :]))
    return Batch(
        inputs=inputs,
        head_positions=torch.cat(head_positions),
        targets=torch.cat(targets).long(),
        real_tokens=sum(len(s) - 1 for s in sequences),
    )


class WindowBatches(torch.utils.data.Dataset):
    """Item i is the collated batch of window indices `batches[i]`, fetched from the memory-mapped Arrow dataset."""

    def __init__(self, dataset: datasets.Dataset, batches: list[list[int]], pad_id: int, scored: str):
        self.dataset = dataset.select_columns(["context_ids", "completion_ids"])
        self.batches = batches
        self.pad_id = pad_id
        self.scored = scored

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> Batch:
        rows = self.dataset[self.batches[i]]
        return collate_windows(list(zip(rows["context_ids"], rows["completion_ids"])), self.pad_id, self.scored)


def batch_loader(
    dataset: datasets.Dataset, batches: list[list[int]], pad_id: int, num_workers: int, scored: str
) -> torch.utils.data.DataLoader:
    """Batches in the given order. No randomness lives in the loader, so resuming mid-epoch is just a slice."""
    return torch.utils.data.DataLoader(
        WindowBatches(dataset, batches, pad_id, scored),
        batch_size=None,
        num_workers=num_workers,
        persistent_workers=False,
        # The loader draws a base seed from this generator, not from the global RNG that dropout uses.
        generator=torch.Generator().manual_seed(0),
    )
