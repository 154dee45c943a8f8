"""The completion engine: a prompt of whole bars in, K continuations of exactly M bars out.

The prompt is tokenized with the training tokenizer and cut at Bar tokens like a window's context (its first bar
restates the time signature and tempo in force), then a Bar token is appended: continuations start on a new bar,
as the training completions do. The model reads the prompt once (RWKV-7 in parallel mode); its state is copied K
times and the K samples are decoded together, one token per step (RWKV-7 in RNN mode), under the REMI grammar mask.
A stream ends when it would start bar M+1. The engine drives any model through `pianomuse.decoding.Decoder`:
RWKV-7, the Transformer baseline (a KV cache) and the n-gram baseline are all sampled by this one loop.

A completion of a score hands back the composer's own prompt bars untouched (resolution, tempo map, every note and
track as in the file), followed by the continuation at the file's resolution, on a track of its own.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from miditok import REMI
from miditok.utils import compute_ticks_per_bar, get_bars_ticks
from symusic import Score, TimeSignature, Track
from tqdm import tqdm

from pianomuse.audio import Renderer
from pianomuse.files import staged_folder
from pianomuse.metrics import best_key, key_scale
from pianomuse.models import LEGACY_ARCH, SYSTEM_NAMES, arch_of, decoder_for, load_model
from pianomuse.remi import RejectedPiece, TempoMarkers, standalone_bars, tokenize_score
from pianomuse.report import piano_roll
from pianomuse.sampling import (
    GrammarState,
    GrammarTables,
    StreamUniforms,
    advance,
    allowed,
    draw,
    filter_logits,
    key_penalty,
)
from pianomuse.tokenizer import load_tokenizer, tokenizer_hash

if TYPE_CHECKING:
    from pianomuse.ngram import NgramModel

# A dense MAESTRO bar is a few hundred tokens; past this the grammar closes the bar (see sampling.py).
MAX_TOKENS_PER_BAR = 1024
CONTINUATION_TRACK = "pianomuse continuation"


class CompletionError(Exception):
    """Bad input to a completion (file, prompt bars, sampling settings, checkpoint): the message says what and why."""


@dataclass(frozen=True)
class Sampling:
    """How continuations are drawn. Checked when made, so that bad settings fail before any work is done.

    The defaults are the one source of the sampling defaults: `pianomuse complete` and `pianomuse probe` take theirs
    from here, and config.yaml's `evaluate` and `probe` sections hold the same values (tests/test_config.py).
    """

    bars: int = 4  # M, per continuation
    samples: int = 4  # K
    temperature: float = 0.9  # tuned on the validation split with the cpu preset's model (docs/experiments.md)
    top_p: float = 0.95
    top_k: int | None = None
    seed: int = 0
    # Nats taken off every pitch outside the prompt's key (its Krumhansl-Schmuckler key, as key agreement finds it)
    # before temperature: 0 leaves the model as it is; ~2 makes an out-of-key note ~7x rarer at T 1. 0.5 was chosen on
    # the validation split by a rule fixed beforehand (docs/experiments.md, "Stay in key").
    stay_in_key: float = 0.5
    max_tokens_per_bar: int = MAX_TOKENS_PER_BAR

    def __post_init__(self):
        if self.bars < 1:
            raise CompletionError(f"the number of bars to generate must be at least 1, got {self.bars}")
        if self.samples < 1:
            raise CompletionError(f"the number of samples must be at least 1, got {self.samples}")
        if not self.temperature > 0:
            raise CompletionError(f"temperature must be greater than 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise CompletionError(f"top-p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise CompletionError(f"top-k must be at least 1, got {self.top_k}")
        if not 0 <= self.stay_in_key < float("inf"):
            raise CompletionError(f"stay-in-key must be a number of at least 0, got {self.stay_in_key}")


@dataclass(frozen=True)
class SampleSummary:
    notes: int  # in the continuation
    bars: int  # of the continuation
    seconds: float  # from the continuation's start to its last note's end


@dataclass(frozen=True)
class Completion:
    """K samples: each the prompt followed by its continuation, the continuation alone, and ids and summaries."""

    full: list[Score]
    continuations: list[Score]
    summaries: list[SampleSummary]
    prompt_ids: list[int]  # the prompt as the model read it (ending before the continuation's first Bar)
    continuation_ids: list[list[int]]  # per sample, starting with a Bar
    continuation_tick: int  # where the continuation starts in `full`


def prompt_range(prompt_bars: int | tuple[int, int] | None, n_bars: int) -> tuple[int, int]:
    """0-based [first, end) bars of the prompt. `prompt_bars`: N (the first N bars), (I, J) (bars I to J, counted
    from 1, both included) or None (every bar)."""
    if prompt_bars is None:
        return 0, n_bars
    first, last = (1, prompt_bars) if isinstance(prompt_bars, int) else prompt_bars
    if first < 1 or last < first:
        raise CompletionError(f"prompt bars {first} to {last} are not a range of bars counted from 1")
    if last > n_bars:
        raise CompletionError(f"the prompt has {n_bars} bars but bars {first} to {last} were asked for")
    return first - 1, last


class Sampler(Protocol):
    """A system that continues a tokenized prompt K ways: `Completer`, or a baseline decoder. Evaluation and the
    probe take their sampled systems as a dict of name -> Sampler."""

    def complete_ids(self, prompt: list[int], sampling: Sampling, progress: bool = True) -> Completion: ...


def bar_start_ticks(score: Score, end: int) -> list[int]:
    """The ticks, at the score's resolution, where its bars 0..end start (bar `end` may lie past the last note)."""
    ticks = get_bars_ticks(score)
    valid = [ts for ts in score.time_signatures if ts.numerator > 0 and ts.denominator > 0]
    last = valid[-1] if valid else TimeSignature(0, 4, 4)
    while len(ticks) <= end:
        ticks.append(ticks[-1] + compute_ticks_per_bar(last, score.tpq))
    return ticks[: end + 1]


