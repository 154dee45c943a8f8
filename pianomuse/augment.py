"""Augment stage: transpositions and loops of the train token shards, done in token space (no MIDI re-tokenizing).

A transposition only renames Pitch tokens: miditok's `augment_score(score, pitch_offset=o)` shifts the pitches of
the non-drum tracks and nothing else (velocities, durations, pedals and timing stay), and the tokenizer's
preprocessing treats every pitch alike, so remapping Pitch_p -> Pitch_{p+o} in the ids gives exactly what
tokenizing the transposed score would (tests/test_augment.py checks this on MAESTRO pieces).

A loop is a row made of a span of one piece's bars (1, 2 or 4 of them, say) played again and again, each time
exactly the same tokens. MAESTRO is performed music: a figure played twice is almost never the same tokens twice
(timing and velocity drift), so without loops the model never sees that an exact repeat is worth copying
(docs/experiments.md, E4). Loop rows keep the source's metadata; their piece_id is the source's plus
`LOOP_MARK` and the span, e.g. `2004/piece#loop-12+2` (bars 12 and 13).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from miditok import REMI

from pianomuse.files import write_parquet_atomic
from pianomuse.remi import TempoMarkers, list_array, pitch_token_ids, standalone_bars, table_rows
from pianomuse.tokenizer import load_tokenizer
from pianomuse.tokens import TOKEN_SHARD_SCHEMA

# The largest transposition the shift table holds, either way (the config schema allows -12..12).
MAX_SHIFT = 12
# Marks, in the shift table, a Pitch token whose transposition leaves the tokenizer's pitch range.
OUT_OF_RANGE = -1
# Joins a loop row's piece_id to its span: `{source piece_id}#loop-{first bar}+{bars}`.
LOOP_MARK = "#loop-"


def pitch_shift_table(tokenizer: REMI) -> np.ndarray:
    """Lookup table of every id under every shift: row `offset + MAX_SHIFT`, column id -> transposed id.

    Non-Pitch tokens map to themselves; a Pitch token whose shifted pitch has no token maps to OUT_OF_RANGE.
    Shape (2 * MAX_SHIFT + 1, vocabulary size), int32.
    """
    vocab = tokenizer.vocab
    offsets = np.arange(-MAX_SHIFT, MAX_SHIFT + 1)
    table = np.tile(np.arange(len(vocab), dtype=np.int32), (len(offsets), 1))
    for token, token_id in vocab.items():
        if token.startswith("Pitch_"):
            pitch = int(token.removeprefix("Pitch_"))
            table[:, token_id] = [vocab.get(f"Pitch_{pitch + offset}", OUT_OF_RANGE) for offset in offsets]
    return table


def shift_row(offset: int, table: np.ndarray) -> np.ndarray:
    """The row of `table` (from pitch_shift_table) that transposes by `offset` semitones."""
    if not -MAX_SHIFT <= offset <= MAX_SHIFT:
        raise ValueError(f"transposition {offset} is outside -{MAX_SHIFT}..{MAX_SHIFT}")
    return table[offset + MAX_SHIFT]


def transpose_ids(ids: np.ndarray, offset: int, pitch_shift_table: np.ndarray) -> np.ndarray | None:
    """`ids` (uint16) with every pitch moved by `offset` semitones, or None when a pitch would leave the range."""
    shifted = shift_row(offset, pitch_shift_table)[ids]
    if (shifted == OUT_OF_RANGE).any():
        return None
    return shifted.astype(np.uint16)


def augment_shard(
    tokenizer_path: str | Path,
    shard_path: str | Path,
    offsets: list[int],
    out_path: str | Path,
    loops: Loops | None = None,
) -> dict:
    """Write every transposition by `offsets` of the pieces of a token shard that stays in the pitch range, and
    the `loops` rows (none when None).

    The output has TOKEN_SHARD_SCHEMA, rows sorted by (piece_id, transpose); a row keeps its piece_id, metadata,
    bar_offsets and n_notes, with `transpose` set to the offset. The input must hold originals (transpose 0)
    and 0 is not a valid offset (the originals already are in the token shards). Written whole or not at all.
    Returns counts, including the pieces skipped per offset because they would leave the range.
    """
    if 0 in offsets or len(set(offsets)) != len(offsets):
        raise ValueError(f"transpositions must be distinct and non-zero, got {offsets}")
    start = time.perf_counter()
    tokenizer = load_tokenizer(tokenizer_path)
    table = pitch_shift_table(tokenizer)
    shard = pq.read_table(shard_path, schema=TOKEN_SHARD_SCHEMA)
    if pc.any(pc.not_equal(shard["transpose"], 0)).as_py():
        raise ValueError(f"{shard_path} holds transposed rows; augment the original token shards only")

    # Transpose the whole shard's tokens at once, then keep the rows without an out-of-range pitch.
    ids = shard["ids"].combine_chunks()
    flat_ids = ids.flatten().to_numpy()
    row_offsets = ids.offsets.to_numpy()
    row_offsets = row_offsets - row_offsets[0]
    row_of_token = np.repeat(np.arange(len(shard)), np.diff(row_offsets))
    transposed, skipped = [], {}
    for offset in offsets:
        shifted = shift_row(offset, table)[flat_ids]
        fits = np.ones(len(shard), dtype=bool)
        fits[row_of_token[shifted == OUT_OF_RANGE]] = False
        skipped[str(offset)] = int((~fits).sum())
        shifted_ids = pa.ListArray.from_arrays(pa.array(row_offsets), pa.array(shifted.astype(np.uint16)))
        rows = shard.set_column(shard.schema.get_field_index("ids"), "ids", shifted_ids)
        rows = rows.set_column(
            rows.schema.get_field_index("transpose"), "transpose", pa.array(np.full(len(shard), offset, np.int8))
        )
        transposed.append(rows.filter(pa.array(fits)))
    looped = loop_rows(tokenizer, table, shard, loops, offsets) if loops else TOKEN_SHARD_SCHEMA.empty_table()
    augmented = pa.concat_tables([*transposed, looped]).sort_by([("piece_id", "ascending"), ("transpose", "ascending")])
    write_parquet_atomic(augmented, out_path)
    return {
        "pieces": len(shard),
        "offsets": list(offsets),
        "written": len(augmented),
        "skipped_per_offset": skipped,
        "loops": len(looped),
        "tokens": int(pc.sum(pc.list_value_length(augmented["ids"])).as_py() or 0),
        "seconds": round(time.perf_counter() - start, 3),
    }


@dataclass(frozen=True)
class Loops:
    """How loop rows are made: `per_piece` rows from every original piece, each a span of one of `span_bars`
    bars (uniformly) repeated to `length_bars` bars and transposed by 0 or one of the stage's transpositions."""

    per_piece: int
    span_bars: list[int]
    length_bars: int
    seed: int

    def __post_init__(self):
        if self.per_piece < 0 or not self.span_bars or min(self.span_bars) < 1:
            raise ValueError(f"loops need per_piece >= 0 and spans of at least 1 bar, got {self}")
        if self.length_bars < max(self.span_bars):
            raise ValueError(f"a loop of {self.length_bars} bars cannot hold a span of {max(self.span_bars)}")


