"""Augment stage: transpositions in token space, checked against miditok's own score augmentation."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from midi_factory import bar_ticks, make_piano_score, write_midi
from miditok.data_augmentation import augment_score
from symusic import ControlChange, Note, Pedal, Score, Tempo, TimeSignature, Track

from pianomuse.augment import (
    LEAD_MARK,
    LOOP_MARK,
    SCORE_MARK,
    THREE_FOUR_MARK,
    Loops,
    ScoreGrid,
    ScoreLike,
    augment_shard,
    pitch_shift_table,
    score_like_ids,
    three_four_ids,
    transpose_ids,
)
from pianomuse.files import write_parquet_atomic
from pianomuse.maestro import read_metadata
from pianomuse.remi import TempoMarkers, list_array, merge_piano_tracks, standalone_bars, tokenize_score
from pianomuse.tokenizer import load_tokenizer
from pianomuse.tokens import TOKEN_SHARD_SCHEMA, tokenize_piece


@pytest.fixture(scope="module")
def tokenizer(tokenizer_path):
    return load_tokenizer(tokenizer_path)


def write_token_shard(tokenizer, scores: dict[str, Score], path, transpose: int = 0):
    """A token shard (TOKEN_SHARD_SCHEMA) of `scores` (piece_id -> score), tokenized like the tokenize stage."""
    midi_dir = path.parent / "midi"
    pieces = [
        tokenize_piece(tokenizer, write_midi(score, midi_dir / f"{piece_id}.midi"))
        for piece_id, score in scores.items()
    ]
    columns = {
        "piece_id": list(scores),
        "split": ["train"] * len(scores),
        "composer": ["Composer"] * len(scores),
        "title": [f"Title of {piece_id}" for piece_id in scores],
        "year": [2004] * len(scores),
        "duration": [30.0] * len(scores),
        "transpose": np.full(len(scores), transpose, dtype=np.int8),
        "ids": list_array([ids for ids, _, _ in pieces], pa.uint16()),
        "bar_offsets": list_array([bars for _, bars, _ in pieces], pa.uint32()),
        "n_notes": np.array([n for _, _, n in pieces], dtype=np.int32),
    }
    write_parquet_atomic(pa.Table.from_pydict(columns, schema=TOKEN_SHARD_SCHEMA), path)
    return path


def tokens_of(tokenizer, ids) -> list[str]:
    return [tokenizer[int(i)] for i in ids]


def pitches_of(tokenizer, ids) -> list[int]:
    return [int(token.removeprefix("Pitch_")) for token in tokens_of(tokenizer, ids) if token.startswith("Pitch_")]


def test_transposition_renames_only_the_pitch_tokens(tokenizer, tmp_path):
    score = make_piano_score(bars=2, notes_per_bar=4, pitches=[60, 64, 67, 72])
    ids, _, _ = tokenize_piece(tokenizer, write_midi(score, tmp_path / "piece.midi"))
    table = pitch_shift_table(tokenizer)

    up = transpose_ids(ids, 5, table)

    assert up.dtype == np.uint16 and len(up) == len(ids)
    assert pitches_of(tokenizer, up) == [p + 5 for p in pitches_of(tokenizer, ids)]
    is_pitch = np.array([token.startswith("Pitch_") for token in tokens_of(tokenizer, ids)])
    assert (up[~is_pitch] == ids[~is_pitch]).all()
    assert (transpose_ids(up, -5, table) == ids).all()


def test_a_pitch_leaving_the_range_gives_none(tokenizer, tmp_path):
    low, high = tokenizer.config.pitch_range
    score = make_piano_score(bars=1, notes_per_bar=2, pitches=[low + 2, high - 3])
    ids, _, _ = tokenize_piece(tokenizer, write_midi(score, tmp_path / "piece.midi"))
    table = pitch_shift_table(tokenizer)

    assert transpose_ids(ids, -2, table) is not None and transpose_ids(ids, 3, table) is not None
    assert transpose_ids(ids, -3, table) is None
    assert transpose_ids(ids, 4, table) is None
    with pytest.raises(ValueError, match="outside"):
        transpose_ids(ids, 13, table)


def test_augment_shard_writes_the_transpositions_that_fit(tokenizer, tokenizer_path, tmp_path):
    low, high = tokenizer.config.pitch_range
    scores = {
        "2004/low": make_piano_score(bars=2, notes_per_bar=4, pitches=[low + 1, 60]),  # no room 2 down
        "2004/mid": make_piano_score(bars=3, notes_per_bar=4, seed=1),
        "2004/high": make_piano_score(bars=2, notes_per_bar=4, pitches=[60, high - 2]),  # no room 3 up
    }
    shard = write_token_shard(tokenizer, scores, tmp_path / "shard.parquet")

    stats = augment_shard(tokenizer_path, shard, [-2, 1, 3], tmp_path / "augment.parquet")

    original = pq.read_table(shard).to_pandas().set_index("piece_id")
    augmented = pq.read_table(tmp_path / "augment.parquet")
    assert augmented.schema == TOKEN_SHARD_SCHEMA
    rows = augmented.to_pandas()
    assert list(zip(rows["piece_id"], rows["transpose"])) == [
        ("2004/high", -2),
        ("2004/high", 1),
        ("2004/low", 1),
        ("2004/low", 3),
        ("2004/mid", -2),
        ("2004/mid", 1),
        ("2004/mid", 3),
    ]
    table = pitch_shift_table(tokenizer)
    for row in rows.itertuples():
        source = original.loc[row.piece_id]
        assert (row.ids == transpose_ids(source.ids, row.transpose, table)).all()
        assert (row.bar_offsets == source.bar_offsets).all()
        assert (row.n_notes, row.title, row.split) == (source.n_notes, source.title, source.split)
    assert stats["skipped_per_offset"] == {"-2": 1, "1": 0, "3": 1}
    assert stats["written"] == 7 and stats["pieces"] == 3
    assert stats["tokens"] == sum(len(ids) for ids in rows["ids"])


def test_augment_shard_refuses_offset_zero_and_transposed_input(tokenizer, tokenizer_path, tmp_path):
    scores = {"2004/a": make_piano_score(bars=1, notes_per_bar=2)}
    originals = write_token_shard(tokenizer, scores, tmp_path / "originals.parquet")
    transposed = write_token_shard(tokenizer, scores, tmp_path / "transposed.parquet", transpose=2)
    out = tmp_path / "out.parquet"
    with pytest.raises(ValueError, match="non-zero"):
        augment_shard(tokenizer_path, originals, [0, 1], out)
    with pytest.raises(ValueError, match="original"):
        augment_shard(tokenizer_path, transposed, [1], out)
    assert not out.exists()


@pytest.mark.maestro
def test_token_space_transposition_equals_miditok_augment_score(tokenizer, maestro_dir):
    """On real pieces: transposing the ids == augment_score(score, pitch_offset) then tokenizing.

    augment_score shifts only the pitches of non-drum tracks (velocities, durations, pedals, tempos untouched)
    and the tokenizer's preprocessing treats every pitch alike, so the two agree token for token.
    """
    low, high = tokenizer.config.pitch_range
    offsets = [-5, 3, 6]
    table = pitch_shift_table(tokenizer)
    in_range, out_of_range = [], []
    for midi_path in read_metadata(maestro_dir)["midi_path"][:12]:
        score = Score(midi_path)
        merge_piano_tracks(score)  # as tokenize_piece does
        pitches = score.tracks[0].notes.numpy()["pitch"]
        if pitches.min() + min(offsets) >= low and pitches.max() + max(offsets) <= high:
            in_range.append((midi_path, score))
        elif pitches.max() + max(offsets) > high and pitches.max() <= high:
            out_of_range.append((midi_path, score))
    assert len(in_range) >= 3 and out_of_range, "the first MAESTRO pieces no longer give both cases"

    for midi_path, score in in_range[:3]:
        ids, _, _ = tokenize_piece(tokenizer, midi_path)
        for offset in offsets:
            expected = tokenizer.encode(augment_score(score, pitch_offset=offset))[0].ids
            assert transpose_ids(ids, offset, table).tolist() == expected, (midi_path, offset)

    midi_path, score = out_of_range[0]
    ids, _, n_notes = tokenize_piece(tokenizer, midi_path)
    assert transpose_ids(ids, max(offsets), table) is None
    # Tokenizing the transposed score would silently drop the notes pushed out of range instead.
    dropped = tokenizer.encode(augment_score(score, pitch_offset=max(offsets)))[0].ids
    assert len(pitches_of(tokenizer, dropped)) < n_notes


def test_loop_rows_repeat_one_span_of_the_piece_exactly(tokenizer, tokenizer_path, tmp_path):
    scores = {
        "2004/a": make_piano_score(bars=6, notes_per_bar=4, seed=3),
        "2004/b": make_piano_score(bars=5, notes_per_bar=3, seed=4),
    }
    shard = write_token_shard(tokenizer, scores, tmp_path / "shard.parquet")
    loops = Loops(per_piece=3, span_bars=[1, 2, 4], length_bars=7, seed=0)

    stats = augment_shard(tokenizer_path, shard, [2], tmp_path / "augment.parquet", loops)

    rows = pq.read_table(tmp_path / "augment.parquet").to_pandas()
    looped = rows[rows["piece_id"].str.contains(LOOP_MARK, regex=False)]
    assert stats["loops"] == len(looped) == 6 and stats["written"] == 2 + 6
    original = pq.read_table(shard).to_pandas().set_index("piece_id")
    table = pitch_shift_table(tokenizer)
    for row in looped.itertuples():
        source_id, span = row.piece_id.split(LOOP_MARK)
        first, bars = map(int, span.split("+"))
        source = original.loc[source_id]
        assert row.transpose in (0, 2) and row.title == source.title
        assert len(row.bar_offsets) == 7 and (row.ids[row.bar_offsets] == tokenizer.vocab["Bar_None"]).all()
        # Every repeat is the same tokens: the span's bars as a stream of their own, transposed.
        bounds = np.append(row.bar_offsets, len(row.ids))
        repeats = [row.ids[bounds[i] : bounds[min(i + bars, 7)]] for i in range(0, 7, bars)]
        assert all((r == repeats[0][: len(r)]).all() for r in repeats)
        markers = TempoMarkers.of(tokenizer)
        source_ids = transpose_ids(np.asarray(source.ids, dtype=np.uint16), row.transpose, table)
        expected = standalone_bars(source_ids, np.asarray(source.bar_offsets), markers, first, first + bars)
        assert (repeats[0] == expected).all()
        assert row.n_notes == sum(token.startswith("Pitch_") for token in tokens_of(tokenizer, row.ids))
    # Seeded per piece: the same loops again, and other ones with another seed.
    again = augment_shard(tokenizer_path, shard, [2], tmp_path / "again.parquet", loops)
    assert again == {**stats, "seconds": again["seconds"]}
    assert pq.read_table(tmp_path / "again.parquet").equals(pq.read_table(tmp_path / "augment.parquet"))
    augment_shard(tokenizer_path, shard, [2], tmp_path / "other.parquet", Loops(3, [1, 2, 4], 7, seed=1))
    other_ids = pq.read_table(tmp_path / "other.parquet").to_pandas()["piece_id"].tolist()
    assert other_ids != rows["piece_id"].tolist()


def test_loop_rows_can_state_the_tempo_once_as_a_score_does(tokenizer, tokenizer_path, tmp_path):
    offbeat = make_piano_score(bars=5, notes_per_bar=3, seed=4, tempo_qpm=90.0)
    notes = [Note(n.time + 240, n.duration, n.pitch, n.velocity) for n in offbeat.tracks[0].notes]
    offbeat.tracks[0].notes.clear()
    offbeat.tracks[0].notes.extend(notes)  # every bar starts an eighth after its downbeat: no Position_0 but the first
    scores = {"2004/a": make_piano_score(bars=6, notes_per_bar=4, seed=3), "2004/b": offbeat}
    shard = write_token_shard(tokenizer, scores, tmp_path / "shard.parquet")
    restated = Loops(per_piece=4, span_bars=[1, 2], length_bars=7, seed=0)
    once = Loops(per_piece=4, span_bars=[1, 2], length_bars=7, seed=0, restate_tempo=False)
    augment_shard(tokenizer_path, shard, [], tmp_path / "restated.parquet", restated)
    augment_shard(tokenizer_path, shard, [], tmp_path / "once.parquet", once)

    old, new = (pq.read_table(tmp_path / f"{name}.parquet").to_pandas() for name in ("restated", "once"))
    assert old["piece_id"].tolist() == new["piece_id"].tolist()  # the same draws
    for before, after in zip(old.itertuples(), new.itertuples()):
        if LOOP_MARK not in before.piece_id:
            continue
        tempos = [t for t in tokens_of(tokenizer, before.ids) if t.startswith("Tempo_")]
        bars = int(before.piece_id.rsplit("+", 1)[1])
        assert len(tempos) == -(-7 // bars)  # one per repeat before, one in all now
        assert [t for t in tokens_of(tokenizer, after.ids) if t.startswith("Tempo_")] == tempos[:1]
        # What tokenizing the repeated score with its tempo stated once gives.
        score = tokenizer.decode([before.ids.tolist()])
        first_tempo = score.tempos[0]
        score.tempos.clear()
        score.tempos.append(first_tempo)
        assert after.ids.tolist() == tokenize_score(tokenizer, score)[0].tolist(), before.piece_id
        assert len(after.bar_offsets) == 7 and (after.ids[after.bar_offsets] == tokenizer.vocab["Bar_None"]).all()


def test_loop_rows_can_start_after_bars_of_their_piece(tokenizer, tokenizer_path, tmp_path):
    scores = {
        "2004/a": make_piano_score(bars=12, notes_per_bar=4, seed=3),
        "2004/b": make_piano_score(bars=6, notes_per_bar=3, seed=4, tempo_qpm=90.0),
    }
    shard = write_token_shard(tokenizer, scores, tmp_path / "shard.parquet")
    opening = Loops(per_piece=12, span_bars=[1, 2], length_bars=8, seed=0, restate_tempo=False)
    leading = Loops(per_piece=12, span_bars=[1, 2], length_bars=8, seed=0, restate_tempo=False, lead_bars=[0, 2, 5])
    augment_shard(tokenizer_path, shard, [2], tmp_path / "opening.parquet", opening)
    augment_shard(tokenizer_path, shard, [2], tmp_path / "leading.parquet", leading)

    old, new = (pq.read_table(tmp_path / f"{name}.parquet").to_pandas() for name in ("opening", "leading"))
    # The same spans and transpositions drawn: the leads come from a generator of their own.
    drawn = sorted(zip(new["piece_id"].str.split(LEAD_MARK).str[0], new["transpose"]))
    assert drawn == sorted(zip(old["piece_id"], old["transpose"]))
    opening_row = {(row.piece_id, row.transpose): row for row in old.itertuples()}
    original = pq.read_table(shard).to_pandas().set_index("piece_id")
    table, markers = pitch_shift_table(tokenizer), TempoMarkers.of(tokenizer)
    leads = set()
    for after in new.itertuples():
        before = opening_row[after.piece_id.split(LEAD_MARK)[0], after.transpose]
        if LOOP_MARK not in after.piece_id:
            continue
        source_id, span = after.piece_id.split(LOOP_MARK)
        first, bars = map(int, span.split(LEAD_MARK)[0].split("+"))
        lead = int(span.split(LEAD_MARK)[1]) if LEAD_MARK in span else 0
        leads.add(lead)
        assert lead in (0, 2, 5) or lead == first < 5  # fewer where the piece has fewer bars before the span
        assert len(after.bar_offsets) == 8 and (after.ids[after.bar_offsets] == tokenizer.vocab["Bar_None"]).all()
        # The lead and the span's first play are the piece's own bars, as played.
        source = original.loc[source_id]
        source_ids = transpose_ids(np.asarray(source.ids, dtype=np.uint16), after.transpose, table)
        played = standalone_bars(source_ids, np.asarray(source.bar_offsets), markers, first - lead, first + bars)
        bounds = np.append(after.bar_offsets, len(after.ids))
        assert (after.ids[: bounds[lead + bars]] == played).all(), after.piece_id
        # Then the repeats, as they follow the first play in the row that opens with the loop.
        opening_bounds = np.append(before.bar_offsets, len(before.ids))
        repeats = before.ids[opening_bounds[bars] : opening_bounds[8 - lead]]
        assert (after.ids[bounds[lead + bars] :] == repeats).all(), after.piece_id
        # A score with its tempo stated once: tokenizing the row's own score gives the row back.
        assert after.ids.tolist() == tokenize_score(tokenizer, tokenizer.decode([after.ids.tolist()]))[0].tolist()
    assert {0, 2, 5} < leads  # and a lead cut short


def test_loops_refuse_a_span_longer_than_the_loop():
    with pytest.raises(ValueError, match="cannot hold"):
        Loops(per_piece=1, span_bars=[8], length_bars=4, seed=0)
    with pytest.raises(ValueError, match="cannot hold a span of 4 after 5 lead bars"):
        Loops(per_piece=1, span_bars=[1, 4], length_bars=8, seed=0, lead_bars=[0, 5])
    with pytest.raises(ValueError, match="lead_bars"):
        Loops(per_piece=1, span_bars=[1], length_bars=8, seed=0, lead_bars=[-1])


def three_four_twin(tokenizer, ids: np.ndarray) -> np.ndarray:
    """three_four_ids done on the score: decode, drop what starts in a bar's fourth beat, close the gaps, 3/4."""
    score = tokenizer.decode([ids.tolist()])
    beat = score.tpq

    def kept(time: int) -> bool:
        return time % (4 * beat) < 3 * beat

    def moved(time: int) -> int:
        return time // (4 * beat) * 3 * beat + time % (4 * beat)

    track = score.tracks[0]
    notes = [Note(moved(n.time), n.duration, n.pitch, n.velocity) for n in track.notes if kept(n.time)]
    tempos = [Tempo(moved(t.time), qpm=t.qpm) for t in score.tempos if kept(t.time)]
    assert all(kept(p.time) and kept(p.end) for p in track.pedals), "the twin moves pedals inside the first 3 beats"
    pedals = [(moved(p.time), moved(p.end)) for p in track.pedals]
    track.notes.clear()
    track.notes.extend(notes)
    track.pedals.clear()
    track.pedals.extend([Pedal(start, end - start) for start, end in pedals])
    score.tempos.clear()
    score.tempos.extend(tempos)
    score.time_signatures.clear()
    score.time_signatures.append(TimeSignature(0, 3, 4))
    return tokenize_score(tokenizer, score)[0]


