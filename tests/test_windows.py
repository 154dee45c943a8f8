"""Windows stage: bar windows cut from token shards, decodable on their own."""

from __future__ import annotations

from itertools import accumulate
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
from midi_factory import bar_ticks, make_piano_score, write_midi
from miditok import TokSequence
from symusic import ControlChange, Note, Score, Tempo, TimeSignature, Track
from test_augment import write_token_shard

from pianomuse.tokenizer import load_tokenizer
from pianomuse.windows import build_windows

TPQ = 480
# Each bar of the score with changes: its time signature and the onsets of its notes, in beats. Some bars start
# on the downbeat, some later, one is empty, and the time signature changes at bar 6.
BARS = [
    ((4, 4), [0, 1, 2, 3]),
    ((4, 4), [1, 2.5]),
    ((4, 4), [0, 0, 2]),
    ((4, 4), [0.5, 3]),
    ((4, 4), [0, 1]),
    ((4, 4), [2]),
    ((3, 4), [0, 1, 2]),
    ((3, 4), [1]),
    ((3, 4), [0, 2]),
    ((3, 4), []),
    ((3, 4), [0.5]),
    ((3, 4), [0, 1, 2]),
]
BAR_STARTS = [0, *accumulate(bar_ticks(TPQ, ts) for ts, _ in BARS)]  # ticks; the last is the end of bar 11
# Tempo changes (tick, qpm): one in the middle of bar 3, one on the downbeat of bar 8.
TEMPOS = [(0, 120.0), (BAR_STARTS[3] + 2 * TPQ, 90.0), (BAR_STARTS[8], 150.0)]
# On the default tokenizer's grids: 32 velocity bins, durations in eighths of a beat.
PITCHES = [60, 64, 67, 72, 48, 55, 79]
VELOCITIES = [43, 67, 91, 111]


