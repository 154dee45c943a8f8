"""Augment stage: transpositions of the train token shards, done in token space (no MIDI re-tokenizing).

A transposition only renames Pitch tokens: miditok's `augment_score(score, pitch_offset=o)` shifts the pitches of
the non-drum tracks and nothing else (velocities, durations, pedals and timing stay), and the tokenizer's
preprocessing treats every pitch alike, so remapping Pitch_p -> Pitch_{p+o} in the ids gives exactly what
tokenizing the transposed score would (tests/test_augment.py checks this on MAESTRO pieces).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from miditok import REMI

from pianomuse.files import write_parquet_atomic
from pianomuse.tokenizer import load_tokenizer
from pianomuse.tokens import TOKEN_SHARD_SCHEMA

# The largest transposition the shift table holds, either way (the config schema allows -12..12).
MAX_SHIFT = 12
# Marks, in the shift table, a Pitch token whose transposition leaves the tokenizer's pitch range.
OUT_OF_RANGE = -1


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


def augment_shard(tokenizer_path: str | Path, shard_path: str | Path, offsets: list[int], out_path: str | Path) -> dict:
    """Write every transposition by `offsets` of the pieces of a token shard that stays in the pitch range.

    The output has TOKEN_SHARD_SCHEMA, rows sorted by (piece_id, transpose); a row keeps its piece_id, metadata,
    bar_offsets and n_notes, with `transpose` set to the offset. The input must hold originals (transpose 0)
    and 0 is not a valid offset (the originals already are in the token shards). Written whole or not at all.
    Returns counts, including the pieces skipped per offset because they would leave the range.
    """
    if 0 in offsets or len(set(offsets)) != len(offsets):
        raise ValueError(f"transpositions must be distinct and non-zero, got {offsets}")
    start = time.perf_counter()
    table = pitch_shift_table(load_tokenizer(tokenizer_path))
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
    augmented = pa.concat_tables(transposed).sort_by([("piece_id", "ascending"), ("transpose", "ascending")])
    write_parquet_atomic(augmented, out_path)
    return {
        "pieces": len(shard),
        "offsets": list(offsets),
        "written": len(augmented),
        "skipped_per_offset": skipped,
        "tokens": int(pc.sum(pc.list_value_length(augmented["ids"])).as_py() or 0),
        "seconds": round(time.perf_counter() - start, 3),
    }
