"""Evaluate a trained run on the test windows, every system side by side: completion NLL per token and per note
(the model against a unigram baseline), key agreement of continuations with their prompt, and musical metrics of
sampled continuations against the true ones, beside two baselines (repeat the prompt's last bars, the prompt cycled
when it has fewer than M; the bars of another test piece) and the truth itself where a measure allows. The pattern
probe's results (`pianomuse.probe`) join the report when given. Writes results/eval/{run}/: metrics.json,
report.md, report.html and samples/ (with evaluate.audio, every sample and truth as WAV too, played by report.html).

A prompt is a test window's context as the model was trained on it, and the truth is that window's completion.
Systems come in as data: `sampled` (name -> a `Sampler`, which continues a prompt K ways) and `likelihoods`
(name -> a `WindowNLL`, which scores the true completions), so a new baseline is one more entry in each.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

import datasets
import numpy as np
import torch
from miditok import REMI, TokSequence
from symusic import Score

from pianomuse.audio import Renderer
from pianomuse.batching import collate_windows, pack_by_length, window_lengths
from pianomuse.complete import Completer, Sampler, Sampling, write_completion
from pianomuse.devices import resolve_device
from pianomuse.metrics import KEY_NAMES, METRICS, all_metrics, best_key, key_agreement, mean_and_ci, ratio_and_ci
from pianomuse.ngram import NgramModel
from pianomuse.remi import pitch_token_ids
from pianomuse.report import piano_roll, slug, write_report
from pianomuse.scoring import batch_nll, eval_subset, unigram_log_probs

UNIGRAM = "unigram"
REPEAT = "repeat the prompt's last bars"
OTHER_PIECE = "bars of another test piece"
TRUTH = "true continuation"
SAMPLING_SETTINGS = ("temperature", "top_p", "top_k", "stay_in_key")  # the config's, passed to `Sampling` as they are

# (contexts, completions) -> each window's total NLL (nats) of its completion tokens given its context.
WindowNLL = Callable[[list[list[int]], list[list[int]]], np.ndarray]


def model_window_nll(model: torch.nn.Module, device: torch.device, batch_tokens: int, pad_id: int) -> WindowNLL:
    """A causal model's WindowNLL: windows packed by length into batches, only completion positions through the head."""
    autocast = partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    @torch.no_grad()
    def score(contexts: list[list[int]], completions: list[list[int]]) -> np.ndarray:
        windows = list(zip(contexts, completions, strict=True))
        lengths = np.array([len(context) + len(completion) for context, completion in windows])
        totals = np.zeros(len(windows))
        model.eval()
        for rows in pack_by_length(np.arange(len(windows)), lengths, batch_tokens):
            batch = collate_windows([windows[i] for i in rows], pad_id, scored="completion").to(device)
            with autocast():
                nll = batch_nll(model, batch, reduction="none").cpu().numpy()
            ends = np.cumsum([len(completions[i]) for i in rows])[:-1]  # the batch's targets, row after row
            totals[rows] = [chunk.sum() for chunk in np.split(nll, ends)]
        return totals

    return score


def unigram_window_nll(train_ds: datasets.Dataset, vocab_size: int) -> WindowNLL:
    """The unigram baseline's WindowNLL: train completion-token frequencies, context ignored."""
    log_probs = unigram_log_probs(train_ds, vocab_size)
    return lambda contexts, completions: np.array([-log_probs[np.asarray(m, np.int64)].sum() for m in completions])


