"""Augment stage: transpositions and loops of the train token shards, done in token space (no MIDI re-tokenizing).

A transposition only renames Pitch tokens: miditok's `augment_score(score, pitch_offset=o)` shifts the pitches of
the non-drum tracks and nothing else (velocities, durations, pedals and timing stay), and the tokenizer's
preprocessing treats every pitch alike, so remapping Pitch_p -> Pitch_{p+o} in the ids gives exactly what
tokenizing the transposed score would (tests/test_augment.py checks this on MAESTRO pieces).

A loop is a row made of a span of one piece's bars (1, 2 or 4 of them, say) played again and again, each time
exactly the same tokens. MAESTRO is performed music: a figure played twice is almost never the same tokens twice
(timing and velocity drift), so without loops the model never sees that an exact repeat is worth copying
(docs/experiments.md, E4). Loop rows keep the source's metadata; their piece_id is the source's plus
`LOOP_MARK` and the span, e.g. `2004/piece#loop-12+2` (bars 12 and 13). A loop row may open with the bars of the
piece before its span, as played (`Loops.lead_bars`): `2004/piece#loop-12+2-lead-3` starts at bar 9. A loop row
may be cut to 3/4 (`Loops.three_four`), its piece_id then ending in `THREE_FOUR_MARK`: MAESTRO has no other meter.

A score-like row is an augmented row (a transposition or a loop) written out like a notated score: one velocity,
onsets and durations on the sixteenth-note grid, no pedal. A composer's prompt, written in notation software, looks
like this, and MAESTRO's performances never do (docs/experiments.md); its piece_id gets `SCORE_MARK`.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
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
# Joins a loop row's piece_id to its span: `{source piece_id}#loop-{first bar}+{bars}`, then `-lead-{bars}` when the
# piece's own bars before the span open the row.
LOOP_MARK = "#loop-"
LEAD_MARK = "-lead-"
# Ends the piece_id of a loop row cut to 3/4.
THREE_FOUR_MARK = "-in-3/4"
# The streams, beside a piece's loop draws, that its leads and its 3/4 rows are drawn from (piece_rng).
LEAD_STREAM = 1
METER_STREAM = 2
# Ends the piece_id of a score-like row.
SCORE_MARK = "#score"


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
    score_like: ScoreLike | None = None,
) -> dict:
    """Write every transposition by `offsets` of the pieces of a token shard that stays in the pitch range, and
    the `loops` rows (none when None), each of them made score-like as `score_like` draws (none when None).

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
    augmented = pa.concat_tables([*transposed, looped])
    if score_like:
        augmented = score_like_rows(augmented, ScoreGrid.of(tokenizer), score_like)
    augmented = augmented.sort_by([("piece_id", "ascending"), ("transpose", "ascending")])
    write_parquet_atomic(augmented, out_path)
    return {
        "pieces": len(shard),
        "offsets": list(offsets),
        "written": len(augmented),
        "skipped_per_offset": skipped,
        "loops": len(looped),
        "score_like": int(pc.sum(pc.ends_with(augmented["piece_id"], SCORE_MARK)).as_py() or 0),
        "tokens": int(pc.sum(pc.list_value_length(augmented["ids"])).as_py() or 0),
        "seconds": round(time.perf_counter() - start, 3),
    }


@dataclass(frozen=True)
class Loops:
    """How loop rows are made: `per_piece` rows from every original piece, each a span of one of `span_bars`
    bars (uniformly) repeated to `length_bars` bars and transposed by 0 or one of the stage's transpositions.

    `restate_tempo` starts every repeat with `Position_0, Tempo_t`, as the first loop rows did (the runs up to E11
    trained on them). A score states its tempo once, and so do a composer's prompt and the probe's figures: a model
    trained on restated tempos copies a loop only when that cue is there (docs/experiments.md). False states the
    tempo once, at the row's start, unless the span itself changes tempo.

    `lead_bars` are the piece's own bars played before the span, as many as drawn uniformly from the list (fewer
    where the piece has fewer before the span), counted in `length_bars`. The default [0] opens every row with the
    loop, as in every run so far; a composer's figure may start later in the prompt (how much that costs is in
    docs/experiments.md). The leads come from a generator of their own, so the spans drawn do not change with them.

    `three_four` is the share of loop rows cut to 3/4 (`three_four_ids`), drawn from a third generator. MAESTRO's
    MIDI is 4/4 throughout, so a model trained on it alone knows no other meter and, made to keep a 3/4 prompt's
    meter, cannot continue it (docs/experiments.md)."""

    per_piece: int
    span_bars: list[int]
    length_bars: int
    seed: int
    restate_tempo: bool = True
    lead_bars: list[int] = field(default_factory=lambda: [0])
    three_four: float = 0.0

    def __post_init__(self):
        if self.per_piece < 0 or not self.span_bars or min(self.span_bars) < 1:
            raise ValueError(f"loops need per_piece >= 0 and spans of at least 1 bar, got {self}")
        if not self.lead_bars or min(self.lead_bars) < 0:
            raise ValueError(f"loops need lead_bars of at least 0 bars, got {self}")
        if not 0.0 <= self.three_four <= 1.0:
            raise ValueError(f"loops.three_four must be between 0 and 1, got {self.three_four}")
        if self.length_bars < max(self.lead_bars) + max(self.span_bars):
            raise ValueError(
                f"a loop of {self.length_bars} bars cannot hold a span of {max(self.span_bars)} after "
                f"{max(self.lead_bars)} lead bars"
            )


