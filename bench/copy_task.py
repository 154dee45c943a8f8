"""How many steps until a model learns to copy? A synthetic in-context copy task, trained from scratch.

Each sequence is `segment` random tokens (ids 100..199) played `repeats` times; the loss on the first play cannot
beat log(100) = 4.61 nats, the loss on the repeats falls to ~0 once the model copies what it has read. Trained with
pianomuse's own optimizer groups and AdamW settings (constant LR after a 15-step warm-up), one CPU thread.

    .venv/bin/python bench/copy_task.py --arch rwkv7 --lr 3e-3 --steps 400
    .venv/bin/python bench/copy_task.py --arch transformer --lr 3e-3 --steps 400

Prints the losses every 100 steps and the first step at which the repeats' loss fell below 1 nat.
"""

import argparse
import time

import torch
import torch.nn.functional as F

from pianomuse.models import build_model, model_config
from pianomuse.optim import make_optimizer

VOCAB = 389  # the default REMI vocabulary's size: the same embedding and head as the real models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="rwkv7", choices=["rwkv7", "transformer"])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--embd", type=int, default=128)
    parser.add_argument("--head-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--segment", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    model = build_model(model_config(args.arch, VOCAB, args.layers, args.embd, args.head_size))
    optimizer, schedule = make_optimizer(
        model, args.lr, args.lr, 15, args.steps, args.weight_decay, betas=(0.9, 0.99), adam_eps=1e-8
    )
    start, copied_at = time.perf_counter(), None
    for step in range(args.steps + 1):
        x = torch.randint(100, 200, (args.batch, args.segment)).repeat(1, args.repeats)
        losses = F.cross_entropy(model(x[:, :-1]).reshape(-1, VOCAB), x[:, 1:].reshape(-1), reduction="none")
        losses = losses.view(args.batch, -1)
        optimizer.zero_grad()
        losses.mean().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        first, repeats = losses[:, : args.segment - 1].mean().item(), losses[:, args.segment :].mean().item()
        if copied_at is None and repeats < 1.0:
            copied_at = step
        if step % 100 == 0:
            print(f"step {step}: first play {first:.3f}, repeats {repeats:.3f} ({time.perf_counter() - start:.0f} s)")
    print(f"{args.arch} lr {args.lr}: repeats' loss below 1 nat from step {copied_at} (None: never)")


if __name__ == "__main__":
    main()
