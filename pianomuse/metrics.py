"""Musical metrics of a continuation: small pure functions on symusic Scores.

Most metrics compare a candidate (a model sample or a baseline) with the true continuation of the same prompt;
both are scores of their own, starting at tick 0 and spanning the same number of bars. Identical scores get the
perfect value: 1 for overlaps, similarities and ratios, 0 for differences. A ratio is nan when the truth has
nothing to divide by (no notes); the report leaves such values out of its means and says how many it used.

Key agreement instead compares a continuation with its *prompt*: it needs no truth, so the truth itself gets a value
too, and a model that ignores the prompt scores near chance (7 of 12 pitch classes) whatever it plays.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from miditok.utils import compute_ticks_per_bar
from symusic import Score, TimeSignature

MAJOR_SCALE = np.array([0, 2, 4, 5, 7, 9, 11])
NATURAL_MINOR_SCALE = np.array([0, 2, 3, 5, 7, 8, 10])
# A natural minor scale has the pitch classes of its relative major; the harmonic minor's raised 7th tells them apart.
HARMONIC_MINOR_SCALE = np.array([0, 2, 3, 5, 7, 8, 11])
VELOCITY_BINS = np.arange(0, 129, 8)  # 16 bins of 8 MIDI velocities
GROOVE_SLOTS_PER_QUARTER = 4  # onsets quantised to sixteenth notes


def notes_of(score: Score) -> np.ndarray:
    """Every note of every track, one structured array (time, duration, pitch, velocity in ticks), sorted by time."""
    arrays = [track.notes.numpy() for track in score.tracks]
    if not arrays:
        return np.zeros(0, dtype=[("time", "i4"), ("duration", "i4"), ("pitch", "i1"), ("velocity", "i1")])
    keys = ["time", "duration", "pitch", "velocity"]
    merged = {key: np.concatenate([a[key] for a in arrays]).astype(np.int64) for key in keys}
    order = np.argsort(merged["time"], kind="stable")
    out = np.zeros(len(order), dtype=[(key, "i8") for key in keys])
    for key in keys:
        out[key] = merged[key][order]
    return out


def ratio(candidate: float, truth: float) -> float:
    return candidate / truth if truth > 0 else float("nan")


def histogram_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Shared mass of two histograms once each is normalised to sum 1 (1: same distribution, 0: disjoint)."""
    if a.sum() == 0 or b.sum() == 0:
        return float(a.sum() == b.sum())  # two empty histograms agree; an empty and a full one do not
    return float(np.minimum(a / a.sum(), b / b.sum()).sum())


def pitch_class_histogram(score: Score) -> np.ndarray:
    return np.bincount(notes_of(score)["pitch"] % 12, minlength=12)


def pitch_class_overlap(candidate: Score, truth: Score) -> float:
    return histogram_overlap(pitch_class_histogram(candidate), pitch_class_histogram(truth))


def velocity_histogram(score: Score) -> np.ndarray:
    return np.histogram(notes_of(score)["velocity"], VELOCITY_BINS)[0]


def velocity_overlap(candidate: Score, truth: Score) -> float:
    return histogram_overlap(velocity_histogram(candidate), velocity_histogram(truth))


def note_density_ratio(candidate: Score, truth: Score) -> float:
    """Notes of the candidate over notes of the truth: both span the same bars, so this is their density ratio."""
    return ratio(len(notes_of(candidate)), len(notes_of(truth)))


def pitch_range(score: Score) -> int:
    pitches = notes_of(score)["pitch"]
    return int(pitches.max() - pitches.min()) if len(pitches) else 0


def pitch_range_difference(candidate: Score, truth: Score) -> float:
    """|range of the candidate - range of the truth|, in semitones."""
    return float(abs(pitch_range(candidate) - pitch_range(truth)))


def mean_inter_onset_interval(score: Score) -> float:
    """Mean time between successive distinct onsets, in quarter notes (0 with fewer than two onsets)."""
    onsets = np.unique(notes_of(score)["time"])
    return float(np.diff(onsets).mean() / score.tpq) if len(onsets) > 1 else 0.0


