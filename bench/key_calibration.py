"""Does a model know the prompt's key? The share of its next notes it expects in the key, against the truth's.

For validation windows (`evaluate`'s prompt choice), each model reads a window's context and its true completion
(teacher forcing). At every completion position whose true token is a Pitch, the model's next-token distribution,
after a sampling setting's temperature and top-p over the whole vocabulary (as sampling applies them), is restricted
to the Pitch tokens; the mass it gives to pitch classes of the prompt's key (`metrics.best_key` and
`metrics.key_scale`, what key agreement counts) is the chance that the note it plays there lies in the key. The mean
over the notes is the key agreement that samples would reach if playing their own notes instead of the truth's did
not move them; the truth's own share of notes in the key is where a calibrated model lies at T 1.0 / top-p 1.0.

    .venv/bin/python bench/key_calibration.py results/checkpoints/cpu results/checkpoints/cpu-transformer \
        --windows results/windows/KEY/validation
"""

import argparse
import itertools
from pathlib import Path

import datasets
import numpy as np
import torch

from pianomuse.complete import Completer, Sampling
from pianomuse.evaluate import choose_prompts
from pianomuse.metrics import best_key, key_scale
from pianomuse.remi import pitch_token_ids
from pianomuse.sampling import filter_logits


def in_key_mass(
    logits: torch.Tensor, pitch_ids: torch.Tensor, in_key: torch.Tensor, temperature: float, top_p: float
) -> torch.Tensor:
    """[N] the mass each row of `logits` [N, V] gives to the in-key pitches (`in_key` [P] booleans over
    `pitch_ids` [P]) among all pitches, after temperature and top-p; 0 where top-p leaves no pitch."""
    probs = filter_logits(logits.float(), temperature, None, top_p)[:, pitch_ids]
    total = probs.sum(dim=-1)
    return torch.where(total > 0, probs[:, in_key].sum(dim=-1) / total.clamp_min(1e-30), torch.zeros_like(total))


@torch.no_grad()
def window_logits(model: torch.nn.Module, context: list[int], completion: list[int]) -> torch.Tensor:
    """[len(completion), V] the model's logits for each completion token, given everything before it."""
    ids = context + completion
    inputs = torch.tensor([ids[:-1]])
    positions = torch.arange(len(context) - 1, len(ids) - 1)
    return model(inputs, head_positions=positions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders (results/checkpoints/{run}) of RWKV-7 or Transformer runs")
    parser.add_argument("--windows", required=True, help="their validation windows (results/windows/KEY/validation)")
    parser.add_argument("--prompts", type=int, default=256)
    # The shipped defaults, and sampling from the model as it is.
    parser.add_argument("--temperatures", type=float, nargs="+", default=[Sampling.temperature, 1.0])
    parser.add_argument("--top-ps", type=float, nargs="+", default=[Sampling.top_p, 1.0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    completers = [Completer.load(run) for run in args.runs]
    tokenizer = completers[0].tokenizer
    pitch_ids = torch.from_numpy(np.sort(pitch_token_ids(tokenizer)).astype(np.int64))  # sorted: searchsorted below
    pitch_classes = completers[0].grammar.pitch_class[pitch_ids]
    settings = list(itertools.product(args.temperatures, args.top_ps))
    validation = datasets.load_from_disk(args.windows)
    truth_in_key, notes = 0, 0
    expected = {(run, setting): 0.0 for run in args.runs for setting in settings}
    for window in choose_prompts(validation["piece_id"], args.prompts, args.seed):
        row = validation[window]
        context, completion = list(row["context_ids"]), list(row["completion_ids"])
        key = best_key(tokenizer.decode([context]))
        if key is None:
            continue
        in_key = torch.from_numpy(key_scale(key))[pitch_classes]
        targets = torch.tensor(completion)
        is_note = torch.isin(targets, pitch_ids)
        note_in_key = in_key[torch.searchsorted(pitch_ids, targets[is_note])]
        truth_in_key, notes = truth_in_key + int(note_in_key.sum()), notes + int(is_note.sum())
        for run, completer in zip(args.runs, completers):
            logits = window_logits(completer.model.eval(), context, completion)[is_note]
            for temperature, top_p in settings:
                mass = in_key_mass(logits, pitch_ids, in_key, temperature, top_p)
                expected[run, (temperature, top_p)] += float(mass.sum())
    print(f"{notes} true notes of {args.prompts} validation windows; the truth plays {truth_in_key / notes:.3f} "
          "of them in the prompt's key")  # fmt: skip
    print("| run | temperature | top-p | expected in key |")
    print("|---|---:|---:|---:|")
    for (run, (temperature, top_p)), total in expected.items():
        print(f"| {Path(run).name} | {temperature} | {top_p} | {total / notes:.3f} |")


if __name__ == "__main__":
    main()
