"""Does a model copy a figure it has heard? NLL of each bar of the probe's figures played 12 times, by repeat.

A model that copies in context gets cheaper with every repeat (bar 2 onwards costs ~0 nats for a perfect copier);
one that only learned the prompt's key and rhythm stays flat. Run on the run folders to compare, e.g.

    .venv/bin/python bench/copy_in_context.py results/checkpoints/demo results/checkpoints/demo-loops

Prints, per run, the mean NLL (nats) of bars 1..11 over the 25 figures, and per token for bars 1, 2 and 9..11.

With `--loops-from results/tokens/{hash}/validation` it measures the same on loop rows instead:
one real bar of each held-out piece played 12 times (`augment.loop_rows`, the train split's loop rows made from
validation pieces). A run that copies these but not the figures copies MAESTRO-like repeats only; one that copies
neither has not learned to copy. `--score-like` writes those loop rows like a score first (`augment.score_like_ids`:
one velocity, onsets and durations on the sixteenth grid, no pedal), as a composer's prompt would be, and
`--tempo-once` states their tempo once, as a score does, instead of at every repeat (`Loops.restate_tempo`).
`--lead-bars N` plays the N bars of the piece before the loop first (`Loops.lead_bars`): the loop then starts
inside the window, and the NLLs are those of its plays (pieces with fewer bars before the loop are left out).
`--three-four` cuts the loops to 3/4 (`Loops.three_four`: each bar keeps its first three beats).
"""

import argparse
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from pianomuse.augment import LEAD_MARK, Loops, ScoreGrid, loop_rows, pitch_shift_table, score_like_ids
from pianomuse.complete import Completer
from pianomuse.probe import probe_figures

BARS = 12


def bar_nlls(completer: Completer, ids: list[int], lead: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Summed NLL and token count of bars 2..BARS of the figure after `lead` bars (the last one, unfinished, left
    out)."""
    x = torch.tensor([ids])
    with torch.inference_mode():
        logits = completer.model(x)
    logits = logits[0] if isinstance(logits, tuple) else logits
    nll = -torch.log_softmax(logits[0, :-1].float(), -1).gather(1, x[0, 1:, None])[:, 0].numpy()
    bar = np.cumsum(np.array(ids[1:]) == completer.grammar.bar_id)  # bar 1 starts after the first Bar
    plays = range(lead + 1, lead + BARS)
    return np.array([nll[bar == b].sum() for b in plays]), np.array([(bar == b).sum() for b in plays])


def held_out_loops(completer: Completer, folder: str, count: int, loops: Loops, score_like: bool) -> list[list[int]]:
    """The rows `loops` makes of each piece of a split's token shards (untransposed), at most `count`, those with
    their whole lead only; written like a score when `score_like`."""
    tokenizer = completer.tokenizer
    shards = sorted(path for path in Path(folder).glob("shard-*.parquet") if not path.name.endswith(".rejects.parquet"))
    shift = pitch_shift_table(tokenizer)
    tables = [loop_rows(tokenizer, shift, pq.read_table(shard), loops, offsets=[]) for shard in shards]
    rows = [
        np.asarray(ids)
        for table in tables
        for ids, name in zip(table.column("ids").to_pylist(), table.column("piece_id").to_pylist())
        if loops.lead_bars == [0] or f"{LEAD_MARK}{loops.lead_bars[0]}" in name
    ][:count]
    if score_like:
        grid = ScoreGrid.of(tokenizer)
        rows = [score_like_ids(ids, grid)[0] for ids in rows]
    return [list(map(int, ids)) for ids in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders (results/checkpoints/{run}) or checkpoint files")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--loops-from", help="a split's token folder (results/tokens/{hash}/validation): its loop rows")
    parser.add_argument("--count", type=int, default=200, help="loop rows measured (with --loops-from)")
    parser.add_argument("--score-like", action="store_true", help="write the loop rows like a score (--loops-from)")
    parser.add_argument("--tempo-once", action="store_true", help="state the loop rows' tempo once (--loops-from)")
    parser.add_argument("--lead-bars", type=int, default=0, help="the piece's bars before the loop (--loops-from)")
    parser.add_argument("--three-four", action="store_true", help="cut the loop rows to 3/4 (--loops-from)")
    args = parser.parse_args()
    if args.lead_bars and not args.loops_from:
        parser.error("--lead-bars needs --loops-from: the probe's figures open their prompt")
    torch.set_num_threads(args.threads)
    figures = probe_figures()
    # One-bar loops played BARS times after the lead.
    loops = Loops(1, [1], args.lead_bars + BARS, 0, not args.tempo_once, [args.lead_bars], float(args.three_four))
    for run in args.runs:
        completer = Completer.load(run)
        completer.model.eval()
        if args.loops_from:
            sequences = held_out_loops(completer, args.loops_from, args.count, loops, args.score_like)
        else:
            sequences = [completer.prompt_ids(f.score(BARS), None) for f in figures]
        sums, counts = zip(*(bar_nlls(completer, ids, args.lead_bars) for ids in sequences))
        per_bar, per_token = np.mean(sums, axis=0), np.sum(sums, axis=0) / np.sum(counts, axis=0)
        print(f"{run}: NLL per bar, bars 1..{BARS - 1}: {' '.join(f'{v:.1f}' for v in per_bar)}")
        first, second, late = per_token[0], per_token[1], per_token[8:].mean()
        print(f"{run}: NLL per token, bar 1 / 2 / 9-11: {first:.3f} / {second:.3f} / {late:.3f}")


if __name__ == "__main__":
    main()