def nll_results(
    likelihoods: dict[str, WindowNLL], tokenizer: REMI, test_ds: datasets.Dataset, n_windows: int, seed: int
) -> dict:
    """NLL per completion token and per note of every likelihood system on a fixed subset of the test windows, with
    bootstrap intervals over the windows."""
    subset = test_ds.select(eval_subset(window_lengths(test_ds), n_windows, seed))
    contexts, completions = subset["context_ids"], subset["completion_ids"]
    tokens = np.array([len(m) for m in completions])
    # One Pitch token per note in REMI, counted as the tokenize stage counts a piece's notes.
    pitches = pitch_token_ids(tokenizer)
    notes = np.array([np.isin(m, pitches).sum() for m in completions])
    systems = {}
    for name, window_nll in likelihoods.items():
        totals = window_nll(contexts, completions)
        systems[name] = {
            "per_token": ratio_and_ci(totals, tokens, seed),
            "per_note": ratio_and_ci(totals, notes, seed),
        }
    return {"windows": len(subset), "tokens": int(tokens.sum()), "notes": int(notes.sum()), "systems": systems}


def choose_prompts(piece_ids: list[str], n: int, seed: int) -> list[int]:
    """`n` test windows in a seeded order, taking one window per piece before a second of any piece."""
    order = np.random.default_rng([seed, 2]).permutation(len(piece_ids)).tolist()
    seen, first_of_piece, others = set(), [], []
    for i in order:
        (others if piece_ids[i] in seen else first_of_piece).append(i)
        seen.add(piece_ids[i])
    return (first_of_piece + others)[:n]


def other_piece_window(piece_ids: list[str], prompt: int, rng: np.random.Generator) -> int:
    """A random test window of a piece other than the prompt's."""
    candidates = [i for i, piece in enumerate(piece_ids) if piece != piece_ids[prompt]]
    if not candidates:
        raise ValueError("the 'another test piece' baseline needs test windows of at least two pieces")
    return candidates[rng.integers(len(candidates))]


def repeat_last_bars(ids: list[int], bar_id: int, bars: int) -> list[int]:
    """`ids` followed by its last `bars` bars again (cycled when the stream has fewer bars than that)."""
    ids = np.asarray(ids, dtype=np.int64)
    bounds = np.append(np.flatnonzero(ids == bar_id), len(ids))
    n_bars = len(bounds) - 1
    spans = [ids[bounds[i] : bounds[i + 1]] for i in range(max(0, n_bars - bars), n_bars)]
    return np.concatenate([ids, *(spans[j % len(spans)] for j in range(bars))]).tolist()


