"""REMI id streams, as the tokenize stage writes them and the completion engine reads a prompt: a Score to ids
(with the index of every Bar token), the tempo markers, whole bars cut out as a stream of their own, and the Arrow
list columns that hold ids in the token shards and the window datasets.

Shared by the tokenize and windows stages and by `pianomuse.complete`, so that none of them reaches into another.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from miditok import REMI
from symusic import Score


class RejectedPiece(Exception):
    """A file that cannot become a token sequence; `reason` goes to the rejects table."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def merge_piano_tracks(score: Score) -> None:
    """Keep one track holding the notes and pedals of every non-drum track (in place); needs one at least.

    Without programs, REMI encodes each track as its own sequence; the model reads a single piano stream.
    """
    piano, *others = [track for track in score.tracks if not track.is_drum]
    for track in others:
        piano.notes.extend(track.notes)
        piano.pedals.extend(track.pedals)
    score.tracks = [piano]


def pitch_token_ids(tokenizer: REMI) -> np.ndarray:
    return np.array([i for token, i in tokenizer.vocab.items() if token.startswith("Pitch_")], dtype=np.uint16)


def tokenize_score(tokenizer: REMI, score: Score) -> tuple[np.ndarray, np.ndarray, int]:
    """`tokenize_piece` of a Score already read (its tracks are merged in place)."""
    if score.note_num() == 0:
        raise RejectedPiece("empty: the file holds no notes")
    if all(track.is_drum for track in score.tracks if track.note_num() > 0):
        raise RejectedPiece("no piano notes: only drum tracks hold notes")
    merge_piano_tracks(score)
    try:
        sequences = tokenizer.encode(score)
    except Exception as error:
        raise RejectedPiece(f"miditok could not tokenize it: {type(error).__name__}: {error}") from error

    # Preprocessing drops notes outside the pitch range and duplicates, so count what was encoded.
    ids = np.asarray(sequences[0].ids if sequences else [], dtype=np.uint16)
    n_notes = int(np.isin(ids, pitch_token_ids(tokenizer)).sum())
    if n_notes == 0:
        raise RejectedPiece("no notes left after the tokenizer's preprocessing (all outside its pitch range?)")
    bar_offsets = np.flatnonzero(ids == tokenizer.vocab["Bar_None"]).astype(np.uint32)
    return ids, bar_offsets, n_notes


def list_array(arrays: list[np.ndarray], value_type: pa.DataType) -> pa.ListArray:
    """One Arrow list column from per-row numpy arrays, built from their concatenation without per-row work."""
    offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
    np.cumsum([len(a) for a in arrays], out=offsets[1:])
    values = np.concatenate(arrays) if arrays else np.array([], dtype=value_type.to_pandas_dtype())
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=value_type))


@dataclass(frozen=True)
class TempoMarkers:
    """The ids that say where tempos are stated in a REMI stream."""

    position_0: int
    is_tempo: np.ndarray  # bool over the vocabulary
    pad: int

    @classmethod
    def of(cls, tokenizer: REMI) -> TempoMarkers:
        if not (tokenizer.config.use_tempos and tokenizer.config.use_time_signatures):
            raise ValueError("bar windows need a tokenizer with tempos and time signatures (a TimeSig after every Bar)")
        is_tempo = np.zeros(len(tokenizer.vocab), dtype=bool)
        is_tempo[[i for token, i in tokenizer.vocab.items() if token.startswith("Tempo_")]] = True
        return cls(tokenizer.vocab["Position_0"], is_tempo, tokenizer.pad_token_id)


def tempo_at_bars(ids: np.ndarray, bar_offsets: np.ndarray, markers: TempoMarkers) -> tuple[np.ndarray, np.ndarray]:
    """For every bar: the Tempo id in force at its downbeat, and how many of the tokens after its `Bar, TimeSig`
    already state it (2 for `Position_0, Tempo_t`, 1 for `Position_0` alone, 0 when the bar starts later or is empty).
    """
    after_header = bar_offsets.astype(np.int64) + 2
    padded = np.concatenate([ids, [markers.pad, markers.pad]])  # a bar may end the ids right after its header
    starts_at_0 = padded[after_header] == markers.position_0
    sets_tempo = starts_at_0 & markers.is_tempo[padded[after_header + 1]]
    if len(bar_offsets) and not sets_tempo[0]:
        raise ValueError("the first bar sets no tempo at its downbeat: not a REMI stream from this tokenizer")
    tempo_indices = np.flatnonzero(markers.is_tempo[ids])
    # The last Tempo before each Bar token; for the first bar (nothing before it) sets_tempo holds.
    last_before = np.maximum(np.searchsorted(tempo_indices, bar_offsets) - 1, 0)
    tempo = np.where(sets_tempo, padded[after_header + 1], ids[tempo_indices[last_before]]).astype(np.uint16)
    return tempo, starts_at_0.astype(np.int64) + sets_tempo


def downbeat_header(ids: np.ndarray, bar_offset: int, tempo_id: int, markers: TempoMarkers) -> np.ndarray:
    """`Bar, TimeSig_x, Position_0, Tempo_t`: the start of a bar that states the time signature and tempo in force."""
    return np.array([ids[bar_offset], ids[bar_offset + 1], markers.position_0, tempo_id], dtype=np.uint16)


def standalone_bars(
    ids: np.ndarray, bar_offsets: np.ndarray, markers: TempoMarkers, first: int, end: int
) -> np.ndarray:
    """Bars first .. end-1 of a stream as a stream of their own: the first restates time signature and tempo."""
    tempo, stated = tempo_at_bars(ids, bar_offsets, markers)
    bounds = np.append(bar_offsets, len(ids)).astype(np.int64)
    body_start = bounds[first] + 2 + stated[first]
    return np.concatenate([downbeat_header(ids, bounds[first], tempo[first], markers), ids[body_start : bounds[end]]])


def shard_rows(shard_path: str | Path) -> Iterator[tuple[str, int, np.ndarray, np.ndarray]]:
    """(piece_id, transpose, ids, bar_offsets) of every row of a token shard file (see `table_rows`)."""
    return table_rows(pq.read_table(shard_path, columns=["piece_id", "transpose", "ids", "bar_offsets"]))


def table_rows(table: pa.Table) -> Iterator[tuple[str, int, np.ndarray, np.ndarray]]:
    """(piece_id, transpose, ids, bar_offsets) of every row of a token-shard table, in row order, the arrays sliced
    from whole columns."""
    columns = {}
    for name in ["ids", "bar_offsets"]:
        lists = table[name].combine_chunks()
        offsets = lists.offsets.to_numpy()
        columns[name] = (lists.flatten().to_numpy(), offsets - offsets[0])
    (ids, ids_at), (bars, bars_at) = columns["ids"], columns["bar_offsets"]
    for r, (piece_id, transpose) in enumerate(zip(table["piece_id"].to_pylist(), table["transpose"].to_pylist())):
        yield piece_id, transpose, ids[ids_at[r] : ids_at[r + 1]], bars[bars_at[r] : bars_at[r + 1]]
