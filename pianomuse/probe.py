"""The pattern continuation probe: does a model keep playing a figure it has heard eight times?

A fixed set of synthetic prompts, each a one-bar figure repeated for 8 bars, written like a score (480 ticks per
quarter, one velocity, one tempo): arpeggios, Alberti bass, repeated chords, scale runs and a melody over an
accompaniment, in 3/4 and 4/4, across the 24 major and minor keys. It needs no dataset, so it runs on any
checkpoint (`pianomuse probe`, and the workflow's `probe` rule).

That set is a test measure: nothing is chosen by it. A second set, the validation figures (`--figures
validation`), asks the same question with figures of its own (falling arpeggios, broken octaves, off-beat chords,
falling scales, another tune over block chords; other keys): a sampling setting, a checkpoint or a training length
is chosen on those (`bench/tune_sampling.py`), and the test figures then report it.

Each continuation is scored bar by bar against the figure. A bar is the set of its notes' (onset slot, pitch)
pairs, onsets rounded to the nearest sixteenth note (half up): the figures' own grid, coarser than the tokenizer's
finest step (a 32nd in the first beats with the default `beat_res`), so a note less than a 32nd off still counts;
`check_tokenizer_resolution` refuses a tokenizer too coarse to write sixteenths. The score of a bar is the F1
(Dice) overlap of that set with the figure's, 2|A∩F| / (|A| + |F|): symmetric, so playing the figure plus as many
extra notes costs as much as playing half of it, and 1 only for exactly the figure's notes. The score of a
continuation is the mean over its M bars.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from miditok import REMI
from symusic import Note, Score, Tempo, TimeSignature, Track

from pianomuse.complete import Completer, CompletionError, Sampler, Sampling
from pianomuse.devices import resolve_device
from pianomuse.files import staged_folder
from pianomuse.metrics import KEY_NAMES, MAJOR_SCALE, NATURAL_MINOR_SCALE, mean_and_ci, notes_of
from pianomuse.report import piano_roll, probe_tables, render_html, render_markdown, slug

log = logging.getLogger(__name__)

PROMPT_BARS = 8
TPQ = 480
VELOCITY = 80
QPM = 100
SLOTS_PER_QUARTER = 4  # sixteenth notes: the figures' grid
PROMPTS_PER_TEXTURE = 5


@dataclass(frozen=True)
class FigureSet:
    """A probe prompt set: its textures, and the seed that fixes its keys and melodies (the same prompts on every
    run)."""

    textures: tuple[str, ...]
    seed: int
    starts_in_c_major: bool  # the test set: its first figure is the one the project's first measurements used


FIGURE_SETS = {
    "test": FigureSet(
        ("arpeggio", "alberti-bass", "repeated-chords", "scale-run", "melody-and-accompaniment"), 2026, True
    ),
    "validation": FigureSet(
        ("falling-arpeggio", "broken-octaves", "off-beat-chords", "falling-scale", "melody-over-block-chords"),
        2027,
        False,
    ),
}
TEXTURES = list(FIGURE_SETS["test"].textures)

# Reference continuations: what the scorer gives a perfect copy, a near miss and an unrelated figure.
REPEAT = "repeat the figure"
TRANSPOSED = "the figure a semitone up"
OTHER_FIGURE = "another prompt's figure"
REFERENCES = [REPEAT, TRANSPOSED, OTHER_FIGURE]


@dataclass(frozen=True)
class Figure:
    name: str
    texture: str
    key: str
    time_signature: tuple[int, int]
    notes: tuple[tuple[int, int, int], ...]  # (onset, duration) in sixteenths from the bar's start, and pitch

    @property
    def slots_per_bar(self) -> int:
        numerator, denominator = self.time_signature
        return SLOTS_PER_QUARTER * 4 * numerator // denominator

    def score(self, bars: int, transpose: int = 0) -> Score:
        """The figure played `bars` times, a score of its own at 480 ticks per quarter."""
        slot = TPQ // SLOTS_PER_QUARTER
        score = Score(TPQ)
        score.time_signatures.append(TimeSignature(0, *self.time_signature))
        score.tempos.append(Tempo(0, qpm=QPM))
        track = Track("piano", 0)
        for bar in range(bars):
            start = bar * self.slots_per_bar
            for onset, duration, pitch in self.notes:
                track.notes.append(Note((start + onset) * slot, duration * slot, pitch + transpose, VELOCITY))
        score.tracks.append(track)
        return score

    def events(self) -> set[tuple[int, int]]:
        return {(onset, pitch) for onset, _, pitch in self.notes}


def cycle(offsets: list[int], count: int) -> list[int]:
    return [offsets[i % len(offsets)] for i in range(count)]


Notes = list[tuple[int, int, int]]  # (onset, duration) in sixteenths, pitch


def seeded_tune(beats: int, tonic: int, scale: np.ndarray, rng: np.random.Generator) -> Notes:
    """A stepwise tune of one bar in the octave above `tonic`, its rhythm and steps drawn from `rng`."""
    rhythms = {
        4: [[4, 4, 4, 4], [4, 2, 2, 4, 4], [2, 2, 4, 8], [6, 2, 4, 4]],
        3: [[4, 4, 4], [4, 2, 2, 4], [8, 4], [6, 2, 4]],
    }
    durations = rhythms[beats][rng.integers(len(rhythms[beats]))]
    degree, melody, onset = int(rng.integers(0, 5)), [], 0
    for duration in durations:
        melody.append((onset, duration, tonic + 12 + 12 * (degree // 7) + int(scale[degree % 7])))
        degree = int(np.clip(degree + rng.choice([-2, -1, 1, 2]), 0, 9))
        onset += duration
    return melody


def figure_notes(texture: str, tonic: int, minor: bool, beats: int, rng: np.random.Generator) -> Notes:
    """One bar of `texture` on the tonic chord of the key (tonic: a MIDI pitch in octave 4), `beats` quarters long."""
    third = 3 if minor else 4
    scale = NATURAL_MINOR_SCALE if minor else MAJOR_SCALE
    sixteenths, bass = 4 * beats, tonic - 12
    # The test figures.
    if texture == "arpeggio":  # broken chord in sixteenths, as in Bach's C-major prelude
        pattern = [0, third, 7, 12, 12 + third, 7, 12, 12 + third]
        return [(i, 1, tonic + o) for i, o in enumerate(cycle(pattern, sixteenths))]
    if texture == "alberti-bass":  # low - high - middle - high in eighths, under a held melody note
        alberti = [(2 * i, 2, bass + o) for i, o in enumerate(cycle([0, 7, third, 7], 2 * beats))]
        return alberti + [(0, sixteenths, tonic + 12)]
    if texture == "repeated-chords":  # the triad on every beat over a held bass
        return [(4 * b, 4, tonic + o) for b in range(beats) for o in (0, third, 7)] + [(0, sixteenths, bass)]
    if texture == "scale-run":  # up the scale in sixteenths
        return [(i, 1, tonic + 12 * (i // 7) + int(scale[i % 7])) for i in range(sixteenths)]
    if texture == "melody-and-accompaniment":  # a seeded stepwise tune over broken-chord eighths or a waltz bass
        melody = seeded_tune(beats, tonic, scale, rng)
        if beats == 3:  # oom-pah-pah
            accompaniment = [(0, 4, bass)] + [(4 * b, 4, tonic + o) for b in (1, 2) for o in (third, 7)]
        else:
            accompaniment = [(2 * i, 2, bass + o) for i, o in enumerate(cycle([0, 7, 12, 7], 2 * beats))]
        return melody + accompaniment
    # The validation figures: the same question in other patterns.
    if texture == "falling-arpeggio":  # the chord broken downwards from two octaves up, in sixteenths
        pattern = [24, 19, 12 + third, 12, 7, third, 7, 12]
        return [(i, 1, tonic + o) for i, o in enumerate(cycle(pattern, sixteenths))]
    if texture == "broken-octaves":  # the bass in alternating octaves (eighths) under a held chord
        octaves = [(2 * i, 2, bass - 12 + 12 * (i % 2)) for i in range(2 * beats)]
        return octaves + [(0, sixteenths, tonic + o) for o in (third, 7, 12)]
    if texture == "off-beat-chords":  # the bass on the beat, the triad on its off-beat eighth
        return [(4 * b, 2, bass) for b in range(beats)] + [
            (4 * b + 2, 2, tonic + o) for b in range(beats) for o in (0, third, 7)
        ]
    if texture == "falling-scale":  # down the scale in sixteenths from the tonic an octave up
        return [(i, 1, tonic + 12 - 12 * ((i + 6) // 7) + int(scale[(-i) % 7])) for i in range(sixteenths)]
    if texture == "melody-over-block-chords":  # a seeded stepwise tune over the triad held on every beat
        chords = [(4 * b, 4, bass + o) for b in range(beats) for o in (0, third, 7)]
        return seeded_tune(beats, tonic, scale, rng) + chords
    raise ValueError(f"unknown texture {texture!r}")


def probe_figures(figure_set: str = "test") -> list[Figure]:
    """A prompt set of FIGURE_SETS: PROMPTS_PER_TEXTURE of each texture, meters alternating, keys a seeded walk
    through all 24 (so that no key or mode dominates). The same list on every call. The test set's first figure,
    C4 E4 G4 C5 E5 G4 C5 E5 in sixteenths, is the one the project's first measurements used."""
    if figure_set not in FIGURE_SETS:
        raise CompletionError(f"unknown figure set {figure_set!r}: choose from {', '.join(FIGURE_SETS)}")
    chosen = FIGURE_SETS[figure_set]
    rng = np.random.default_rng(chosen.seed)
    keys = [0, *(1 + rng.permutation(23))] if chosen.starts_in_c_major else rng.permutation(24)
    figures = []
    for t, texture in enumerate(chosen.textures):
        for i in range(PROMPTS_PER_TEXTURE):
            key = int(keys[len(figures) % 24])
            beats = 4 if (t + i) % 2 == 0 else 3
            notes = figure_notes(texture, 60 + key % 12, key >= 12, beats, rng)
            key_name = KEY_NAMES[key]
            name = f"{len(figures):02d}-{texture}-{key_name.replace(' ', '-').replace('#', 's')}-{beats}-4"
            figures.append(Figure(name, texture, key_name, (beats, 4), tuple(sorted(notes))))
    return figures