def after_prompt(prompt: Score, tick: int, continuation: Score) -> tuple[Score, Score]:
    """(`prompt` followed at `tick` by `continuation`, the continuation alone), both at the prompt's resolution.

    The prompt is kept as it is. The continuation (decoded at the tokenizer's resolution, from tick 0) goes on a
    track of its own. The tempo and time signature it restates at its start give way to the prompt's in force at
    `tick` (the tokenizer would round 120 qpm to 121.3); the changes it makes are kept.
    """
    continuation = continuation.resample(prompt.tpq, min_dur=1)
    in_force = prompt.clip(tick, tick + 1).shift_time(-tick)  # the prompt's tempo and time signature at `tick`
    tempo_changes = [tempo for tempo in continuation.tempos if tempo.time > 0]
    signature_changes, signature = [], in_force.time_signatures[-1] if len(in_force.time_signatures) else None
    for ts in continuation.time_signatures:
        if signature is None or (ts.numerator, ts.denominator) != (signature.numerator, signature.denominator):
            signature_changes.append(ts)
            signature = ts
    track = Track(CONTINUATION_TRACK, next((t.program for t in prompt.tracks if not t.is_drum), 0), False)
    for source in continuation.tracks:
        track.notes.extend(list(source.notes))
        track.pedals.extend(list(source.pedals))

    alone = Score(prompt.tpq)
    alone.tempos.extend(list(in_force.tempos) + tempo_changes)
    alone.time_signatures.extend(list(in_force.time_signatures) + signature_changes)
    alone.tracks.append(track)
    changes = Score(prompt.tpq)
    changes.tempos.extend(tempo_changes)
    changes.time_signatures.extend(signature_changes)
    changes.tracks.append(track.copy())
    changes = changes.shift_time(tick)
    full = prompt.copy()
    full.tempos.extend(list(changes.tempos))
    full.time_signatures.extend(list(changes.time_signatures))
    full.tracks.append(changes.tracks[0])
    return full, alone