def nan_to_none(value: object) -> object:
    """JSON has no NaN (a metric against an empty continuation is one): write null instead."""
    if isinstance(value, dict):
        return {key: nan_to_none(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [nan_to_none(item) for item in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def check_completion_bars(window: int, completion: list[int], bar_id: int, bars: int) -> None:
    if completion.count(bar_id) != bars:
        raise ValueError(
            f"test window {window} has a {completion.count(bar_id)}-bar completion, not the {bars} bars asked for: "
            "the windows were built with other settings"
        )


def reference_candidates(completer: Completer, context: list[int], other: dict, bars: int) -> list[tuple[str, Score]]:
    """The two references every sampled system is compared with: the prompt's last bars again, and the bars of a
    window of another piece."""
    bar_id = completer.grammar.bar_id
    other_ids = list(other["context_ids"]) + list(other["completion_ids"])
    return [
        (REPEAT, completer.decode_last_bars(repeat_last_bars(context, bar_id, bars), bars)),
        (OTHER_PIECE, completer.decode_last_bars(other_ids, bars)),
    ]


def sample_systems(
    completer: Completer, sampled: dict[str, Sampler], context: list[int], sampling: Sampling, sample_dir: Path,
    out_dir: Path, renderer: Renderer | None,
) -> tuple[list[tuple[str, Score]], dict]:  # fmt: skip
    """Each sampled system's K continuations of the prompt, written under `sample_dir` (as WAV too with a
    renderer): (system, continuation) pairs, and per system what the report shows (bars and REMI errors per sample,
    the first piano roll, every sample's WAV)."""
    bar_id, candidates, samples = completer.grammar.bar_id, [], {}
    for name, sampler in sampled.items():
        completion_k = sampler.complete_ids(context, sampling, progress=False)
        candidates += [(name, continuation) for continuation in completion_k.continuations]
        system_dir = sample_dir / slug(name)
        write_completion(completion_k, system_dir, renderer)
        samples[name] = {
            # Measured on the sampled ids: a MIDI file keeps no trailing empty bars to count.
            "bars": [ids.count(bar_id) for ids in completion_k.continuation_ids],
            "token_errors": [
                completer.tokenizer.tokens_errors(TokSequence(ids=context + ids))
                for ids in completion_k.continuation_ids
            ],
            "png": str((system_dir / "sample-0.png").relative_to(out_dir)),
        }
        if renderer is not None:
            wavs = [system_dir / f"sample-{i}.wav" for i in range(len(completion_k.full))]
            samples[name]["wav"] = [str(wav.relative_to(out_dir)) for wav in wavs]
    return candidates, samples


def write_truth(
    completer: Completer, context: list[int], completion: list[int], sample_dir: Path, out_dir: Path, p: int,
    renderer: Renderer | None,
) -> dict[str, str]:  # fmt: skip
    """The prompt with its true continuation, as truth.mid and truth.png beside the samples (and truth.wav with a
    renderer); returns the report's paths to them: truth_png (and truth_wav)."""
    sample_dir.mkdir(parents=True, exist_ok=True)
    truth_full = completer.tokenizer.decode([context + completion])
    truth_full.dump_midi(str(sample_dir / "truth.mid"))
    continuation_tick = completer.bars_ticks(context, truth_full.tpq)
    piano_roll(truth_full, continuation_tick, sample_dir / "truth.png", f"prompt {p}: true continuation")
    paths = {"truth_png": str((sample_dir / "truth.png").relative_to(out_dir))}
    if renderer is not None:
        renderer.write_wav(truth_full, sample_dir / "truth.wav")
        paths["truth_wav"] = str((sample_dir / "truth.wav").relative_to(out_dir))
    return paths


def evaluate_run(
    cfg: dict,
    bars: int,
    completer: Completer,
    sampled: dict[str, Sampler],
    likelihoods: dict[str, WindowNLL],
    test_ds: datasets.Dataset,
    out_dir: str | Path,
    probe_dir: str | Path | None = None,
    renderer: Renderer | None = None,
) -> dict:
    """Everything in the module docstring; returns the results written to metrics.json.

    `cfg` is the `evaluate` config section; `bars` the windows' completion bars; `completer` the tokenizer side
    (decoding, the grammar's Bar id), shared by every system; `probe_dir` a folder holding probe.json, or None;
    `renderer`, when given, renders every sample and truth to WAV for the report to play.
    """
    out_dir, seed = Path(out_dir), cfg["seed"]
    results = {
        "run": out_dir.name,
        "continuation_bars": bars,
        "sampled": list(sampled),
        "sampling": {name: cfg[name] for name in SAMPLING_SETTINGS},
        "nll": nll_results(likelihoods, completer.tokenizer, test_ds, cfg["nll_windows"], seed),
    }
    piece_ids, bar_id = test_ds["piece_id"], completer.grammar.bar_id
    compared = [*sampled, REPEAT, OTHER_PIECE]
    values = {system: {name: [] for name in METRICS} for system in compared}
    agreement = {system: [] for system in [*compared, TRUTH]}
    prompts = []
    for p, window in enumerate(choose_prompts(piece_ids, cfg["prompts"], seed)):
        row = test_ds[window]
        context, completion = list(row["context_ids"]), list(row["completion_ids"])
        check_completion_bars(window, completion, bar_id, bars)
        sampling = Sampling(bars, cfg["samples"], seed=seed + p, **{name: cfg[name] for name in SAMPLING_SETTINGS})
        other = test_ds[other_piece_window(piece_ids, window, np.random.default_rng([seed, 3, p]))]
        prompt = completer.tokenizer.decode([context])
        truth = completer.decode_last_bars(context + completion, bars)
        sample_dir = out_dir / "samples" / f"prompt-{p}"
        candidates = reference_candidates(completer, context, other, bars)
        sampled_candidates, samples = sample_systems(
            completer, sampled, context, sampling, sample_dir, out_dir, renderer
        )
        for system, candidate in candidates + sampled_candidates:
            for name, value in all_metrics(candidate, truth).items():
                values[system][name].append(value)
            agreement[system].append(key_agreement(candidate, prompt))
        agreement[TRUTH].append(key_agreement(truth, prompt))
        key = best_key(prompt)
        prompts.append(
            {
                "piece_id": row["piece_id"],
                "start_bar": row["start_bar"],
                "prompt_bars": context.count(bar_id),
                "prompt_key": None if key is None else KEY_NAMES[key],
                "samples": samples,
                **write_truth(completer, context, completion, sample_dir, out_dir, p, renderer),
            }
        )
    return write_results(results, values, agreement, prompts, seed, out_dir, probe_dir)


def write_results(
    results: dict, values: dict, agreement: dict, prompts: list, seed: int, out_dir: Path, probe_dir: str | Path | None
) -> dict:
    """The summaries (means and bootstrap intervals) beside the raw values, the probe's results when there are
    any, into metrics.json and the report."""
    results["key_agreement"] = {system: mean_and_ci(v, seed) for system, v in agreement.items()}
    results["key_agreement_values"] = agreement
    results["metrics"] = {
        system: {name: mean_and_ci(v, seed) for name, v in by_name.items()} for system, by_name in values.items()
    }
    results["metric_values"] = values
    results["prompts"] = prompts
    if probe_dir is not None:
        results["probe"] = json.loads((Path(probe_dir) / "probe.json").read_text())
        results["probe_dir"] = Path(os.path.relpath(probe_dir, out_dir)).as_posix()
    (out_dir / "metrics.json").write_text(json.dumps(nan_to_none(results), indent=2, allow_nan=False))
    write_report(results, out_dir)
    return results


def window_nll_of(completer: Completer, batch_tokens: int) -> WindowNLL:
    """A sampled system's own likelihood of the true completions: the n-gram scores itself, torch models in batches."""
    if isinstance(completer.model, NgramModel):
        return completer.model.window_nll
    return model_window_nll(
        completer.model, torch.device(completer.device), batch_tokens, completer.tokenizer.pad_token_id
    )


def evaluate_checkpoint(
    cfg: dict,
    bars: int,
    device_name: str,
    batch_tokens: int,
    run_dir: str | Path,
    baselines: list,
    train_dir: str | Path,
    test_dir: str | Path,
    out_dir: str | Path,
    probe_dir: str | Path | None = None,
) -> dict:
    """`evaluate_run` on a run's best.pth and its `baselines` (checkpoint paths: the same-size Transformer's
    best.pth, the n-gram's model.npz), each sampled and scored, with the unigram scored too (`batch_tokens` bounds
    the NLL batches)."""
    run_dir, device = Path(run_dir), str(resolve_device(device_name, 0))
    renderer = Renderer(cfg["soundfont"]) if cfg["audio"] else None  # before any work: a missing soundfont fails first
    completer = Completer.load(run_dir / "best.pth", run_dir / "tokenizer.json", device)
    train_ds, test_ds = datasets.load_from_disk(str(train_dir)), datasets.load_from_disk(str(test_dir))
    completers = [completer] + [Completer.load(path, None, device) for path in baselines]
    sampled = {c.system_name: c for c in completers}
    likelihoods = {c.system_name: window_nll_of(c, batch_tokens) for c in completers}
    likelihoods[UNIGRAM] = unigram_window_nll(train_ds, len(completer.tokenizer.vocab))
    return evaluate_run(cfg, bars, completer, sampled, likelihoods, test_ds, out_dir, probe_dir, renderer)
