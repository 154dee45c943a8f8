"""Windows stage: token shards -> (context, completion) pairs of whole bars, saved as a Hugging Face dataset.

A window of piece row r starting at bar s is N context bars (s .. s+N-1) followed by M completion bars
(s+N .. s+N+M-1); s = 0, step, 2*step, ... while the window fits in the piece, so a window never spans two pieces.
Each part is cut at Bar tokens: the completion starts with one, and the parts hold exactly N and M Bar tokens.
The last bar of a piece runs to the end of its ids: miditok writes no Bar token after it (no trailing bars) and
it holds every remaining onset, so it counts as a whole bar like any other.

A window starting mid-piece must state what is in force at its first bar. The time signature already is
(REMI writes `Bar, TimeSig_x` for every bar); the tempo is set only where it changes, so the first bar becomes
`Bar, TimeSig_x, Position_0, Tempo_t` followed by the rest of the bar, exactly what miditok writes for a bar whose
tempo changes at its downbeat (Position_0 then the Tempo, before pedals and notes at that position). A bar that
already starts `Position_0, Tempo_t` is unchanged; for one that starts `Position_0, ...` only the Tempo is added.
Tempo changes inside the window are kept as they are.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa

from pianomuse.files import atomic_folder
from pianomuse.remi import TempoMarkers, downbeat_header, list_array, shard_rows, tempo_at_bars
from pianomuse.tokenizer import load_tokenizer

WINDOW_SCHEMA = pa.schema(
    [
        ("context_ids", pa.list_(pa.uint16())),  # N bars, the first restating the time signature and tempo
        ("completion_ids", pa.list_(pa.uint16())),  # the M bars that follow
        ("piece_id", pa.string()),
        ("start_bar", pa.int32()),  # index in the piece of the context's first bar
        ("transpose", pa.int8()),  # semitones, from the token shard
    ]
)


def shard_windows(
    shard_path: str | Path, markers: TempoMarkers, context_bars: int, completion_bars: int, step: int, max_tokens: int
) -> tuple[pa.Table, Counter]:
    """The windows of one token shard as an Arrow table (WINDOW_SCHEMA), and their counts for build_windows' stats."""
    window_bars = context_bars + completion_bars
    contexts, completions, piece_ids, start_bars, transposes = [], [], [], [], []
    counts = Counter()
    for piece_id, transpose, ids, bar_offsets in shard_rows(shard_path):
        counts["pieces"] += 1
        n_bars = len(bar_offsets)
        if n_bars < window_bars:
            counts["pieces_too_short"] += 1
            continue
        first_bars = np.arange(0, n_bars - window_bars + 1, step)
        bounds = np.append(bar_offsets, len(ids)).astype(np.int64)
        tempo, stated = tempo_at_bars(ids, bar_offsets, markers)
        # Context: Bar, TimeSig, Position_0, Tempo, then the first bar's tokens after what they restate.
        body_starts = bounds[first_bars] + 2 + stated[first_bars]
        splits, ends = bounds[first_bars + context_bars], bounds[first_bars + window_bars]
        lengths = 4 + (splits - body_starts) + (ends - splits)
        fits = lengths <= max_tokens
        counts["windows_over_cap"] += int((~fits).sum())
        counts["tokens"] += int(lengths[fits].sum())
        for s, body_start, split, end in zip(
            first_bars[fits], body_starts[fits], splits[fits], ends[fits], strict=True
        ):
            contexts.append(np.concatenate([downbeat_header(ids, bounds[s], tempo[s], markers), ids[body_start:split]]))
            completions.append(ids[split:end])
        piece_ids += [piece_id] * int(fits.sum())
        start_bars.append(first_bars[fits])
        transposes += [transpose] * int(fits.sum())
    table = pa.Table.from_pydict(
        {
            "context_ids": list_array(contexts, pa.uint16()),
            "completion_ids": list_array(completions, pa.uint16()),
            "piece_id": piece_ids,
            "start_bar": np.concatenate(start_bars or [[]]).astype(np.int32),
            "transpose": transposes,
        },
        schema=WINDOW_SCHEMA,
    )
    return table, counts


def build_windows(
    tokenizer_path: str | Path,
    shard_paths: list,
    context_bars: int,
    completion_bars: int,
    step: int,
    max_tokens: int,
    out_dir: str | Path,
) -> dict:
    """Cut every row of the token shards into bar windows and save them with `save_to_disk(out_dir)`.

    Columns (WINDOW_SCHEMA): context_ids, completion_ids, piece_id, start_bar, transpose; rows in shard, row and
    start-bar order. Rows with fewer than N+M bars are skipped and counted (pieces_too_short); windows of more than
    `max_tokens` tokens (context + completion) are dropped and counted (windows_over_cap), never truncated.
    `pieces` counts the rows read: a transposed copy of a piece counts as one more.
    """
    for name, value in [("context_bars", context_bars), ("completion_bars", completion_bars), ("step", step)]:
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    start = time.perf_counter()
    markers = TempoMarkers.of(load_tokenizer(tokenizer_path))
    # One table per shard: the per-window arrays of a shard are freed once it is packed into Arrow columns.
    tables, counts = [], Counter()
    for shard_path in shard_paths:
        table, shard_counts = shard_windows(shard_path, markers, context_bars, completion_bars, step, max_tokens)
        tables.append(table)
        counts.update(shard_counts)
    windows = pa.concat_tables(tables) if tables else WINDOW_SCHEMA.empty_table()
    atomic_folder(out_dir, lambda tmp: datasets.Dataset(windows).save_to_disk(str(tmp)))
    return {
        "windows": len(windows),
        **{key: counts[key] for key in ["pieces", "pieces_too_short", "windows_over_cap", "tokens"]},
        "seconds": round(time.perf_counter() - start, 3),
    }