def bar_events(score: Score, slots_per_bar: int, n_bars: int) -> list[set[tuple[int, int]]]:
    """Per bar, the (onset slot within the bar, pitch) pairs of the score's notes, onsets rounded to the nearest
    sixteenth (half up); notes past bar `n_bars` are left out."""
    notes = notes_of(score)
    slots = (2 * SLOTS_PER_QUARTER * notes["time"] + score.tpq) // (2 * score.tpq)
    bars = [set() for _ in range(n_bars)]
    for slot, pitch in zip(slots.tolist(), notes["pitch"].tolist()):
        if slot // slots_per_bar < n_bars:
            bars[slot // slots_per_bar].add((slot % slots_per_bar, pitch))
    return bars


def f1(candidate: set, reference: set) -> float:
    """2|A∩B| / (|A| + |B|): 1 for the same set, 0 for disjoint ones (and 1 for two empty ones)."""
    if not candidate and not reference:
        return 1.0
    return 2 * len(candidate & reference) / (len(candidate) + len(reference))


def figure_score(continuation: Score, figure: Figure, bars: int) -> float:
    """Mean over the continuation's `bars` bars of each bar's F1 against the figure."""
    bars_events = bar_events(continuation, figure.slots_per_bar, bars)
    return float(np.mean([f1(events, figure.events()) for events in bars_events]))


def check_tokenizer_resolution(tokenizer: REMI) -> None:
    """The figures need sixteenth-note onsets in every beat of a 4/4 bar: a coarser tokenizer could not write them."""
    coarse = [res for (start, _), res in tokenizer.config.beat_res.items() if start < 4 and res < SLOTS_PER_QUARTER]
    if coarse:
        raise CompletionError(
            f"the tokenizer writes {min(coarse)} onsets per beat; the probe's figures need {SLOTS_PER_QUARTER}"
        )


def reference_continuations(completer: Completer, figure: Figure, other: Figure, bars: int) -> dict[str, Score]:
    """The references, written out through the tokenizer as a model's continuation would be (bars 9 to 8 + M of
    the figure played on): `REPEAT` scoring 1 shows the tokenized prompt keeps every onset and pitch."""

    def after_prompt(score: Score) -> Score:
        return completer.decode_last_bars(completer.prompt_ids(score, None), bars)

    return {
        REPEAT: after_prompt(figure.score(PROMPT_BARS + bars)),
        TRANSPOSED: after_prompt(figure.score(PROMPT_BARS + bars, transpose=1)),
        OTHER_FIGURE: after_prompt(other.score(PROMPT_BARS + bars)),
    }


def probe_figure(
    completer: Completer, samplers: dict[str, Sampler], sampling: Sampling, figure: Figure, other: Figure, folder: Path
) -> dict:
    """One prompt: every sampler's K continuations and the references scored; the prompt's and the samples' MIDI
    and a piano roll of each sampler's sample 0 written into `folder`."""
    prompt = figure.score(PROMPT_BARS)
    prompt_ids = completer.prompt_ids(prompt, None)
    folder.mkdir(parents=True)
    prompt.dump_midi(str(folder / "prompt.mid"))
    scores, rolls = {}, {}
    for name, sampler in samplers.items():
        completion = sampler.complete_ids(prompt_ids, sampling, progress=False)
        scores[name] = [figure_score(c, figure, sampling.bars) for c in completion.continuations]
        for k, full in enumerate(completion.full):
            full.dump_midi(str(folder / f"{slug(name)}-sample-{k}.mid"))
        rolls[name] = f"prompts/{figure.name}/{slug(name)}.png"
        title = f"{figure.name}: {name}, sample 0"
        piano_roll(completion.full[0], completion.continuation_tick, folder / f"{slug(name)}.png", title)
    for name, continuation in reference_continuations(completer, figure, other, sampling.bars).items():
        scores[name] = [figure_score(continuation, figure, sampling.bars)]
    log.info("%s: %s", figure.name, {name: round(float(np.mean(v)), 3) for name, v in scores.items()})
    return {
        "name": figure.name,
        "texture": figure.texture,
        "key": figure.key,
        "time_signature": f"{figure.time_signature[0]}/{figure.time_signature[1]}",
        "figure": [list(note) for note in figure.notes],
        "scores": scores,
        "rolls": rolls,
        "summary": {name: mean_and_ci(values, sampling.seed) for name, values in scores.items()},
    }


def run_probe(
    completer: Completer,
    samplers: dict[str, Sampler],
    sampling: Sampling,
    out_dir: str | Path,
    figure_set: str = "test",
) -> dict:
    """Probe every sampler on every figure of `figure_set` (prompt i sampled with seed + i); write probe.json,
    probe.md, probe.html and prompts/{name}/ into `out_dir`. `completer` is the tokenizer side (prompt ids,
    decoding) that the samplers share."""
    check_tokenizer_resolution(completer.tokenizer)
    figures = probe_figures(figure_set)
    systems = [*samplers, *REFERENCES]
    with staged_folder(out_dir) as staging:
        prompts = []
        for i, figure in enumerate(figures):
            # Another figure in the same meter, so the reference differs in notes, not in bar length.
            other = next(f for f in figures[i + 1 :] + figures[:i] if f.time_signature == figure.time_signature)
            seeded = Sampling(**{**asdict(sampling), "seed": sampling.seed + i})
            prompts.append(probe_figure(completer, samplers, seeded, figure, other, staging / "prompts" / figure.name))
        results = {
            "figures": figure_set,
            "settings": asdict(sampling),
            "prompt_bars": PROMPT_BARS,
            "slots_per_quarter": SLOTS_PER_QUARTER,
            "systems": systems,
            "sampled": list(samplers),
            "prompts": prompts,
            # Over prompts, each weighing the same: the K samples of one prompt are not independent tries.
            "summary": summarize(prompts, systems, sampling.seed),
            "by_texture": {
                texture: summarize([p for p in prompts if p["texture"] == texture], systems, sampling.seed)
                for texture in FIGURE_SETS[figure_set].textures
            },
        }
        (staging / "probe.json").write_text(json.dumps(results, indent=2))
        tables = probe_tables(results, image_root="")
        title = f"pianomuse pattern continuation probe ({figure_set} figures)"
        (staging / "probe.md").write_text(render_markdown(title, tables))
        (staging / "probe.html").write_text(render_html(title, tables))
    return results


def summarize(prompts: list[dict], systems: list[str], seed: int) -> dict:
    return {name: mean_and_ci([np.mean(p["scores"][name]) for p in prompts], seed) for name in systems}


def probe_checkpoint(
    checkpoints: list,
    tokenizer: str | Path | None,
    sampling: Sampling,
    device: str,
    out_dir: str | Path,
    figure_set: str = "test",
) -> dict:
    """`run_probe` on checkpoints of one tokenizer, side by side: the first is the run, the others its baselines
    (tokenizer None: each run's, found beside it; device: cpu, cuda or auto)."""
    probe_figures(figure_set)  # an unknown set fails before any checkpoint loads
    device = str(resolve_device(device, 0))
    completers = [Completer.load(path, tokenizer, device) for path in checkpoints]
    return run_probe(completers[0], {c.system_name: c for c in completers}, sampling, out_dir, figure_set)
