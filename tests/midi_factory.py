"""Small MIDI scores for tests: bars of evenly spaced notes with known pitches and velocities."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from symusic import Note, Score, Tempo, TimeSignature, Track


def bar_ticks(tpq: int, time_signature: tuple[int, int]) -> int:
    numerator, denominator = time_signature
    return tpq * 4 * numerator // denominator


def make_piano_score(
    bars: int,
    notes_per_bar: int,
    tpq: int = 480,
    time_signature: tuple[int, int] = (4, 4),
    tempo_qpm: float = 120.0,
    pitches: Sequence[int] | None = None,
    velocities: Sequence[int] | None = None,
    seed: int = 0,
    is_drum: bool = False,
) -> Score:
    """One track of `bars` x `notes_per_bar` back-to-back notes, each filling its share of the bar.

    `pitches` and `velocities` are cycled through in note order; left out, they are drawn with `seed`
    (pitches in 48-84, velocities in 40-110). `is_drum` makes it a drum track instead of a piano one.
    """
    rng = random.Random(seed)
    n_notes = bars * notes_per_bar
    pitches = pitches or [rng.randint(48, 84) for _ in range(n_notes)]
    velocities = velocities or [rng.randint(40, 110) for _ in range(n_notes)]
    step = bar_ticks(tpq, time_signature) // notes_per_bar

    score = Score(tpq)
    score.time_signatures.append(TimeSignature(0, *time_signature))
    score.tempos.append(Tempo(0, qpm=tempo_qpm))
    track = Track("drums" if is_drum else "piano", 0, is_drum)
    for i in range(n_notes):
        track.notes.append(Note(i * step, step, pitches[i % len(pitches)], velocities[i % len(velocities)]))
    score.tracks.append(track)
    return score


def write_midi(score: Score, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    score.dump_midi(str(path))
    return path