@pytest.mark.parametrize("notes_per_bar", [None, 4, 5])
def test_three_four_ids_equal_the_score_cut_to_three_beats(tokenizer, tmp_path, notes_per_bar):
    """On the off-grid score (None), on notes on every beat, and on notes across the beats."""
    score = make_piano_score(bars=3, notes_per_bar=notes_per_bar, seed=7) if notes_per_bar else off_grid_score((4, 4))
    name = f"{notes_per_bar}-to-a-bar"
    ids, _, _ = tokenize_piece(tokenizer, write_midi(score, tmp_path / f"{name}.midi"))
    grid = ScoreGrid.of(tokenizer)

    cut = three_four_ids(ids, grid)

    assert cut.tolist() == three_four_twin(tokenizer, ids).tolist()
    tokens = tokens_of(tokenizer, cut)
    assert {t for t in tokens if t.startswith("TimeSig_")} == {"TimeSig_3/4"}
    assert tokens.count("Bar_None") == tokens_of(tokenizer, ids).count("Bar_None")
    assert max(int(t.split("_")[1]) for t in tokens if t.startswith("Position_")) < 3 * grid.per_quarter
    assert sum(t.startswith("Pitch_") for t in tokens) < sum(t.startswith("Pitch_") for t in tokens_of(tokenizer, ids))
    assert three_four_ids(cut, grid) is None  # only 4/4 bars are cut


