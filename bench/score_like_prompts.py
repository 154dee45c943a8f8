"""Do prompts written like a score fare as well as performed ones? evaluate's measures on both, side by side.

A composer's MIDI is quantized and flat in velocity; MAESTRO's prompts are performances. Every window of a split is
also written like a score (`augment.score_like_ids` on its context and completion together: the window's median
velocity for every note, onsets and durations on the sixteenth grid, no pedal), and `evaluate.evaluate_run` scores
each run on both versions of the same windows (the same prompts, subset and seeds): NLL per note of the true
continuation, key agreement with the prompt, and the musical metrics against the true continuation. Each version's
full report is kept under --out.

    .venv/bin/python bench/score_like_prompts.py results/checkpoints/cpu results/checkpoints/cpu-transformer \
        --windows results/windows/KEY/validation
"""

import argparse
from pathlib import Path

import datasets
import numpy as np
import torch

from pianomuse.augment import ScoreGrid, score_like_ids
from pianomuse.complete import Completer, Sampling
from pianomuse.evaluate import TRUTH, evaluate_run, window_nll_of

MEASURES = ["pitch-class overlap", "groove similarity", "scale consistency"]


def score_like_window(row: dict, grid: ScoreGrid) -> dict:
    """A window's context and completion written like a score together, cut where the context's bars end."""
    context = np.asarray(row["context_ids"], dtype=np.int64)
    ids, bars = score_like_ids(np.concatenate([context, np.asarray(row["completion_ids"], np.int64)]), grid)
    cut = bars[int((context == grid.bar_id).sum())]
    return {"context_ids": ids[:cut].tolist(), "completion_ids": ids[cut:].tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders (results/checkpoints/{run}) trained on the same tokenizer")
    parser.add_argument("--windows", required=True, help="the runs' windows of one split (results/windows/KEY/SPLIT)")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--nll-windows", type=int, default=1024)
    parser.add_argument("--temperature", type=float, default=Sampling.temperature)
    parser.add_argument("--top-p", type=float, default=Sampling.top_p)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/score-like-prompts")
    args = parser.parse_args()
    torch.set_num_threads(1)
    datasets.disable_progress_bars()
    completers = [Completer.load(run) for run in args.runs]
    sampled = {completer.system_name: completer for completer in completers}
    likelihoods = {name: window_nll_of(completer, batch_tokens=4096) for name, completer in sampled.items()}
    performed = datasets.load_from_disk(args.windows)
    grid = ScoreGrid.of(completers[0].tokenizer)
    # In memory: a cache file would land inside the workflow's windows folder.
    score_like = performed.map(score_like_window, fn_kwargs={"grid": grid}, keep_in_memory=True)
    versions = {"performed": performed, "score-like": score_like}
    bars = performed[0]["completion_ids"].count(grid.bar_id)
    cfg = {"prompts": args.prompts, "samples": args.samples, "temperature": args.temperature, "top_p": args.top_p,
           "top_k": None, "seed": args.seed, "nll_windows": args.nll_windows}  # fmt: skip
    results = {}
    for version, windows in versions.items():
        out = Path(args.out) / Path(args.runs[0]).name / version
        out.mkdir(parents=True, exist_ok=True)
        results[version] = evaluate_run(cfg, bars, completers[0], sampled, likelihoods, windows, out)
    print("| system | prompts | NLL per note | key agreement | " + " | ".join(MEASURES) + " |")
    print("|---|---|---:|---:|" + "---:|" * len(MEASURES))
    for name in [*sampled, TRUTH]:
        for version, result in results.items():
            nll = f"{result['nll']['systems'][name]['per_note'][0]:.3f}" if name in sampled else ""
            metrics = [f"{result['metrics'][name][m][0]:.3f}" if name in sampled else "" for m in MEASURES]
            key = result["key_agreement"][name][0]
            print(f"| {name} | {version} | {nll} | {key:.3f} | " + " | ".join(metrics) + " |")


if __name__ == "__main__":
    main()
