"""Does a model loop real music? How much continuations of real test prompts copy the prompt's own bars.

Loop rows teach copying; a composer also wants a model that moves on when the music does. For every continuation
that `snakemake evaluate` wrote (results/eval/{run}/samples/prompt-*/{system}/sample-*.mid, prompt and continuation
in one file) and for the true continuation (truth.mid), each continuation bar's (sixteenth slot, pitch) pairs are
compared with the prompt's (`probe.bar_events`, `probe.f1`):

    lag-4 F1       against the prompt bar four bars earlier: what "repeat the prompt's last 4 bars" plays
    best-bar F1    against the prompt bar that matches it best

A system far above the truth on both loops where the music does not. Bars are 4/4, as MAESTRO's are; the context
and completion lengths are the run's windows (results/checkpoints/{run}/data.json).

    .venv/bin/python bench/prompt_copying.py cpu-tempo-once cpu-three-four
"""

import argparse
import json
from pathlib import Path

import numpy as np
from symusic import Score

from pianomuse.probe import SLOTS_PER_QUARTER, bar_events, f1

LAG = 4


def copying(path: Path, context_bars: int, completion_bars: int) -> tuple[float, float]:
    """(lag-4 F1, best-bar F1) of one file's continuation bars against its prompt bars, means over the bars."""
    bars = bar_events(Score(path), 4 * SLOTS_PER_QUARTER, context_bars + completion_bars)
    prompt, continuation = bars[:context_bars], bars[context_bars:]
    lag = [f1(bar, prompt[context_bars - LAG + i % LAG]) for i, bar in enumerate(continuation)]
    best = [max(f1(bar, earlier) for earlier in prompt) for bar in continuation]
    return float(np.mean(lag)), float(np.mean(best))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run names with an evaluation in results/eval/{run}")
    parser.add_argument("--results", default="results", help="the workflow's results folder")
    args = parser.parse_args()
    print("| run | system | continuations | lag-4 F1 | best-bar F1 |")
    print("|---|---|---:|---:|---:|")
    for run in args.runs:
        windows = json.loads(Path(args.results, "checkpoints", run, "data.json").read_text())["settings"]["windows"]
        if windows["context_bars"] < LAG:
            raise SystemExit(f"{run}: a {windows['context_bars']}-bar context has no bar {LAG} bars back")
        scores: dict[str, list[tuple[float, float]]] = {}
        for prompt in sorted(Path(args.results, "eval", run, "samples").glob("prompt-*")):
            files = [("true continuation", prompt / "truth.mid")]
            files += [(system.name, f) for system in sorted(prompt.iterdir()) if system.is_dir()
                      for f in sorted(system.glob("sample-*[0-9].mid"))]  # fmt: skip
            for system, path in files:
                scores.setdefault(system, []).append(copying(path, windows["context_bars"], windows["completion_bars"]))
        if not scores:
            raise SystemExit(f"{run}: no samples in {Path(args.results, 'eval', run, 'samples')}")
        for system, values in scores.items():
            lag, best = np.array(values).T
            print(f"| {run} | {system} | {len(values)} | {lag.mean():.3f} | {best.mean():.3f} |")


if __name__ == "__main__":
    main()