def test_augment_shard_cuts_the_drawn_loop_rows_to_three_four(tokenizer, tokenizer_path, tmp_path):
    scores = {"2004/a": make_piano_score(bars=6, notes_per_bar=5, seed=3), "2004/b": make_piano_score(5, 8, seed=4)}
    shard = write_token_shard(tokenizer, scores, tmp_path / "shard.parquet")
    grid = ScoreGrid.of(tokenizer)
    rows = {}
    for share in (0.0, 0.5, 1.0):
        loops = Loops(per_piece=8, span_bars=[1, 2], length_bars=6, seed=0, restate_tempo=False, three_four=share)
        augment_shard(tokenizer_path, shard, [1], tmp_path / f"{share}.parquet", loops)
        rows[share] = pq.read_table(tmp_path / f"{share}.parquet").to_pandas()

    plain = rows[0.0].set_index(["piece_id", "transpose"])
    assert not rows[0.0]["piece_id"].str.contains(THREE_FOUR_MARK, regex=False).any()
    assert rows[1.0]["piece_id"].str.contains(LOOP_MARK, regex=False).sum() == 16
    for share in (0.5, 1.0):
        marked = int(rows[share]["piece_id"].str.endswith(THREE_FOUR_MARK).sum())
        assert marked == 16 if share == 1.0 else 0 < marked < 16
        for row in rows[share].itertuples():
            # The same draws: a row cut to 3/4 is the 4/4 row cut.
            source = plain.loc[[(row.piece_id.removesuffix(THREE_FOUR_MARK), row.transpose)]].iloc[0]
            expected = three_four_ids(source.ids, grid) if row.piece_id.endswith(THREE_FOUR_MARK) else source.ids
            assert row.ids.tolist() == expected.tolist(), row.piece_id
            assert row.bar_offsets.tolist() == np.flatnonzero(row.ids == grid.bar_id).tolist()
            assert row.n_notes == sum(t.startswith("Pitch_") for t in tokens_of(tokenizer, row.ids))
    with pytest.raises(ValueError, match="between 0 and 1"):
        Loops(per_piece=1, span_bars=[1], length_bars=4, seed=0, three_four=1.5)