def piece_rng(seed: int, piece_id: str) -> np.random.Generator:
    """A generator for one piece: its loops do not depend on which other pieces share its shard."""
    return np.random.default_rng([seed, int.from_bytes(hashlib.sha1(piece_id.encode()).digest()[:8], "big")])


def loop_row(
    ids: np.ndarray, bar_offsets: np.ndarray, has_note: np.ndarray, loops: Loops, rng: np.random.Generator, tables: dict
) -> tuple[np.ndarray, np.ndarray, int, int, int] | None:
    """One loop of a piece: (its ids, their bar offsets, first bar of the span, span bars, transposition), or None
    when the piece has no span of bars that each hold a note, or the drawn transposition leaves the pitch range."""
    span = int(rng.choice(loops.span_bars))
    # Spans whose bars all hold a note: a window of all-but-empty bars teaches nothing.
    full = np.convolve(has_note.astype(np.int64), np.ones(span, dtype=np.int64), "valid") == span
    offset = int(rng.choice([0, *tables["offsets"]]))
    if not full.any():
        return None
    first = int(rng.choice(np.flatnonzero(full)))
    once = standalone_bars(ids, bar_offsets, tables["markers"], first, first + span)
    looped = transpose_ids(np.tile(once, -(-loops.length_bars // span)), offset, tables["shift"])
    if looped is None:
        return None
    bars = np.flatnonzero(looped == tables["bar_id"])
    if len(bars) > loops.length_bars:  # the last repeat cut to length
        looped, bars = looped[: bars[loops.length_bars]], bars[: loops.length_bars]
    return looped, bars, first, span, offset


def loop_rows(tokenizer: REMI, shift_table: np.ndarray, shard: pa.Table, loops: Loops, offsets: list[int]) -> pa.Table:
    """The loop rows (TOKEN_SHARD_SCHEMA) of every piece of an original token shard, `loops.per_piece` draws each;
    `shift_table` is the tokenizer's `pitch_shift_table`."""
    is_pitch = np.zeros(len(tokenizer.vocab), dtype=bool)
    is_pitch[pitch_token_ids(tokenizer)] = True
    tables = {"offsets": offsets, "markers": TempoMarkers.of(tokenizer), "shift": shift_table,
              "bar_id": tokenizer.vocab["Bar_None"]}  # fmt: skip
    rows, ids_column, bars_column = [], [], []
    for r, (piece_id, _, ids, bar_offsets) in enumerate(table_rows(shard)):
        rng = piece_rng(loops.seed, piece_id)
        has_note = np.add.reduceat(is_pitch[ids], bar_offsets.astype(np.int64)) > 0 if len(bar_offsets) else np.zeros(0)
        for _ in range(loops.per_piece):
            loop = loop_row(ids, bar_offsets, has_note, loops, rng, tables)
            if loop is not None:
                looped, bars, first, span, offset = loop
                rows.append((r, f"{piece_id}{LOOP_MARK}{first}+{span}", offset))
                ids_column.append(looped)
                bars_column.append(bars)
    picked = shard.take(pa.array([r for r, _, _ in rows], pa.int64()))
    columns = {
        "piece_id": pa.array([name for _, name, _ in rows], pa.string()),
        "transpose": pa.array(np.array([offset for _, _, offset in rows], dtype=np.int8)),
        "ids": list_array(ids_column, pa.uint16()),
        "bar_offsets": list_array(bars_column, pa.uint32()),
        "n_notes": pa.array(np.array([int(is_pitch[i].sum()) for i in ids_column], dtype=np.int32)),
    }
    for name, column in columns.items():
        picked = picked.set_column(picked.schema.get_field_index(name), name, column)
    return picked.cast(TOKEN_SHARD_SCHEMA)
