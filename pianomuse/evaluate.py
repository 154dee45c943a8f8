"""Evaluate a trained run on the test windows: completion NLL against a unigram baseline, and musical metrics of
sampled continuations against the true ones, beside two baselines (repeat the prompt's last bars, the prompt cycled
when it has fewer than M; the bars of another test piece). Writes results/eval/{run}/: metrics.json, report.md,
report.html and samples/.

The NLL is scored exactly as training scores validation (`pianomuse.train.evaluate`). A prompt is a test window's
context as the model was trained on it, and the truth is that window's completion.
"""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path

import datasets
import numpy as np
import pyarrow.compute as pc
import torch
from miditok import TokSequence

from pianomuse.batching import batch_loader, pack_by_length, window_lengths
from pianomuse.cli import write_outputs
from pianomuse.complete import Completer, Sampling
from pianomuse.metrics import METRICS, all_metrics, mean_and_ci
from pianomuse.report import piano_roll, write_report
from pianomuse.tokens import pitch_token_ids
from pianomuse.train import eval_subset, evaluate, resolve_device, unigram_nll

MODEL = "RWKV-7"
REPEAT = "repeat the prompt's last bars"
OTHER_PIECE = "bars of another test piece"


def nll_results(completer: Completer, train_ds, test_ds, n_windows: int, seed: int, batch_tokens: int) -> dict:
    """NLL per completion token and per note, for the model and the unigram baseline, on a fixed test subset."""
    device = torch.device(completer.device)
    subset = test_ds.select(eval_subset(window_lengths(test_ds), n_windows, seed)).flatten_indices()
    completion_tokens = pc.list_flatten(subset.data.column("completion_ids")).to_numpy().astype(np.int64)
    # One Pitch token per note in REMI, counted as the tokenize stage counts a piece's notes.
    tokens, notes = len(completion_tokens), int(np.isin(completion_tokens, pitch_token_ids(completer.tokenizer)).sum())
    lengths = window_lengths(subset)
    loader = batch_loader(subset, pack_by_length(np.arange(len(subset)), lengths, batch_tokens),
                          completer.tokenizer.pad_token_id, 0, scored="completion")
    autocast = partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    per_token = {
        MODEL: evaluate(completer.model, loader, device, autocast),
        "unigram": unigram_nll(train_ds, subset, len(completer.tokenizer.vocab)),
    }
    return {
        "windows": len(subset), "tokens": tokens, "notes": notes,
        "models": {name: {"per_token": nll, "per_note": nll * tokens / notes} for name, nll in per_token.items()},
    }


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


def nan_to_none(value):
    """JSON has no NaN (a metric against an empty continuation is one): write null instead."""
    if isinstance(value, dict):
        return {key: nan_to_none(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [nan_to_none(item) for item in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def evaluate_run(
    cfg: dict, bars: int, device_name: str, batch_tokens: int, run_dir, train_dir, test_dir, out_dir
) -> dict:
    """Everything in the module docstring; returns the results written to metrics.json.

    `cfg` is the `evaluate` config section; `bars` the windows' completion bars; `batch_tokens` bounds NLL batches.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    device = resolve_device(device_name, 0)
    completer = Completer.load(run_dir / "best.pth", run_dir / "tokenizer.json", str(device))
    train_ds, test_ds = datasets.load_from_disk(str(train_dir)), datasets.load_from_disk(str(test_dir))
    results = {
        "run": run_dir.name,
        "nll": nll_results(completer, train_ds, test_ds, cfg["nll_windows"], cfg["seed"], batch_tokens),
    }

    piece_ids, bar_id = test_ds["piece_id"], completer.grammar.bar_id
    values = {system: {name: [] for name in METRICS} for system in [MODEL, REPEAT, OTHER_PIECE]}
    prompts = []
    for p, window in enumerate(choose_prompts(piece_ids, cfg["prompts"], cfg["seed"])):
        row = test_ds[window]
        context, completion = list(row["context_ids"]), list(row["completion_ids"])
        if completion.count(bar_id) != bars:
            raise ValueError(
                f"test window {window} has a {completion.count(bar_id)}-bar completion, not the {bars} bars asked for: "
                "the windows were built with other settings"
            )
        sampling = Sampling(bars, cfg["samples"], cfg["temperature"], cfg["top_p"], cfg["top_k"], cfg["seed"] + p)
        sampled = completer.complete_ids(context, sampling, progress=False)
        other = test_ds[other_piece_window(piece_ids, window, np.random.default_rng([cfg["seed"], 3, p]))]
        truth = completer.decode_last_bars(context + completion, bars)
        candidates = [(MODEL, continuation) for continuation in sampled.continuations] + [
            (REPEAT, completer.decode_last_bars(repeat_last_bars(context, bar_id, bars), bars)),
            (OTHER_PIECE, completer.decode_last_bars(list(other["context_ids"]) + list(other["completion_ids"]), bars)),
        ]
        for system, candidate in candidates:
            for name, value in all_metrics(candidate, truth).items():
                values[system][name].append(value)

        sample_dir = out_dir / "samples" / f"prompt-{p}"
        write_outputs(sampled, sample_dir)
        truth_full = completer.tokenizer.decode([context + completion])
        truth_full.dump_midi(str(sample_dir / "truth.mid"))
        piano_roll(truth_full, sampled.continuation_tick, sample_dir / "truth.png", f"prompt {p}: true continuation")
        prompts.append({
            "piece_id": row["piece_id"], "start_bar": row["start_bar"], "prompt_bars": context.count(bar_id),
            # Measured on the sampled ids: a MIDI file keeps no trailing empty bars to count.
            "sample_bars": [ids.count(bar_id) for ids in sampled.continuation_ids],
            "sample_token_errors": [
                completer.tokenizer.tokens_errors(TokSequence(ids=context + ids)) for ids in sampled.continuation_ids
            ],
            "sample_png": str((sample_dir / "sample-0.png").relative_to(out_dir)),
            "truth_png": str((sample_dir / "truth.png").relative_to(out_dir)),
        })

    results["continuation_bars"] = bars
    results["metrics"] = {
        system: {name: mean_and_ci(v, cfg["seed"]) for name, v in by_name.items()} for system, by_name in values.items()
    }
    results["metric_values"] = values
    results["prompts"] = prompts
    (out_dir / "metrics.json").write_text(json.dumps(nan_to_none(results), indent=2, allow_nan=False))
    write_report(results, out_dir)
    return results
