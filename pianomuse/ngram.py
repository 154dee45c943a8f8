"""An n-gram model over REMI tokens with interpolated modified Kneser-Ney smoothing: the count-based baseline.

Fitted on the train windows' token streams (context + completion), each window read from its start: a window is
preceded by n-1 boundary tokens (the tokenizer's PAD, which no window contains), as a sentence by <s>. Each bar of a
piece is counted once, although it lies in several overlapping windows (see `fresh_starts`). The order is chosen
by the completion NLL on the validation windows, scored as RWKV-7 is scored: the completion tokens given the
context.

Smoothing (Chen & Goodman 1999, as KenLM estimates it): for a history h and its lower-order history h',

    P(w | h) = max(a(hw) - D(a(hw)), 0) / a(h.) + gamma(h) P(w | h'),   gamma(h) = sum_i D_i N_i(h.) / a(h.)

with three discounts per order (for counts 1, 2 and 3+) from the counts of counts, and a(.) the raw count at the
highest order and the continuation count (distinct one-token left extensions) below it, except for n-grams that
start at the boundary, which cannot be extended to the left and keep their raw counts. Order 1 interpolates with
the uniform distribution over the vocabulary, so every token has a probability above zero. A history never seen
in training has a(h.) = 0: it backs off entirely (gamma = 1).

Why not a library: nltk.lm scores one token in ~30 ms (200k training tokens, order 4), so one validation pass over
~2M tokens per order, or the full next-token distribution at every sampling step, is out of reach; kaldingram
(pure Python, unmodified KN) takes ~4 s per 200k tokens to write an ARPA file with no vectorised query; the `kenlm`
package only queries, and its estimator (lmplz) is a C++ build. Here the n-grams are numbered order by order
(an n-gram's key is its (n-1)-prefix's number x V + its last token), counted with `np.unique`, and looked up with
`np.searchsorted`: the demo's ~13M training tokens fit orders 1-8 in seconds.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pyarrow.compute as pc
import torch

from pianomuse.files import atomic_write, write_json
from pianomuse.tokenizer import load_tokenizer, tokenizer_hash

MIN_DISCOUNT = 0.1  # keeps gamma > 0 on tiny corpora where the counts-of-counts estimate collapses


def padded_streams(sequences: list[np.ndarray], pad: int, boundary: int) -> tuple[np.ndarray, np.ndarray]:
    """All sequences in one array, each preceded by `pad` boundary tokens; and each token's index in its own
    padded sequence (an n-gram ending at t lies inside its sequence when that index is at least n-1)."""
    lengths = np.array([pad + len(s) for s in sequences], dtype=np.int64)
    tokens = np.full(lengths.sum(), boundary, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    for start, sequence in zip(starts, sequences):
        tokens[start + pad : start + pad + len(sequence)] = sequence
    offsets = np.arange(len(tokens)) - np.repeat(starts, lengths)
    return tokens, offsets


def lookup(keys: np.ndarray, query: np.ndarray) -> np.ndarray:
    """The index of each query in sorted `keys`, -1 where absent."""
    at = np.searchsorted(keys, query).clip(max=len(keys) - 1)
    return np.where(keys[at] == query, at, -1)


def gram_key(prefix_ids: np.ndarray, tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    return prefix_ids.astype(np.uint64) * np.uint64(vocab_size) + tokens.astype(np.uint64)


@dataclass
class NgramCounts:
    """Every n-gram of orders 1..max_order in the padded training streams, numbered order by order."""

    vocab_size: int
    boundary: int
    keys: list[np.ndarray]  # [order-1]: sorted uint64 keys, prefix number x V + last token
    counts: list[np.ndarray]  # raw counts of occurrences that end on a real token (not on the padding)
    continuations: list[np.ndarray]  # distinct left extensions with a count (order max_order: unused)
    from_boundary: list[np.ndarray]  # whether the n-gram starts with the boundary token

    @classmethod
    def fit(
        cls, sequences: list[np.ndarray], max_order: int, vocab_size: int, boundary: int,
        counted_from: np.ndarray | None = None,
    ) -> NgramCounts:  # fmt: skip
        """Count the n-grams ending at positions counted_from[i].. of each sequence i (default: all of it); the
        tokens before serve as history only."""
        tokens, offsets = padded_streams(sequences, max_order - 1, boundary)
        first = max_order - 1 + (np.zeros(len(sequences), np.int64) if counted_from is None else counted_from)
        real = offsets >= np.repeat(first, [max_order - 1 + len(s) for s in sequences])
        counts = cls(vocab_size, boundary, [], [], [], [])
        ids = None  # each position's number of the (k-1)-gram ending there, -1 where it would leave its sequence
        for k in range(1, max_order + 1):
            inside = np.flatnonzero(offsets >= k - 1)
            keys = tokens[inside].astype(np.uint64) if k == 1 else gram_key(ids[inside - 1], tokens[inside], vocab_size)
            unique, numbers = np.unique(keys, return_inverse=True)
            counted = numbers[real[inside]]
            counts.keys.append(unique)
            counts.counts.append(np.bincount(counted, minlength=len(unique)))
            from_boundary = np.zeros(len(unique), dtype=bool)
            from_boundary[numbers] = tokens[inside - (k - 1)] == boundary
            counts.from_boundary.append(from_boundary)
            if k > 1:  # continuation counts of the (k-1)-grams: the k-grams that occur, by their (k-1)-suffix
                suffix = np.empty(len(unique), dtype=np.int64)
                suffix[numbers] = ids[inside]  # the suffix ends where the k-gram ends
                counts.continuations.append(np.bincount(suffix[counts.counts[-1] > 0], minlength=len(counts.keys[-2])))
            ids = np.full(len(tokens), -1, dtype=np.int64)
            ids[inside] = numbers
        counts.continuations.append(np.zeros(len(counts.keys[-1]), dtype=np.int64))
        return counts


def discounts(adjusted: np.ndarray) -> np.ndarray:
    """[D(0)=0, D1, D2, D3+] from the counts of counts (Chen & Goodman), each clipped to [MIN_DISCOUNT, i]."""
    n1, n2, n3, n4 = (np.float64(np.sum(adjusted == i)) for i in (1, 2, 3, 4))
    with np.errstate(divide="ignore", invalid="ignore"):
        y = n1 / (n1 + 2 * n2)
        estimates = np.array([1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3])
    fallback = y if np.isfinite(y) else 0.5  # plain KN's single discount, where a count of counts is zero
    estimates = np.where(np.isfinite(estimates), estimates, fallback)
    return np.concatenate([[0.0], np.clip(estimates, MIN_DISCOUNT, [1.0, 2.0, 3.0])])


@dataclass
class NgramModel:
    """An order-n model ready to score and sample: per order k, the sorted keys of its k-grams, each k-gram's
    discounted probability given its prefix, and (k >= 2) each (k-1)-gram's back-off weight gamma as a history."""

    vocab_size: int
    boundary: int
    keys: list[np.ndarray]  # [k-1] for orders 1..n
    probs: list[np.ndarray]  # [k-2] for orders 2..n
    gammas: list[np.ndarray]  # [k-2] for orders 2..n, indexed by (k-1)-gram number
    unigram: np.ndarray  # [V] P(w) at order 1, smoothed with the uniform distribution

    @property
    def order(self) -> int:
        return len(self.keys)

    @classmethod
    def from_counts(cls, counts: NgramCounts, order: int) -> NgramModel:
        V = counts.vocab_size
        keys, probs, gammas = counts.keys[:order], [], []
        unigram = None
        for k in range(1, order + 1):
            raw = counts.counts[k - 1]
            adjusted = raw if k == order else np.where(counts.from_boundary[k - 1], raw, counts.continuations[k - 1])
            adjusted = adjusted.astype(np.float64)
            discounted = discounts(adjusted)[np.minimum(adjusted, 3).astype(np.int64)]
            if k == 1:
                total = adjusted.sum()
                unigram = np.full(V, discounted.sum() / total / V)
                unigram[keys[0].astype(np.int64)] += (adjusted - discounted) / total
                continue
            prefix = (keys[k - 1] // np.uint64(V)).astype(np.int64)
            total = np.bincount(prefix, weights=adjusted, minlength=len(keys[k - 2]))
            mass = np.bincount(prefix, weights=discounted, minlength=len(keys[k - 2]))
            safe = np.where(total > 0, total, 1.0)
            probs.append((adjusted - discounted) / safe[prefix])
            gammas.append(np.where(total > 0, mass / safe, 1.0))  # a history never seen backs off entirely
        return cls(V, counts.boundary, keys, probs, gammas, unigram)

    def probabilities(self, tokens: np.ndarray, offsets: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """P(tokens[t] | the tokens before t in its padded stream) for each t in `positions` (offsets >= n-1)."""
        V, words = self.vocab_size, tokens[positions]
        p = self.unigram[words]
        ids = lookup(self.keys[0], tokens.astype(np.uint64))  # the number of the (k-1)-gram ending at each position
        for k in range(2, self.order + 1):
            history = ids[positions - 1]
            known = history >= 0
            gram = np.where(known, lookup(self.keys[k - 1], gram_key(history.clip(min=0), words, V)), -1)
            found = self.probs[k - 2][gram.clip(min=0)] * (gram >= 0)
            p = np.where(known, found + self.gammas[k - 2][history.clip(min=0)] * p, p)
            if k < self.order:
                previous = np.concatenate([[-1], ids[:-1]])
                inside = (offsets >= k - 1) & (previous >= 0)
                ids = np.where(inside, lookup(self.keys[k - 1], gram_key(previous.clip(min=0), tokens, V)), -1)
        return p

    def window_nll(self, contexts: list[list[int]], completions: list[list[int]]) -> np.ndarray:
        """Each window's total NLL (nats) of its completion tokens given its context, the window read from its start."""
        sequences = [np.asarray(list(c) + list(m), dtype=np.int64) for c, m in zip(contexts, completions)]
        tokens, offsets = padded_streams(sequences, self.order - 1, self.boundary)
        lengths = np.array([len(s) for s in sequences]) + self.order - 1
        ends = np.cumsum(lengths)
        completion_lengths = np.array([len(m) for m in completions])
        positions = np.concatenate([np.arange(end - n, end) for end, n in zip(ends, completion_lengths)])
        nll = -np.log(self.probabilities(tokens, offsets, positions.astype(np.int64)))
        windows = np.repeat(np.arange(len(sequences)), completion_lengths)
        return np.bincount(windows, weights=nll, minlength=len(sequences))

    def next_token_probs(self, histories: np.ndarray) -> np.ndarray:
        """[B, V] P(w | each row's last n-1 tokens), histories [B, n-1] (boundary tokens before a stream's start)."""
        V, m = self.vocab_size, histories.shape[1]
        p = np.tile(self.unigram, (len(histories), 1))
        if m == 0:
            return p
        ids = lookup(self.keys[0], histories.astype(np.uint64))  # [B, m]: number of the 1-gram ending at each column
        for k in range(2, self.order + 1):
            for row, history in enumerate(ids[:, -1].tolist()):
                if history < 0:
                    continue
                # uint64 bounds: a Python-int query would make numpy cast all of the keys on every call
                lo, hi = np.searchsorted(self.keys[k - 1], np.array([history * V, (history + 1) * V], dtype=np.uint64))
                p[row] *= self.gammas[k - 2][history]
                p[row, (self.keys[k - 1][lo:hi] % np.uint64(V)).astype(np.int64)] += self.probs[k - 2][lo:hi]
            if k < self.order:  # numbers of the k-grams ending at columns k-1..m-1
                inside = ids[:, :-1] >= 0
                longer = lookup(self.keys[k - 1], gram_key(ids[:, :-1].clip(min=0), histories[:, 1:], V))
                ids = np.concatenate([np.full((len(ids), 1), -1), np.where(inside, longer, -1)], axis=1)
        return p

    def save(self, path: str | Path) -> None:
        arrays = {"vocab_size": np.array(self.vocab_size), "boundary": np.array(self.boundary), "unigram": self.unigram}
        for k in range(1, self.order + 1):
            arrays[f"keys_{k}"] = self.keys[k - 1]
            if k > 1:
                arrays[f"probs_{k}"], arrays[f"gammas_{k}"] = self.probs[k - 2], self.gammas[k - 2]

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)

        atomic_write(path, write)

    @classmethod
    def load(cls, path: str | Path) -> NgramModel:
        with np.load(path) as data:
            order = sum(name.startswith("keys_") for name in data.files)
            return cls(
                int(data["vocab_size"]), int(data["boundary"]),
                [data[f"keys_{k}"] for k in range(1, order + 1)],
                [data[f"probs_{k}"] for k in range(2, order + 1)],
                [data[f"gammas_{k}"] for k in range(2, order + 1)],
                data["unigram"],
            )  # fmt: skip


class NgramDecoder:
    """`pianomuse.decoding.Decoder` for the n-gram: the state of a stream is its last n-1 tokens."""

    device = "cpu"

    def __init__(self, model: NgramModel):
        self.model = model

    def logits(self, histories: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.log(self.model.next_token_probs(histories))).float()

    def prefill(self, ids: list[int]) -> tuple[torch.Tensor, np.ndarray]:
        m = self.model.order - 1
        history = np.array([[self.model.boundary] * m + list(ids)], dtype=np.int64)[:, len(ids) :]
        return self.logits(history), history

    def step(self, ids: torch.Tensor, histories: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        histories = np.concatenate([histories, ids.cpu().numpy()[:, None]], axis=1)[:, 1:]
        return self.logits(histories), histories

    def repeat(self, histories: np.ndarray, k: int) -> np.ndarray:
        return np.repeat(histories, k, axis=0)

    def select(self, histories: np.ndarray, rows: torch.Tensor) -> np.ndarray:
        return histories[rows.cpu().numpy()]


# ----------------------------------------------------------------------------------------------------------------
# The stage: fit on the train windows, choose the order on the validation windows, save


def window_streams(dataset: datasets.Dataset) -> list[np.ndarray]:
    """Each window's context + completion, as int64 arrays (read from the Arrow columns)."""
    table = dataset.data
    streams = []
    for column in ("context_ids", "completion_ids"):
        chunks = table.column(column).combine_chunks()
        flat = pc.list_flatten(chunks).to_numpy(zero_copy_only=False).astype(np.int64)
        streams.append(np.split(flat, chunks.offsets.to_numpy()[1:-1] - chunks.offsets.to_numpy()[0]))
    return [np.concatenate(pair) for pair in zip(*streams)]


def choose_order(
    counts: NgramCounts, orders: list[int], contexts: list[list[int]], completions: list[list[int]]
) -> tuple[NgramModel, dict[int, float]]:
    """The order with the lowest validation NLL per completion token, and every order's NLL."""
    tokens = sum(len(m) for m in completions)
    nll = {}
    for order in orders:
        nll[order] = float(NgramModel.from_counts(counts, order).window_nll(contexts, completions).sum() / tokens)
        print(f"order {order}: validation NLL per completion token {nll[order]:.4f}", file=sys.stderr)
    best = min(nll, key=nll.get)
    return NgramModel.from_counts(counts, best), nll


def fresh_starts(dataset: datasets.Dataset, streams: list[np.ndarray], bar_id: int) -> np.ndarray:
    """Per window, where its bars that no earlier window of the same piece and transposition holds begin.

    Windows overlap (a bar is in context_bars / step + 1 of them, 3 by default): counted in full, every n-gram
    would be counted about 3 times, and the counts of counts that set the Kneser-Ney discounts would be those of
    the windowing (almost no n-gram seen once or twice), not of the music. Counting each bar once, from the first
    window that holds it (the window's earlier bars still serve as history), keeps the counts the music's."""
    piece, start, transpose = dataset["piece_id"], dataset["start_bar"], dataset["transpose"]
    covered: dict[tuple, int] = {}  # (piece, transposition) -> bars held by the windows seen so far
    starts = np.zeros(len(streams), dtype=np.int64)
    for i in sorted(range(len(streams)), key=lambda i: (piece[i], transpose[i], start[i])):
        bar_starts = np.flatnonzero(streams[i] == bar_id)
        key = (piece[i], transpose[i])
        new_from = max(0, covered.get(key, 0) - start[i])
        starts[i] = bar_starts[new_from] if new_from < len(bar_starts) else len(streams[i])
        covered[key] = max(covered.get(key, 0), start[i] + len(bar_starts))
    return starts


def seeded_subset(dataset: datasets.Dataset, n: int | None, seed: int, stream: int) -> datasets.Dataset:
    """At most n windows of the dataset, a fixed random subset (None: all)."""
    if n is None or len(dataset) <= n:
        return dataset
    rows = np.sort(np.random.default_rng([seed, stream]).choice(len(dataset), size=n, replace=False))
    return dataset.select(rows).flatten_indices(keep_in_memory=True)  # no cache file in the windows' folder


def fit_ngram(
    train_dir: str | Path, val_dir: str | Path, tokenizer_path: str | Path, out_dir: str | Path, orders: list[int],
    max_windows: int | None, validation_windows: int | None, seed: int,
) -> dict:  # fmt: skip
    """Fit on the train windows, choose the order on the validation windows, and write `out_dir`: model.npz, the
    tokenizer, and model.json (arch, order, every order's validation NLL), written last."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    tokenizer = load_tokenizer(tokenizer_path)
    train_ds = seeded_subset(datasets.load_from_disk(str(train_dir)), max_windows, seed, 0)
    val_ds = seeded_subset(datasets.load_from_disk(str(val_dir)), validation_windows, seed, 1)
    streams = window_streams(train_ds)
    # The boundary is PAD: miditok always has it, and no window contains it.
    fresh = fresh_starts(train_ds, streams, tokenizer.vocab["Bar_None"])
    counts = NgramCounts.fit(streams, max(orders), len(tokenizer.vocab), tokenizer.pad_token_id, fresh)
    tokens = sum(map(len, streams))
    print(f"counted orders 1-{max(orders)} on {len(streams)} train windows ({tokens} tokens, each bar once: "
          f"{tokens - int(fresh.sum())}) in {time.perf_counter() - start:.1f} s", file=sys.stderr)  # fmt: skip
    model, nll = choose_order(counts, sorted(orders), val_ds["context_ids"], val_ds["completion_ids"])
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(out_dir / "model.npz")
    shutil.copyfile(tokenizer_path, out_dir / "tokenizer.json")
    info = {
        "arch": "ngram",
        "order": model.order,
        "tokenizer_hash": tokenizer_hash(tokenizer_path),
        "validation_nll": {str(order): value for order, value in nll.items()},
        "train_windows": len(streams),
        "train_tokens": int(tokens),
        "validation_windows": len(val_ds),
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_json(info, out_dir / "model.json")
    print(f"chose order {model.order}", file=sys.stderr)
    return info