def score_with_changes() -> Score:
    """BARS at TEMPOS, with a sustain pedal pressed on the downbeat of bar 4; notes last 1/2, 1 or 3/2 beats."""
    score = Score(TPQ)
    previous = None
    for bar_start, (time_signature, _) in zip(BAR_STARTS, BARS):
        if time_signature != previous:
            score.time_signatures.append(TimeSignature(bar_start, *time_signature))
            previous = time_signature
    score.tempos.extend([Tempo(tick, qpm=qpm) for tick, qpm in TEMPOS])
    track = Track("piano", 0, False)
    onsets = [bar_start + int(beat * TPQ) for bar_start, (_, beats) in zip(BAR_STARTS, BARS) for beat in beats]
    for i, onset in enumerate(onsets):
        track.notes.append(
            Note(onset, TPQ // 2 * (1 + i % 3), PITCHES[i % len(PITCHES)], VELOCITIES[i % len(VELOCITIES)])
        )
    # As control changes: MIDI files carry those, symusic reads them back as pedals.
    track.controls.extend([ControlChange(BAR_STARTS[4], 64, 127), ControlChange(BAR_STARTS[4] + 2 * TPQ, 64, 0)])
    score.tracks.append(track)
    return score


@pytest.fixture(scope="module")
def tokenizer(tokenizer_path):
    return load_tokenizer(tokenizer_path)


def windows_of(
    tokenizer, tokenizer_path, tmp_path, scores: dict[str, Score] | None, **settings
) -> tuple[dict, datasets.Dataset]:
    """build_windows over a token shard of `scores` (None: the shard an earlier call wrote); stats and dataset."""
    shard = tmp_path / "shard.parquet"
    if scores is not None:
        write_token_shard(tokenizer, scores, shard)
    settings = {"context_bars": 2, "completion_bars": 2, "step": 1, "max_tokens": 4096} | settings
    stats = build_windows(tokenizer_path, [shard], out_dir=tmp_path / "windows", **settings)
    return stats, datasets.load_from_disk(str(tmp_path / "windows"))


def tokens_of(tokenizer, ids) -> list[str]:
    return [tokenizer[int(i)] for i in ids]


def nearest_tempo_token(tokenizer, qpm: float) -> str:
    return f"Tempo_{round(float(tokenizer.tempos[np.abs(tokenizer.tempos - qpm).argmin()]), 2)}"


@pytest.mark.parametrize(("context_bars", "completion_bars", "step"), [(3, 2, 2), (4, 12, 1), (1, 1, 3)])
def test_windows_hold_whole_bars_of_one_piece(tokenizer, tokenizer_path, tmp_path, context_bars, completion_bars, step):
    scores = {
        f"2004/piece-{n_bars}": make_piano_score(bars=n_bars, notes_per_bar=4, seed=n_bars) for n_bars in (17, 20)
    }
    stats, ds = windows_of(
        tokenizer,
        tokenizer_path,
        tmp_path,
        scores,
        context_bars=context_bars,
        completion_bars=completion_bars,
        step=step,
    )

    shard = pq.read_table(tmp_path / "shard.parquet").to_pandas().set_index("piece_id")
    window_bars = context_bars + completion_bars
    expected = [(p, s) for p in scores for s in range(0, len(shard.loc[p].bar_offsets) - window_bars + 1, step)]
    assert list(zip(ds["piece_id"], ds["start_bar"])) == expected
    assert stats["windows"] == len(ds) == len(expected) and stats["pieces"] == 2
    bar = tokenizer.vocab["Bar_None"]
    for row in ds:
        context, completion = np.array(row["context_ids"]), np.array(row["completion_ids"])
        assert completion[0] == bar
        assert (context == bar).sum() == context_bars and (completion == bar).sum() == completion_bars
        # Cut from this piece's own ids, at its bar boundaries (the last bar runs to the end of the piece).
        piece = shard.loc[row["piece_id"]]
        bounds = [*piece.bar_offsets, len(piece.ids)]
        s = row["start_bar"]
        assert (completion == piece.ids[bounds[s + context_bars] : bounds[s + window_bars]]).all()
        assert (context[-4:] == piece.ids[bounds[s + context_bars] - 4 : bounds[s + context_bars]]).all()


def test_short_pieces_are_counted_and_skipped(tokenizer, tokenizer_path, tmp_path):
    scores = {
        "2004/long": make_piano_score(bars=6, notes_per_bar=2),
        "2004/short": make_piano_score(bars=4, notes_per_bar=2),
    }
    stats, ds = windows_of(tokenizer, tokenizer_path, tmp_path, scores, context_bars=3, completion_bars=2)

    assert stats["pieces"] == 2 and stats["pieces_too_short"] == 1
    assert set(ds["piece_id"]) == {"2004/long"} and ds["start_bar"] == [0, 1]


def test_windows_over_the_cap_are_counted_and_dropped_not_truncated(tokenizer, tokenizer_path, tmp_path):
    scores = {
        "2004/a": make_piano_score(bars=12, notes_per_bar=1),
        "2004/b": make_piano_score(bars=12, notes_per_bar=6),
    }
    uncapped_stats, uncapped = windows_of(tokenizer, tokenizer_path, tmp_path, scores)
    lengths = np.array([len(c) + len(m) for c, m in zip(uncapped["context_ids"], uncapped["completion_ids"])])
    cap = int(np.median(lengths))

    stats, ds = windows_of(tokenizer, tokenizer_path, tmp_path, None, max_tokens=cap)

    assert stats["windows_over_cap"] == (lengths > cap).sum() > 0
    assert stats["windows"] == len(ds) == (lengths <= cap).sum()
    assert stats["tokens"] == lengths[lengths <= cap].sum() and uncapped_stats["tokens"] == lengths.sum()
    kept = uncapped.select(np.flatnonzero(lengths <= cap))
    assert ds.to_dict() == kept.to_dict()


def test_every_window_states_the_time_signature_and_tempo_in_force(tokenizer, tokenizer_path, tmp_path):
    _, ds = windows_of(tokenizer, tokenizer_path, tmp_path, {"2004/changes": score_with_changes()})

    assert ds["start_bar"] == list(range(len(BARS) - 3))
    for row in ds:
        s = row["start_bar"]
        numerator, denominator = BARS[s][0]
        qpm = [qpm for tick, qpm in TEMPOS if tick <= BAR_STARTS[s]][-1]
        expected = ["Bar_None", f"TimeSig_{numerator}/{denominator}", "Position_0", nearest_tempo_token(tokenizer, qpm)]
        assert tokens_of(tokenizer, row["context_ids"][:4]) == expected, s


def test_decoding_a_window_gives_back_its_bars(tokenizer, tokenizer_path, tmp_path):
    """Notes (onset from the window's start, duration, pitch, velocity), tempos and time signatures."""
    score = score_with_changes()
    _, ds = windows_of(tokenizer, tokenizer_path, tmp_path, {"2004/changes": score}, context_bars=2, completion_bars=3)

    for row in ds:
        ids = row["context_ids"] + row["completion_ids"]
        assert tokenizer.tokens_errors(TokSequence(ids=ids)) == 0
        decoded = tokenizer.decode([ids])
        tpq = decoded.ticks_per_quarter
        start, end = BAR_STARTS[row["start_bar"]], BAR_STARTS[row["start_bar"] + 5]

        original = sorted(
            ((n.time - start) / TPQ, n.duration / TPQ, n.pitch, n.velocity)
            for n in score.tracks[0].notes
            if start <= n.time < end
        )
        assert (
            sorted((n.time / tpq, n.duration / tpq, n.pitch, n.velocity) for n in decoded.tracks[0].notes) == original
        )
        in_force = [qpm for tick, qpm in TEMPOS if tick <= start][-1]
        changes = [(0.0, in_force)] + [((tick - start) / TPQ, qpm) for tick, qpm in TEMPOS if start < tick < end]
        assert [(t.time / tpq, nearest_tempo_token(tokenizer, t.qpm)) for t in decoded.tempos] == [
            (time, nearest_tempo_token(tokenizer, qpm)) for time, qpm in changes
        ]
        expected_signatures = [(0.0, *BARS[row["start_bar"]][0])] + [
            ((ts.time - start) / TPQ, ts.numerator, ts.denominator)
            for ts in score.time_signatures
            if start < ts.time < end
        ]
        assert [(ts.time / tpq, ts.numerator, ts.denominator) for ts in decoded.time_signatures] == expected_signatures


def test_a_window_is_what_miditok_writes_for_its_bars_alone(tokenizer, tokenizer_path, tmp_path):
    """Tokenizing the score cut to the window's bars (symusic's clip keeps the tempo and time signature in
    force at the cut) gives the window's ids exactly; windows ending on the empty bar are left out, as miditok
    writes no Bar token after the last note."""
    score = Score(str(write_midi(score_with_changes(), tmp_path / "changes.midi")))  # with its pedal
    assert len(score.tracks[0].pedals) == 1
    _, ds = windows_of(tokenizer, tokenizer_path, tmp_path, {"2004/changes": score}, context_bars=3, completion_bars=1)

    compared = 0
    for row in ds:
        s = row["start_bar"]
        if not BARS[s + 3][1]:
            continue
        bars_alone = score.clip(BAR_STARTS[s], BAR_STARTS[s + 4], clip_end=False).shift_time(-BAR_STARTS[s])
        assert row["context_ids"] + row["completion_ids"] == tokenizer.encode(bars_alone)[0].ids, s
        compared += 1
    assert compared == len(ds) - 1


def test_the_dataset_round_trips_through_disk_and_pandas(tokenizer, tokenizer_path, tmp_path):
    stats, ds = windows_of(tokenizer, tokenizer_path, tmp_path, {"2004/a": make_piano_score(bars=6, notes_per_bar=3)})

    assert ds.features["context_ids"].feature.dtype == ds.features["completion_ids"].feature.dtype == "uint16"
    assert (ds.features["start_bar"].dtype, ds.features["transpose"].dtype) == ("int32", "int8")
    frame = ds.to_pandas()
    assert list(frame.columns) == ["context_ids", "completion_ids", "piece_id", "start_bar", "transpose"]
    assert len(frame) == stats["windows"] == 3 and frame["start_bar"].tolist() == [0, 1, 2]
    assert frame["context_ids"][0].dtype == np.uint16 and (frame["transpose"] == 0).all()
    assert sum(len(c) + len(m) for c, m in zip(frame["context_ids"], frame["completion_ids"])) == stats["tokens"]


def test_a_failed_save_leaves_the_previous_dataset_and_a_rerun_replaces_it(
    tokenizer, tokenizer_path, tmp_path, monkeypatch
):
    windows_of(tokenizer, tokenizer_path, tmp_path, {"2004/a": make_piano_score(bars=6, notes_per_bar=3)})

    def save_half(dataset, path):
        (Path(path) / "data-00000-of-00001.arrow").parent.mkdir(parents=True, exist_ok=True)  # as save_to_disk does
        (Path(path) / "data-00000-of-00001.arrow").write_bytes(b"half")
        raise OSError("disk full")

    with monkeypatch.context() as patched:
        patched.setattr(datasets.Dataset, "save_to_disk", save_half)
        with pytest.raises(OSError, match="disk full"):
            windows_of(tokenizer, tokenizer_path, tmp_path, None, step=2)
    assert datasets.load_from_disk(str(tmp_path / "windows"))["start_bar"] == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["midi", "shard.parquet", "windows"]

    _, again = windows_of(tokenizer, tokenizer_path, tmp_path, None, step=2)
    assert again["start_bar"] == [0, 2]