def score_like_twin(tokenizer, ids: np.ndarray) -> np.ndarray:
    """score_like_ids done on the score instead of the tokens: decode, change the notes, tokenize again."""
    score = tokenizer.decode([ids.tolist()])
    (signature,) = {(ts.numerator, ts.denominator) for ts in score.time_signatures}
    track, sixteenth, bar = score.tracks[0], score.tpq // 4, bar_ticks(score.tpq, signature)
    notes = track.notes.numpy()
    if len(notes["time"]):
        velocity = int(np.sort(notes["velocity"])[(len(notes["time"]) - 1) // 2])
        bar_start = notes["time"] // bar * bar
        onset = np.minimum((notes["time"] - bar_start + sixteenth // 2) // sixteenth * sixteenth, bar - sixteenth)
        duration = np.maximum((notes["duration"] + sixteenth // 2) // sixteenth * sixteenth, sixteenth)
        changed = zip(bar_start + onset, duration, notes["pitch"])
        track.notes.clear()
        track.notes.extend([Note(int(t), int(d), int(p), velocity) for t, d, p in changed])
    track.pedals.clear()
    return tokenize_score(tokenizer, score)[0]


def off_grid_score(time_signature: tuple[int, int]) -> Score:
    """Notes off the sixteenth grid: in a bar's last 32nd, a 64th long, two that round onto one onset in falling
    pitch order, a pedal, and a second tempo off the grid."""
    tpq, thirty_second = 480, 60
    bar = bar_ticks(tpq, time_signature)
    score = Score(tpq)
    score.time_signatures.append(TimeSignature(0, *time_signature))
    score.tempos.extend([Tempo(0, qpm=120.0), Tempo(bar + 3 * thirty_second, qpm=90.0)])
    track = Track("piano", 0)
    notes = [(0, 400, 60, 50), (thirty_second, 30, 64, 90), (bar - thirty_second, 100, 67, 70),
             (bar + 5 * thirty_second, 200, 72, 40), (bar + 6 * thirty_second, 900, 55, 100),
             (2 * bar + 7 * thirty_second, 2000, 48, 64), (2 * bar + 8 * thirty_second, 200, 62, 64)]  # fmt: skip
    track.notes.extend([Note(*note) for note in notes])
    track.controls.extend([ControlChange(thirty_second, 64, 127), ControlChange(bar, 64, 0)])  # a sustain pedal
    score.tracks.append(track)
    return score


@pytest.mark.parametrize("time_signature", [(4, 4), (3, 4)])
def test_score_like_ids_equal_the_score_written_on_the_grid(tokenizer, tmp_path, time_signature):
    ids, _, _ = tokenize_piece(tokenizer, write_midi(off_grid_score(time_signature), tmp_path / "off-grid.midi"))
    grid = ScoreGrid.of(tokenizer)

    score_like, bars = score_like_ids(ids, grid)

    assert score_like.tolist() == score_like_twin(tokenizer, ids).tolist()
    tokens = tokens_of(tokenizer, score_like)
    assert {t for t in tokens if t.startswith("Velocity_")} == {"Velocity_63"}  # the lower middle of 7 velocities
    assert any(t.startswith("Pedal") for t in tokens_of(tokenizer, ids))
    assert not any(t.startswith("Pedal") for t in tokens)
    last = time_signature[0] * 8 - 1  # the bar's last 32nd (8 positions to a quarter) rounds to its last sixteenth
    assert f"Position_{last}" in tokens_of(tokenizer, ids) and f"Position_{last - 1}" in tokens
    assert sum(t.startswith("Tempo_") for t in tokens) == 2
    assert bars.tolist() == np.flatnonzero(score_like == tokenizer.vocab["Bar_None"]).tolist()
    assert score_like_ids(score_like, grid)[0].tolist() == score_like.tolist()  # already a score: unchanged


def test_score_like_ids_equal_the_score_written_on_the_grid_on_maestro(tokenizer, maestro_dir):
    grid = ScoreGrid.of(tokenizer)
    for midi_path in read_metadata(maestro_dir)["midi_path"][:3]:
        ids, bar_offsets, _ = tokenize_piece(tokenizer, midi_path)
        ids = ids[: bar_offsets[24]]  # 24 bars: enough notes off the grid, quick to decode
        score_like, _ = score_like_ids(ids, grid)
        assert score_like.tolist() == score_like_twin(tokenizer, ids).tolist(), midi_path
        assert len(score_like) < len(ids)  # pedals dropped, onsets merged


def test_score_like_ids_refuse_other_rows(tokenizer, tmp_path):
    grid = ScoreGrid.of(tokenizer)
    ids, _, _ = tokenize_piece(tokenizer, write_midi(off_grid_score((6, 8)), tmp_path / "six-eight.midi"))
    with pytest.raises(ValueError, match="quarter notes"):
        score_like_ids(ids, grid)
    with pytest.raises(ValueError, match="starts with a Bar"):
        score_like_ids(ids[2:], grid)
    with pytest.raises(ValueError, match="between 0 and 1"):
        ScoreLike(fraction=1.5, seed=0)


def test_augment_shard_makes_the_drawn_rows_score_like(tokenizer, tokenizer_path, tmp_path):
    scores = {f"2004/{name}": make_piano_score(bars=6, notes_per_bar=5, seed=seed) for seed, name in enumerate("abcd")}
    shard = write_token_shard(tokenizer, scores, tmp_path / "shard.parquet")
    loops = Loops(per_piece=2, span_bars=[1, 2], length_bars=6, seed=0)
    augment_shard(tokenizer_path, shard, [1, 2], tmp_path / "plain.parquet", loops)
    plain = pq.read_table(tmp_path / "plain.parquet").to_pandas()
    grid = ScoreGrid.of(tokenizer)

    stats = augment_shard(tokenizer_path, shard, [1, 2], tmp_path / "half.parquet", loops, ScoreLike(0.5, seed=0))

    half = pq.read_table(tmp_path / "half.parquet").to_pandas()
    marked = half["piece_id"].str.endswith(SCORE_MARK)
    assert 0 < marked.sum() < len(half) and stats["score_like"] == marked.sum() and stats["written"] == len(plain)
    source = plain.set_index(["piece_id", "transpose"])
    for row in half.itertuples():
        was = source.loc[(row.piece_id.removesuffix(SCORE_MARK), row.transpose)]
        ids, bars = score_like_ids(was.ids, grid) if row.piece_id.endswith(SCORE_MARK) else (was.ids, was.bar_offsets)
        assert row.ids.tolist() == ids.tolist() and row.bar_offsets.tolist() == bars.tolist()
        assert row.n_notes == was.n_notes and row.title == was.title
    # Drawn per row from the seed: the same rows again, other rows with another seed; 0 and 1 make none and all.
    augment_shard(tokenizer_path, shard, [1, 2], tmp_path / "again.parquet", loops, ScoreLike(0.5, seed=0))
    assert pq.read_table(tmp_path / "again.parquet").equals(pq.read_table(tmp_path / "half.parquet"))
    other = augment_shard(tokenizer_path, shard, [1, 2], tmp_path / "other.parquet", loops, ScoreLike(0.5, seed=1))
    assert pq.read_table(tmp_path / "other.parquet")["piece_id"].to_pylist() != half["piece_id"].tolist()
    assert other["score_like"] > 0
    none = augment_shard(tokenizer_path, shard, [1, 2], tmp_path / "none.parquet", loops, ScoreLike(0.0, seed=0))
    every = augment_shard(tokenizer_path, shard, [1, 2], tmp_path / "all.parquet", loops, ScoreLike(1.0, seed=0))
    assert none["score_like"] == 0 and every["score_like"] == len(plain)
