"""Tokenize stage: one piece to REMI ids, whole shards to Parquet, bad files quarantined."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from midi_factory import make_piano_score, write_midi
from symusic import ControlChange, Score

from pianomuse.maestro import read_metadata, write_manifest
from pianomuse.remi import RejectedPiece
from pianomuse.startup import skip_torch_import
from pianomuse.tokenizer import load_tokenizer
from pianomuse.tokens import (
    REJECTS_SCHEMA,
    TOKEN_SHARD_SCHEMA,
    shard_index,
    tokenize_piece,
    tokenize_shard,
)

# On the default tokenizer's grids: 32 velocity bins, 8 positions per beat.
PITCHES = [60, 64, 67, 72, 48, 55]
VELOCITIES = [43, 67, 91, 111]


@pytest.fixture(scope="module")
def tokenizer(tokenizer_path):
    return load_tokenizer(tokenizer_path)


def notes_of(score) -> list[tuple[float, float, int, int]]:
    """(start, duration) in quarter notes, pitch and velocity of every note, in time order."""
    tpq = score.ticks_per_quarter
    notes = [n for track in score.tracks for n in track.notes]
    return sorted((n.time / tpq, n.duration / tpq, n.pitch, n.velocity) for n in notes)


def test_decoding_the_ids_gives_back_the_notes(tokenizer, tmp_path):
    score = make_piano_score(bars=3, notes_per_bar=8, pitches=PITCHES, velocities=VELOCITIES)
    ids, bar_offsets, n_notes = tokenize_piece(tokenizer, write_midi(score, tmp_path / "piece.midi"))

    assert ids.dtype == np.uint16 and bar_offsets.dtype == np.uint32
    assert n_notes == 24
    assert notes_of(tokenizer.decode([ids.tolist()])) == notes_of(score)


def test_bar_offsets_point_at_every_bar_token(tokenizer, tmp_path):
    score = make_piano_score(bars=5, notes_per_bar=3, time_signature=(3, 4), seed=1)
    ids, bar_offsets, _ = tokenize_piece(tokenizer, write_midi(score, tmp_path / "piece.midi"))

    bar = tokenizer.vocab["Bar_None"]
    assert len(bar_offsets) == 5
    assert bar_offsets[0] == 0
    assert (ids[bar_offsets] == bar).all()
    assert (ids == bar).sum() == len(bar_offsets)


def test_piano_and_pedal_tracks_merge_into_one_stream_and_drums_are_dropped(tokenizer, tmp_path):
    score = make_piano_score(bars=2, notes_per_bar=4, pitches=[60], velocities=[67])
    left_hand = make_piano_score(bars=2, notes_per_bar=2, pitches=[36], velocities=[43])
    drums = make_piano_score(bars=2, notes_per_bar=8, pitches=[38], is_drum=True)
    # The sustain pedal lives on the second track: it must reach the merged stream too.
    left_hand.tracks[0].controls.extend([ControlChange(0, 64, 127), ControlChange(960, 64, 0)])
    piano_notes = sorted(notes_of(score) + notes_of(left_hand))
    score.tracks.extend([left_hand.tracks[0], drums.tracks[0]])
    ids, _, n_notes = tokenize_piece(tokenizer, write_midi(score, tmp_path / "piece.midi"))

    assert n_notes == 12
    decoded = tokenizer.decode([ids.tolist()])
    assert notes_of(decoded) == piano_notes
    assert [(p.time, p.duration) for p in decoded.tracks[0].pedals] == [(0, 2 * decoded.ticks_per_quarter)]


def bad_files(folder) -> dict[str, str]:
    """Files that must be quarantined, each with the start of its expected reason."""
    good_bytes = write_midi(make_piano_score(bars=2, notes_per_bar=4), folder / "2004/source.midi").read_bytes()
    (folder / "2004/corrupt.midi").write_bytes(good_bytes[: len(good_bytes) // 2])
    (folder / "2004/text.midi").write_text("composer,title\nnot,a midi file\n")
    write_midi(make_piano_score(bars=0, notes_per_bar=4), folder / "2004/empty.midi")
    write_midi(make_piano_score(bars=2, notes_per_bar=4, is_drum=True), folder / "2004/drums.midi")
    return {
        "2004/corrupt": "not a readable MIDI file",
        "2004/text": "not a readable MIDI file",
        "2004/empty": "empty",
        "2004/drums": "no piano notes",
    }


def manifest_of(midi_paths: dict[str, object], path, split: str = "train"):
    """A manifest listing `midi_paths` (piece_id -> file) in one split, written to `path`."""
    metadata = pd.DataFrame(
        {
            "piece_id": list(midi_paths),
            "split": split,
            "composer": "Composer",
            "title": [f"Title of {piece_id}" for piece_id in midi_paths],
            "year": 2004,
            "duration": 30.0,
            "midi_path": [str(p) for p in midi_paths.values()],
        }
    )
    write_manifest(metadata, path)
    return path


@pytest.mark.parametrize("piece_id", ["2004/corrupt", "2004/text", "2004/empty", "2004/drums"])
def test_bad_file_is_rejected_with_its_reason(tokenizer, tmp_path, piece_id):
    expected_reason = bad_files(tmp_path)[piece_id]
    with pytest.raises(RejectedPiece) as rejected:
        tokenize_piece(tokenizer, tmp_path / f"{piece_id}.midi")
    assert rejected.value.reason.startswith(expected_reason)


def test_missing_file_is_rejected(tokenizer, tmp_path):
    with pytest.raises(RejectedPiece, match="not a readable MIDI file"):
        tokenize_piece(tokenizer, tmp_path / "missing.midi")


def test_shard_quarantines_bad_files_and_tokenizes_the_rest(tokenizer_path, tmp_path):
    reasons = bad_files(tmp_path)
    good = {
        f"2004/good-{i}": write_midi(
            make_piano_score(bars=4, notes_per_bar=6, seed=i), tmp_path / f"2004/good-{i}.midi"
        )
        for i in range(3)
    }
    manifest = manifest_of({**{p: tmp_path / f"{p}.midi" for p in reasons}, **good}, tmp_path / "manifest.parquet")

    stats = tokenize_shard(
        tokenizer_path, manifest, 0, 1, {"train": (tmp_path / "shard.parquet", tmp_path / "rejects.parquet")}
    )["train"]

    shard = pq.read_table(tmp_path / "shard.parquet")
    assert shard.schema == TOKEN_SHARD_SCHEMA
    assert shard["piece_id"].to_pylist() == sorted(good)
    assert shard["transpose"].to_pylist() == [0, 0, 0]
    assert shard["n_notes"].to_pylist() == [24, 24, 24]
    assert shard["title"].to_pylist() == [f"Title of {p}" for p in sorted(good)]
    rejects = pq.read_table(tmp_path / "rejects.parquet")
    assert rejects.schema == REJECTS_SCHEMA
    for piece_id, reason in zip(rejects["piece_id"].to_pylist(), rejects["reason"].to_pylist()):
        assert reason.startswith(reasons[piece_id])
    assert sorted(rejects["piece_id"].to_pylist()) == sorted(reasons)
    assert stats["pieces"] == 3 and stats["rejected"] == 4 and stats["notes"] == 72
    assert stats["tokens"] == sum(len(ids) for ids in shard["ids"].to_pylist())


def test_shards_split_the_pieces_by_shard_index_and_skip_other_splits(tokenizer_path, tmp_path):
    pieces = {
        f"2004/piece-{i}": write_midi(make_piano_score(bars=2, notes_per_bar=4, seed=i), tmp_path / f"{i}.midi")
        for i in range(6)
    }
    manifest = manifest_of(pieces, tmp_path / "manifest.parquet")

    by_shard = {}
    for k in range(3):
        tokenize_shard(
            tokenizer_path, manifest, k, 3, {"train": (tmp_path / f"{k}.parquet", tmp_path / f"{k}.rejects.parquet")}
        )
        by_shard[k] = pq.read_table(tmp_path / f"{k}.parquet")["piece_id"].to_pylist()
    assert sorted(sum(by_shard.values(), [])) == sorted(pieces)
    assert all(shard_index(p, 3) == k for k, ids in by_shard.items() for p in ids)

    stats = tokenize_shard(
        tokenizer_path, manifest, 0, 1, {"test": (tmp_path / "t.parquet", tmp_path / "t.rejects.parquet")}
    )["test"]
    assert stats["pieces"] == stats["rejected"] == 0
    assert pq.read_table(tmp_path / "t.parquet").num_rows == 0
    assert pq.read_table(tmp_path / "t.rejects.parquet").num_rows == 0


def test_shard_index_is_stable_when_files_are_added():
    piece_ids = [f"2004/piece-{i}" for i in range(200)]
    before = {p: shard_index(p, 8) for p in piece_ids}
    after = {p: shard_index(p, 8) for p in piece_ids + [f"2018/new-{i}" for i in range(50)]}

    assert all(after[p] == shard for p, shard in before.items())
    assert set(before.values()) == set(range(8))
    # A hash of the id alone, the same in every process (Python's hash() is salted per process).
    assert shard_index("2004/piece-0", 8) == 6


@pytest.mark.maestro
def test_real_maestro_pieces(tokenizer, tokenizer_path, maestro_dir, tmp_path):
    metadata = read_metadata(maestro_dir).groupby("split").head(1)
    manifest = tmp_path / "manifest.parquet"
    write_manifest(metadata.assign(split="train"), manifest)

    stats = tokenize_shard(
        tokenizer_path, manifest, 0, 1, {"train": (tmp_path / "shard.parquet", tmp_path / "rejects.parquet")}
    )["train"]

    assert stats["pieces"] == 3 and stats["rejected"] == 0
    shard = pq.read_table(tmp_path / "shard.parquet").to_pandas()
    bar = tokenizer.vocab["Bar_None"]
    midi_paths = metadata.set_index("piece_id")["midi_path"]
    for row in shard.itertuples():
        # Every note left after miditok's preprocessing (deduplication, pitch range) is counted.
        assert row.n_notes == tokenizer.preprocess_score(Score(midi_paths[row.piece_id])).note_num()
        assert (row.ids[row.bar_offsets] == bar).all() and (row.ids == bar).sum() == len(row.bar_offsets)
        # A bar of piano at least every few seconds of music.
        assert len(row.bar_offsets) > row.duration / 10


TOKENIZE_WITHOUT_TORCH = """
import sys
from pianomuse.startup import skip_torch_import
skip_torch_import()
from pianomuse.tokens import tokenize_shard
stats = tokenize_shard(sys.argv[1], sys.argv[2], 0, 1, {"train": (sys.argv[3], sys.argv[4])})
assert sys.modules["torch"] is None, "torch was imported"
print(stats["train"]["pieces"], stats["train"]["notes"])
"""


def test_tokenizing_runs_with_the_torch_import_skipped(tokenizer_path, tmp_path):
    """What workflow/scripts/tokenize.py does: torch never loads, and the shard is the same as with it."""
    midi = {
        f"2004/good-{i}": write_midi(make_piano_score(bars=3, notes_per_bar=4, seed=i), tmp_path / f"{i}.mid")
        for i in range(2)
    }
    manifest = manifest_of(midi, tmp_path / "manifest.parquet")
    outputs = [str(tmp_path / "lean.parquet"), str(tmp_path / "lean.rejects.parquet")]
    args = [sys.executable, "-c", TOKENIZE_WITHOUT_TORCH, str(tokenizer_path), str(manifest), *outputs]
    result = subprocess.run(args, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2", "24"]
    tokenize_shard(
        tokenizer_path, manifest, 0, 1, {"train": (tmp_path / "full.parquet", tmp_path / "full.rejects.parquet")}
    )
    assert pq.read_table(outputs[0]).equals(pq.read_table(tmp_path / "full.parquet"))


def test_skipping_the_torch_import_after_torch_loaded_is_an_error():
    import torch  # noqa: F401  (loaded in this process already; the import makes that explicit)

    with pytest.raises(RuntimeError, match="torch is imported already"):
        skip_torch_import()