def piece_rng(seed: int, piece_id: str, *stream: int) -> np.random.Generator:
    """A generator for one piece (and `stream`, one more for each independent draw): its loops do not depend on
    which other pieces share its shard."""
    return np.random.default_rng([seed, int.from_bytes(hashlib.sha1(piece_id.encode()).digest()[:8], "big"), *stream])


def loop_row(
    ids: np.ndarray,
    bar_offsets: np.ndarray,
    has_note: np.ndarray,
    loops: Loops,
    rngs: tuple[np.random.Generator, np.random.Generator, np.random.Generator],
    tables: dict,
) -> tuple[np.ndarray, np.ndarray, int, int, int, int, bool] | None:
    """One loop of a piece: (its ids, their bar offsets, first bar of the span, span bars, lead bars,
    transposition, whether cut to 3/4), or None when the piece has no span of bars that each hold a note, the drawn
    transposition leaves the pitch range, or a 3/4 row was drawn from bars not in 4/4. `rngs` draws the spans, the
    leads and the 3/4 rows."""
    rng, lead_rng, meter_rng = rngs
    span = int(rng.choice(loops.span_bars))
    # Spans whose bars all hold a note: a window of all-but-empty bars teaches nothing.
    full = np.convolve(has_note.astype(np.int64), np.ones(span, dtype=np.int64), "valid") == span
    offset = int(rng.choice([0, *tables["offsets"]]))
    if not full.any():
        return None
    first = int(rng.choice(np.flatnonzero(full)))
    lead = min(int(lead_rng.choice(loops.lead_bars)), first)
    three_four = bool(meter_rng.random() < loops.three_four)
    once = standalone_bars(ids, bar_offsets, tables["markers"], first, first + span)
    again = once if loops.restate_tempo else without_restated_tempo(once, tables)
    # The lead and the span's first play as the piece has them, then the repeats.
    played = standalone_bars(ids, bar_offsets, tables["markers"], first - lead, first + span) if lead else once
    looped = np.concatenate([played, np.tile(again, -(-(loops.length_bars - lead) // span) - 1)])
    looped = transpose_ids(looped, offset, tables["shift"])
    if looped is not None and three_four:
        looped = three_four_ids(looped, tables["grid"])
    if looped is None:
        return None
    bars = np.flatnonzero(looped == tables["grid"].bar_id)
    if len(bars) > loops.length_bars:  # the last repeat cut to length
        looped, bars = looped[: bars[loops.length_bars]], bars[: loops.length_bars]
    return looped, bars, first, span, lead, offset, three_four


def three_four_ids(ids: np.ndarray, grid: ScoreGrid) -> np.ndarray | None:
    """A REMI row of 4/4 bars cut to 3/4: every bar keeps its first three beats, the tokens at the positions before
    the fourth (notes keep their durations), and says TimeSig_3/4; the notes, pedals and tempos of the fourth beat
    are dropped. What tokenizing the score cut so would give (tests/test_augment.py). None when a bar is not 4/4."""
    beat = grid.per_quarter
    bars = np.flatnonzero(ids == grid.bar_id)
    signatures = bars + 1  # a TimeSig follows every Bar
    if signatures[-1] >= len(ids) or (grid.bar_length_of[ids[signatures]] != 4 * beat).any():
        return None
    # The position each token is at, carried forward from its Position; a bar's Bar and TimeSig are at -1.
    starts = np.flatnonzero((grid.position_of[ids] >= 0) | (ids == grid.bar_id))
    at = np.repeat(
        np.where(ids[starts] == grid.bar_id, -1, grid.position_of[ids[starts]]), np.diff([*starts, len(ids)])
    )
    cut = ids.copy()
    cut[signatures] = inverse(grid.bar_length_of)[3 * beat]
    return cut[at < 3 * beat]


def without_restated_tempo(once: np.ndarray, tables: dict) -> np.ndarray:
    """A span that `standalone_bars` cut, as it follows itself in a score with one tempo: its header's restated
    `Position_0, Tempo_t` dropped (Position_0 kept where notes or pedals start the bar). A span that changes tempo
    inside is left as it is: each repeat has to state the tempo it starts at."""
    header, body = once[:4], once[4:]
    if tables["markers"].is_tempo[body].any():
        return once
    grid = tables["grid"]
    starts_on_the_beat = len(body) > 0 and grid.position_of[body[0]] < 0 and body[0] != grid.bar_id
    return np.concatenate([header[:2], header[2:3] if starts_on_the_beat else header[:0], body])


def loop_rows(tokenizer: REMI, shift_table: np.ndarray, shard: pa.Table, loops: Loops, offsets: list[int]) -> pa.Table:
    """The loop rows (TOKEN_SHARD_SCHEMA) of every piece of an original token shard, `loops.per_piece` draws each;
    `shift_table` is the tokenizer's `pitch_shift_table`."""
    grid = ScoreGrid.of(tokenizer)
    is_pitch = grid.is_pitch
    tables = {"offsets": offsets, "markers": TempoMarkers.of(tokenizer), "shift": shift_table, "grid": grid}
    rows, ids_column, bars_column = [], [], []
    for r, (piece_id, _, ids, bar_offsets) in enumerate(table_rows(shard)):
        rngs = tuple(piece_rng(loops.seed, piece_id, *stream) for stream in [(), (LEAD_STREAM,), (METER_STREAM,)])
        has_note = np.add.reduceat(is_pitch[ids], bar_offsets.astype(np.int64)) > 0 if len(bar_offsets) else np.zeros(0)
        for _ in range(loops.per_piece):
            loop = loop_row(ids, bar_offsets, has_note, loops, rngs, tables)
            if loop is not None:
                looped, bars, first, span, lead, offset, three_four = loop
                name = f"{piece_id}{LOOP_MARK}{first}+{span}{f'{LEAD_MARK}{lead}' if lead else ''}"
                rows.append((r, f"{name}{THREE_FOUR_MARK if three_four else ''}", offset))
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


@dataclass(frozen=True)
class ScoreLike:
    """Which augmented rows become score-like: each one, independently, with probability `fraction`, drawn from
    `seed` and the row's piece_id and transposition."""

    fraction: float
    seed: int

    def __post_init__(self):
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"score_like.fraction must be between 0 and 1, got {self.fraction}")


@dataclass(frozen=True)
class ScoreGrid:
    """The vocabulary read by kind, as loop rows and score-like rows need it. Times are in positions, the
    tokenizer's finest step (`per_quarter` to a quarter note); -1 marks an id of another kind."""

    bar_id: int
    per_quarter: int
    position_id: np.ndarray  # position -> its Position id
    position_of: np.ndarray  # id -> position
    bar_length_of: np.ndarray  # TimeSig id -> positions in its bar (-1 for a signature not in quarter notes)
    duration_id: np.ndarray  # duration in positions -> its Duration id
    duration_of: np.ndarray  # id -> duration in positions
    velocity_of: np.ndarray  # id -> velocity
    is_tempo: np.ndarray
    is_pitch: np.ndarray

    @classmethod
    def of(cls, tokenizer: REMI) -> ScoreGrid:
        size, per_quarter = len(tokenizer.vocab), max(tokenizer.config.beat_res.values())
        position_of, bar_length_of, duration_of, velocity_of = (np.full(size, -1, np.int64) for _ in range(4))
        is_pitch = np.zeros(size, bool)
        is_pitch[pitch_token_ids(tokenizer)] = True
        for token, i in tokenizer.vocab.items():
            kind, _, value = token.partition("_")
            if kind == "Position":
                position_of[i] = int(value)
            elif kind == "TimeSig":
                numerator, denominator = map(int, value.split("/"))
                bar_length_of[i] = numerator * per_quarter if denominator == 4 else -1
            elif kind == "Duration":  # beats.ticks.ticks-per-beat
                beats, ticks, resolution = map(int, value.split("."))
                duration_of[i] = beats * per_quarter + ticks * per_quarter // resolution
            elif kind == "Velocity":
                velocity_of[i] = int(value)
        return cls(tokenizer.vocab["Bar_None"], per_quarter, inverse(position_of), position_of, bar_length_of,
                   inverse(duration_of), duration_of, velocity_of, TempoMarkers.of(tokenizer).is_tempo,
                   is_pitch)  # fmt: skip


def inverse(value_of: np.ndarray) -> np.ndarray:
    """value -> id for the ids with a value (>= 0) in `value_of`; -1 for values no id has."""
    has = np.flatnonzero(value_of >= 0)
    id_of = np.full(value_of.max() + 1, -1, np.int64)
    id_of[value_of[has]] = has
    return id_of


def score_like_ids(ids: np.ndarray, grid: ScoreGrid) -> tuple[np.ndarray, np.ndarray]:
    """A REMI row (it starts with a Bar) written like a score: (its ids, the indices of its Bar tokens).

    Every note gets the row's median velocity (the lower middle one of an even count); its onset moves to the
    nearest sixteenth note of its bar, half up (at most the bar's last sixteenth: no note changes bar); its
    duration to the nearest multiple of a sixteenth, half up (one at least). Pedal tokens are dropped. Bars, time
    signatures, tempos (where they were) and the order of the notes that end up sharing an onset stay, so the
    result is what tokenizing the decoded score with the same change would give (tests/test_augment.py).
    """
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) == 0 or ids[0] != grid.bar_id:
        raise ValueError("a score-like row is made from a REMI row that starts with a Bar token")
    sixteenth = grid.per_quarter // 4
    bars = np.flatnonzero(ids == grid.bar_id)
    bar_of = np.cumsum(ids == grid.bar_id) - 1
    bar_length = grid.bar_length_of[ids[bars + 1]]  # the TimeSig after each Bar
    if (bar_length < 0).any():
        raise ValueError("score-like rows need time signatures in quarter notes (x/4)")
    # The position each token is at: the last Position token in its bar (0 before the first).
    last_position = np.maximum.accumulate(np.where(grid.position_of[ids] >= 0, np.arange(len(ids)), -1))
    position = np.where(last_position > bars[bar_of], grid.position_of[ids[last_position]], 0)

    pitch = np.flatnonzero(grid.is_pitch[ids])  # a Pitch token is followed by its Velocity and its Duration
    tempo = np.flatnonzero(grid.is_tempo[ids])
    last_sixteenth = (bar_length - 1) // sixteenth * sixteenth
    onset = np.minimum(round_half_up(position[pitch], sixteenth), last_sixteenth[bar_of[pitch]])
    duration = np.maximum(round_half_up(grid.duration_of[ids[pitch + 2]], sixteenth), sixteenth)
    by_velocity = np.argsort(grid.velocity_of[ids[pitch + 1]], kind="stable")
    velocity = ids[pitch[by_velocity[(len(pitch) - 1) // 2]] + 1] if len(pitch) else -1

    # Every output token with its sort key (bar, position, kind, source index): the bar's header first, then at
    # each position its Position token, its tempo, and its notes in their source order.
    per_bar = grid.position_id.size  # a time as one number: bar * per_bar + position
    times = np.unique(np.concatenate([bar_of[pitch] * per_bar + onset, bar_of[tempo] * per_bar + position[tempo]]))
    time_bar, time_position = np.divmod(times, per_bar)
    header = np.concatenate([bars, bars + 1])
    note = np.concatenate([pitch, pitch + 1, pitch + 2])
    tokens = np.concatenate([
        ids[header], grid.position_id[time_position], ids[tempo],
        ids[pitch], np.full(len(pitch), velocity), grid.duration_id[duration],
    ])  # fmt: skip
    key_bar = np.concatenate([bar_of[header], time_bar, bar_of[tempo], np.tile(bar_of[pitch], 3)])
    key_position = np.concatenate([np.full(len(header), -1), time_position, position[tempo], np.tile(onset, 3)])
    key_kind = np.concatenate([np.zeros(len(header) + len(times)), np.ones(len(tempo)), np.full(len(note), 2)])
    key_index = np.concatenate([header, np.zeros(len(times), np.int64), tempo, note])
    out = tokens[np.lexsort((key_index, key_kind, key_position, key_bar))].astype(np.uint16)
    return out, np.flatnonzero(out == grid.bar_id).astype(np.uint32)


def round_half_up(values: np.ndarray, step: int) -> np.ndarray:
    return (values + step // 2) // step * step


def score_like_rows(table: pa.Table, grid: ScoreGrid, score_like: ScoreLike) -> pa.Table:
    """`table` (TOKEN_SHARD_SCHEMA) with the rows that `score_like` draws written like a score (score_like_ids),
    their piece_id marked with SCORE_MARK; the others as they were."""
    piece_ids, ids_column, bars_column = [], [], []
    for piece_id, transpose, ids, bar_offsets in table_rows(table):
        drawn = piece_rng(score_like.seed, f"{piece_id}@{transpose}").random() < score_like.fraction
        if drawn:
            ids, bar_offsets = score_like_ids(ids, grid)
        piece_ids.append(piece_id + SCORE_MARK if drawn else piece_id)
        ids_column.append(ids)
        bars_column.append(bar_offsets)
    columns = {
        "piece_id": pa.array(piece_ids, pa.string()),
        "ids": list_array(ids_column, pa.uint16()),
        "bar_offsets": list_array(bars_column, pa.uint32()),
    }
    for name, column in columns.items():
        table = table.set_column(table.schema.get_field_index(name), name, column)
    return table
