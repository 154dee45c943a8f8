"""Tune the completion defaults (temperature, top-p, stay-in-key) on the validation split, never the test split.

For every (temperature, top-p, stay-in-key) of the grid, a run's checkpoint continues the same validation prompts
(`evaluate`'s prompt choice and seeds) and the probe's validation figures (never its test figures, which report the
choice), and is scored with the evaluation's sampled measures: key agreement with the prompt, pitch-class overlap and
groove similarity with the true continuation, and the pattern probe. The score of a setting is the mean of those four
(each in [0, 1], higher is better); the best is printed last, with scale consistency and the truth's own key
agreement beside it (a stay-in-key that lifts key agreement above the truth's makes the music tidier than the
music it continues: read it against pitch-class overlap). Each setting's full report is kept under --out.

    .venv/bin/python bench/tune_sampling.py results/checkpoints/cpu --windows results/windows/KEY/validation
"""

import argparse
import itertools
import json
from pathlib import Path

import datasets
import torch

from pianomuse.complete import Completer, Sampling
from pianomuse.evaluate import TRUTH, evaluate_run
from pianomuse.probe import run_probe

MEASURES = ["key agreement", "pitch-class overlap", "groove similarity", "probe"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run folder (results/checkpoints/{run})")
    parser.add_argument(
        "--windows", required=True, help="the run's validation windows (results/windows/KEY/validation)"
    )
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.8, 0.9, 1.0])
    parser.add_argument("--top-ps", type=float, nargs="+", default=[0.9, 0.95, 1.0])
    parser.add_argument("--stay-in-keys", type=float, nargs="+", default=[Sampling.stay_in_key])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--bars", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/tune-sampling")
    args = parser.parse_args()
    torch.set_num_threads(1)
    completer = Completer.load(args.run)
    name = completer.system_name
    validation = datasets.load_from_disk(args.windows)
    rows = []
    for temperature, top_p, stay_in_key in itertools.product(args.temperatures, args.top_ps, args.stay_in_keys):
        out = Path(args.out) / Path(args.run).name / f"t{temperature}-p{top_p}-k{stay_in_key}"
        out.mkdir(parents=True, exist_ok=True)
        cfg = {"prompts": args.prompts, "samples": args.samples, "temperature": temperature, "top_p": top_p,
               "top_k": None, "seed": args.seed, "stay_in_key": stay_in_key, "nll_windows": 1}  # fmt: skip
        sampled = evaluate_run(cfg, args.bars, completer, {name: completer}, {}, validation, out / "evaluate")
        sampling = Sampling(args.bars, args.samples, temperature, top_p, None, args.seed, stay_in_key)
        probe = run_probe(completer, {name: completer}, sampling, out / "probe", figure_set="validation")
        scores = {
            "key agreement": sampled["key_agreement"][name][0],
            "pitch-class overlap": sampled["metrics"][name]["pitch-class overlap"][0],
            "groove similarity": sampled["metrics"][name]["groove similarity"][0],
            "probe": probe["summary"][name][0],
        }
        mean = sum(scores.values()) / len(scores)
        rows.append(
            {
                "temperature": temperature,
                "top_p": top_p,
                "stay_in_key": stay_in_key,
                **scores,
                "mean": mean,
                "scale consistency": sampled["metrics"][name]["scale consistency"][0],
                "truth's key agreement": sampled["key_agreement"][TRUTH][0],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    (Path(args.out) / Path(args.run).name / "grid.json").write_text(json.dumps(rows, indent=2))
    shown = [*MEASURES, "mean", "scale consistency", "truth's key agreement"]
    print("| temperature | top-p | stay-in-key | " + " | ".join(shown) + " |")
    print("|---|---|---|" + "---|" * len(shown))
    for row in rows:
        print(
            f"| {row['temperature']} | {row['top_p']} | {row['stay_in_key']} | "
            + " | ".join(f"{row[m]:.3f}" for m in shown)
            + " |"
        )
    best = max(rows, key=lambda row: row["mean"])
    print(
        f"best on validation: temperature {best['temperature']}, top-p {best['top_p']}, stay-in-key "
        f"{best['stay_in_key']} (mean {best['mean']:.3f})"
    )


if __name__ == "__main__":
    main()