class Completer:
    """Samples continuations from a model (RWKV-7, Transformer or n-gram: see `pianomuse.models`)."""

    def __init__(self, model: torch.nn.Module | NgramModel, tokenizer: REMI, device: str = "cpu"):
        self.decoder = decoder_for(model, device)
        self.tokenizer = tokenizer
        self.grammar = GrammarTables.of(tokenizer)
        self.markers = TempoMarkers.of(tokenizer)

    @property
    def model(self) -> torch.nn.Module | NgramModel:
        return self.decoder.model

    @property
    def device(self) -> str:
        return str(self.decoder.device)

    @property
    def system_name(self) -> str:
        """What reports call this system: RWKV-7, Transformer or n-gram."""
        return SYSTEM_NAMES[arch_of(self.model)]

    @classmethod
    def load(
        cls, checkpoint_path: str | Path, tokenizer_path: str | Path | None = None, device: str = "cpu"
    ) -> Completer:
        """A checkpoint (`{name}.pth`, or an n-gram's `{name}.npz`) with its `{name}.json`, which names the arch, or a
        run folder (its `best.pth`); the tokenizer is the run's (beside the checkpoint) unless given, and must be the
        one the checkpoint was trained with."""
        checkpoint = Path(checkpoint_path)
        if checkpoint.is_dir():  # a run folder
            if not (checkpoint / "best.pth").is_file():
                raise CompletionError(
                    f"{checkpoint} is a folder without best.pth; pass a training run's folder "
                    "(results/checkpoints/{run}) or a checkpoint file ({name}.pth)"
                )
            checkpoint = checkpoint / "best.pth"
        info_path = checkpoint.with_suffix(".json")
        if not checkpoint.is_file():
            raise CompletionError(
                f"checkpoint not found: {checkpoint}; pass a training run's folder (results/checkpoints/{{run}}) "
                "or a checkpoint file ({name}.pth)"
            )
        if not info_path.is_file():
            raise CompletionError(f"{checkpoint} has no {info_path.name} beside it (model config, tokenizer hash)")
        info = json.loads(info_path.read_text())
        tokenizer_path = Path(tokenizer_path) if tokenizer_path else checkpoint.parent / "tokenizer.json"
        if not tokenizer_path.is_file():
            raise CompletionError(f"no tokenizer found for {checkpoint}; pass the run's tokenizer.json (--tokenizer)")
        if tokenizer_hash(tokenizer_path) != info["tokenizer_hash"]:
            raise CompletionError(
                f"tokenizer mismatch: {checkpoint} was trained with tokenizer {info['tokenizer_hash']}, "
                f"but {tokenizer_path} is {tokenizer_hash(tokenizer_path)}"
            )
        try:
            model = load_model(checkpoint, info)
        except Exception as error:
            arch = info.get("arch", LEGACY_ARCH)
            message = f"{checkpoint} is not a {arch} checkpoint: {type(error).__name__}: {error}"
            raise CompletionError(message) from error
        return cls(model, load_tokenizer(tokenizer_path), device)

    def prompt_ids(self, score_or_path: Score | str | Path, prompt_bars: int | tuple[int, int] | None) -> list[int]:
        """The prompt bars as a stream of their own, ending where the continuation's Bar will go."""
        return self.read_prompt(score_or_path, prompt_bars)[1]

    def read_prompt(
        self, score_or_path: Score | str | Path, prompt_bars: int | tuple[int, int] | None
    ) -> tuple[Score, list[int], tuple[int, int]]:
        """The score as read, its prompt bars as a stream of their own, and their 0-based [first, end) range."""
        try:
            score = Score(str(score_or_path)) if isinstance(score_or_path, (str, Path)) else score_or_path.copy()
        except Exception as error:
            raise CompletionError(f"{score_or_path} is not a readable MIDI file ({error})") from error
        try:
            ids, bar_offsets, _ = tokenize_score(self.tokenizer, score.copy())  # it merges the tracks in place
        except RejectedPiece as rejected:
            raise CompletionError(f"{score_or_path} cannot be a prompt: {rejected.reason}") from rejected
        first, end = prompt_range(prompt_bars, len(bar_offsets))
        return score, standalone_bars(ids, bar_offsets, self.markers, first, end).tolist(), (first, end)

    @torch.inference_mode()
    def generate(
        self,
        prompt_ids: list[int],
        sampling: Sampling,
        progress: bool = True,
        on_bars: Callable[[int], None] | None = None,
    ) -> list[list[int]]:
        """K continuations of M bars after `prompt_ids`, each starting with its first Bar token. `on_bars`, when
        given, is called with the number of bars finished so far (of K x M) each time it grows."""
        bars, samples = sampling.bars, sampling.samples
        start = prompt_ids + [self.grammar.bar_id]
        logits, state = self.decoder.prefill(start)
        logits = logits.repeat_interleave(samples, dim=0)
        state = self.decoder.repeat(state, samples)
        grammar = GrammarState.after(self.grammar, start).repeat(samples)
        last_bar = int(grammar.bars[0]) + bars - 1  # the Bar count (prompt's included) in the continuation's last bar
        streams = list(range(samples))  # the stream of each batch row: a stream leaves the batch when it ends
        uniforms = StreamUniforms(sampling.seed, streams)
        continuations = [[self.grammar.bar_id] for _ in range(samples)]
        penalty = self.prompt_key_penalty(prompt_ids, sampling.stay_in_key)
        finished_bars = 0
        # Counts finished bars: a stream finishes one when it draws the next Bar, and its last when it ends.
        with tqdm(total=samples * bars, desc="bars", unit="bar", disable=not progress) as bar_count:
            while True:
                mask = allowed(self.grammar, grammar, sampling.max_tokens_per_bar)
                masked = logits.float().cpu().masked_fill(~mask, float("-inf")) + penalty
                probs = filter_logits(masked, sampling.temperature, sampling.top_k, sampling.top_p)
                ids = draw(probs, uniforms.next(streams))
                # Bar M+1 is never written: the stream ends where it would start.
                ending = (ids == self.grammar.bar_id) & (grammar.bars == last_bar)
                for stream, token, ends in zip(streams, ids.tolist(), ending.tolist()):
                    if not ends:
                        continuations[stream].append(token)
                finished = int((ids == self.grammar.bar_id).sum())
                if ending.any():
                    keep = ~ending
                    if not keep.any():
                        bar_count.n += finished  # drawn once, by close(), rather than by update() and close()
                        if on_bars is not None:
                            on_bars(samples * bars)
                        return continuations
                    streams = [stream for stream, kept in zip(streams, keep.tolist()) if kept]
                    ids, grammar = ids[keep], grammar.select(keep)
                    state = self.decoder.select(state, keep)
                if finished:
                    bar_count.update(finished)
                    finished_bars += finished  # counted here too: a disabled bar counts nothing
                    if on_bars is not None:
                        on_bars(finished_bars)
                advance(self.grammar, grammar, ids)
                logits, state = self.decoder.step(ids.to(self.decoder.device), state)

    def prompt_key_penalty(self, prompt_ids: list[int], strength: float) -> torch.Tensor | float:
        """`key_penalty` for the prompt's key, or 0 where there is nothing to do (strength 0, or no key: a prompt
        without notes)."""
        if not strength:
            return 0.0
        key = best_key(self.tokenizer.decode([prompt_ids]))
        if key is None:
            return 0.0
        return key_penalty(self.grammar, torch.from_numpy(key_scale(key)), strength)

    def complete(
        self,
        score_or_path: Score | str | Path,
        prompt_bars: int | tuple[int, int] | None = None,
        sampling: Sampling = Sampling(),
        progress: bool = True,
        on_bars: Callable[[int], None] | None = None,
    ) -> Completion:
        """Continue the prompt bars of a score K ways, M bars each (see `prompt_range` for the bars). Each full
        sample is the score's own prompt bars, untouched, followed by the continuation at the score's resolution
        (see `after_prompt`)."""
        score, prompt, (first, end) = self.read_prompt(score_or_path, prompt_bars)
        completion = self.complete_ids(prompt, sampling, progress, on_bars)
        bars = bar_start_ticks(score, end)
        composer = score.clip(bars[first], bars[end], clip_end=False).shift_time(-bars[first])
        joined = [after_prompt(composer, bars[end] - bars[first], alone) for alone in completion.continuations]
        return dataclasses.replace(
            completion,
            full=[full for full, _ in joined],
            continuations=[alone for _, alone in joined],
            continuation_tick=bars[end] - bars[first],
        )

    def complete_ids(
        self, prompt: list[int], sampling: Sampling, progress: bool = True, on_bars: Callable[[int], None] | None = None
    ) -> Completion:
        """`complete` for a prompt already tokenized as a stream of its own (a window's context, say)."""
        bars = sampling.bars
        continuations = self.generate(prompt, sampling, progress, on_bars)
        full, alone, summaries = [], [], []
        for continuation in continuations:
            ids = prompt + continuation
            full.append(self.tokenizer.decode([ids]))
            alone.append(self.decode_last_bars(ids, bars))
            summaries.append(SampleSummary(alone[-1].note_num(), bars, round(alone[-1].to("second").end(), 3)))
        return Completion(full, alone, summaries, prompt, continuations, self.bars_ticks(prompt, full[0].tpq))

    def decode_last_bars(self, ids: list[int], bars: int) -> Score:
        """The last `bars` bars of a stream as a score of their own, starting at tick 0."""
        ids = np.array(ids, dtype=np.int64)
        bar_offsets = np.flatnonzero(ids == self.grammar.bar_id)
        alone_ids = standalone_bars(ids, bar_offsets, self.markers, len(bar_offsets) - bars, len(bar_offsets))
        return self.tokenizer.decode([alone_ids.tolist()])

    def bars_ticks(self, ids: list[int], tpq: int) -> int:
        """The length in ticks of the bars of `ids` (every Bar is followed by its TimeSig), as miditok decodes them."""
        lengths = []
        for i in ids:
            if self.grammar.bar_positions[i] < 0:
                continue
            numerator, denominator = map(int, self.tokenizer[i].removeprefix("TimeSig_").split("/"))
            lengths.append(compute_ticks_per_bar(TimeSignature(0, numerator, denominator), tpq))
        return sum(lengths)


def write_completion(completion: Completion, out_dir: str | Path, renderer: Renderer | None = None) -> None:
    """sample-{i}.mid (prompt, then continuation), sample-{i}.continuation.mid and a piano roll sample-{i}.png per
    sample into `out_dir`, and with a renderer the full sample as audio, sample-{i}.wav. Every file goes into a
    temporary folder beside it first: a failure leaves no partial sample."""
    with staged_folder(out_dir) as staging:
        for i, (full, continuation) in enumerate(zip(completion.full, completion.continuations, strict=True)):
            full.dump_midi(str(staging / f"sample-{i}.mid"))
            continuation.dump_midi(str(staging / f"sample-{i}.continuation.mid"))
            piano_roll(full, completion.continuation_tick, staging / f"sample-{i}.png", f"sample {i}")
            if renderer is not None:
                renderer.write_wav(full, staging / f"sample-{i}.wav")