def inter_onset_interval_ratio(candidate: Score, truth: Score) -> float:
    return ratio(mean_inter_onset_interval(candidate), mean_inter_onset_interval(truth))


def polyphony(score: Score) -> float:
    """Mean number of notes sounding at each distinct onset."""
    notes = notes_of(score)
    onsets = np.unique(notes["time"])
    if not len(onsets):
        return 0.0
    ends = notes["time"] + notes["duration"]
    sounding = (notes["time"][None, :] <= onsets[:, None]) & (ends[None, :] > onsets[:, None])
    return float(sounding.sum(axis=1).mean())


def polyphony_ratio(candidate: Score, truth: Score) -> float:
    return ratio(polyphony(candidate), polyphony(truth))


def ticks_per_bar(score: Score) -> int:
    """The bar length of the score's first time signature (4/4 when it has none)."""
    signature = score.time_signatures[0] if len(score.time_signatures) else TimeSignature(0, 4, 4)
    return compute_ticks_per_bar(signature, score.tpq)


def onset_patterns(score: Score, bar_ticks: int, n_bars: int) -> np.ndarray:
    """(n_bars, slots) booleans: which sixteenth-note slots of each bar hold an onset."""
    slot_ticks = score.tpq // GROOVE_SLOTS_PER_QUARTER
    slots = max(1, bar_ticks // slot_ticks)
    times = notes_of(score)["time"]
    bars, slot = times // bar_ticks, (times % bar_ticks) // slot_ticks
    patterns = np.zeros((n_bars, slots), dtype=bool)
    keep = bars < n_bars
    patterns[bars[keep], np.minimum(slot[keep], slots - 1)] = True
    return patterns


def groove_similarity(candidate: Score, truth: Score) -> float:
    """Mean over bars of 1 - (Hamming distance of the onset-slot patterns / slots), bar i against bar i.

    The bars are the truth's (its first time signature); the candidate's notes are read on the same grid.
    """
    bar_ticks = ticks_per_bar(truth)
    last_onset = max([int(notes_of(s)["time"].max()) for s in (candidate, truth) if len(notes_of(s))], default=0)
    n_bars = last_onset // bar_ticks + 1
    a, b = onset_patterns(candidate, bar_ticks, n_bars), onset_patterns(truth, bar_ticks, n_bars)
    return float(1 - (a != b).mean(axis=1).mean())


def scale_masks() -> np.ndarray:
    """(24, 12) booleans: the pitch classes of the 12 major and 12 harmonic minor scales."""
    masks = np.zeros((24, 12), dtype=bool)
    for tonic in range(12):
        masks[tonic, (MAJOR_SCALE + tonic) % 12] = True
        masks[12 + tonic, (HARMONIC_MINOR_SCALE + tonic) % 12] = True
    return masks


def best_scale(score: Score) -> np.ndarray:
    """The pitch classes of the major or minor scale holding most of the score's notes (first one on ties)."""
    masks = scale_masks()
    return masks[np.argmax(masks.astype(np.int64) @ pitch_class_histogram(score))]


def scale_consistency(candidate: Score, truth: Score) -> float:
    """Share of the candidate's notes in the best-fitting major/minor scale of the truth: does it stay in the key?"""
    histogram = pitch_class_histogram(candidate)
    return ratio(float(histogram[best_scale(truth)].sum()), float(histogram.sum()))


# Krumhansl & Kessler's (1982) probe-tone ratings of the 12 pitch classes above a major / minor tonic.
KK_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
KK_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
PITCH_CLASS_NAMES = ["C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"]
KEY_NAMES = [f"{name} major" for name in PITCH_CLASS_NAMES] + [f"{name} minor" for name in PITCH_CLASS_NAMES]
IN_KEY_BY_CHANCE = len(MAJOR_SCALE) / 12


def duration_pitch_class_histogram(score: Score) -> np.ndarray:
    """Ticks sounded per pitch class: a held note weighs more in the key than a passing one."""
    notes = notes_of(score)
    return np.bincount(notes["pitch"] % 12, weights=notes["duration"], minlength=12)


def best_key(score: Score) -> int | None:
    """Index into KEY_NAMES of the key whose Krumhansl-Kessler profile correlates best with the score's
    duration-weighted pitch-class histogram (Krumhansl-Schmuckler); None when the score sounds no note.

    Correlation, not the largest in-scale share: the share ties whenever the notes fit several scales (C E G lies
    in C major, G major and F major alike, and a natural minor is always tied with its relative major), so it
    cannot name a tonic. The profiles weigh tonic and dominant above the other scale degrees, which breaks those
    ties the way a listener would, and they tolerate chromatic passing notes.
    """
    histogram = duration_pitch_class_histogram(score)
    if not histogram.sum() or np.all(histogram == histogram[0]):
        return None  # silence, or all twelve equally: no key to find
    profiles = [np.roll(profile, tonic) for profile in (KK_MAJOR, KK_MINOR) for tonic in range(12)]
    correlations = [np.corrcoef(histogram, profile)[0, 1] for profile in profiles]
    return int(np.argmax(correlations))


def key_scale(key: int) -> np.ndarray:
    """(12,) booleans: the pitch classes of key `key`'s major or natural minor scale."""
    tonic, minor = key % 12, key >= 12
    mask = np.zeros(12, dtype=bool)
    mask[((NATURAL_MINOR_SCALE if minor else MAJOR_SCALE) + tonic) % 12] = True
    return mask


def key_agreement(continuation: Score, prompt: Score) -> float:
    """Share of the continuation's notes whose pitch class lies in the prompt's key (`best_key`): 1 stays in it,
    7/12 is what notes drawn at random would score. nan when the prompt has no key or the continuation no notes."""
    key = best_key(prompt)
    histogram = pitch_class_histogram(continuation)
    if key is None:
        return float("nan")
    return ratio(float(histogram[key_scale(key)].sum()), float(histogram.sum()))


# name -> (function, the perfect value): the order of the report's tables.
METRICS = {
    "pitch-class overlap": (pitch_class_overlap, 1.0),
    "note density ratio": (note_density_ratio, 1.0),
    "pitch range difference (semitones)": (pitch_range_difference, 0.0),
    "mean inter-onset interval ratio": (inter_onset_interval_ratio, 1.0),
    "velocity overlap": (velocity_overlap, 1.0),
    "polyphony ratio": (polyphony_ratio, 1.0),
    "groove similarity": (groove_similarity, 1.0),
    "scale consistency": (scale_consistency, 1.0),
}


def all_metrics(candidate: Score, truth: Score) -> dict[str, float]:
    return {name: function(candidate, truth) for name, (function, _) in METRICS.items()}


def mean_and_ci(values: Sequence[float], seed: int, resamples: int = 2000) -> tuple[float, float, float, int]:
    """Mean, 95% percentile-bootstrap interval and count of the finite values (nan, nan, nan, 0 when none)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), float("nan"), float("nan"), 0
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(values.mean()), float(low), float(high), len(values)


def ratio_and_ci(
    numerators: Sequence[float], denominators: Sequence[float], seed: int, resamples: int = 2000
) -> tuple[float, float, float, int]:
    """sum(numerators) / sum(denominators) (say, NLL per token over windows of different lengths), its 95%
    percentile-bootstrap interval over the items, and their count."""
    numerators, denominators = np.asarray(numerators, np.float64), np.asarray(denominators, np.float64)
    if not len(numerators) or not denominators.sum():
        return float("nan"), float("nan"), float("nan"), len(numerators)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(numerators), size=(resamples, len(numerators)))
    with np.errstate(divide="ignore", invalid="ignore"):  # a resample of items with no denominator: left out
        ratios = numerators[picks].sum(axis=1) / denominators[picks].sum(axis=1)
    low, high = np.percentile(ratios[np.isfinite(ratios)], [2.5, 97.5])
    return float(numerators.sum() / denominators.sum()), float(low), float(high), len(numerators)
