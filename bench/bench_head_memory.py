"""Peak memory of a training step at ctx 2048: completion-only head (head_positions) vs full logits.

Each measurement runs in a fresh subprocess so that one variant's freed memory cannot hide the other's peak.
On CUDA the peak is torch.cuda.max_memory_allocated; on CPU it is the peak resident set size above the level
just before the step, sampled every millisecond from /proc (getrusage's maxrss would include import-time peaks).

Two scopes are measured: the whole forward+backward of the model, and the head + loss alone (from the final
hidden states to the gradient), which is the part the slicing changes.

    python bench/bench_head_memory.py                      # small model (L6 D256), batch 1, 2048 tokens
    python bench/bench_head_memory.py --n-layer 12 --n-embd 512 --batch 8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

REPO = Path(__file__).resolve().parents[1]


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory allocated inside the `with` block, above the level at its start."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            self.start = self.peak = resident_bytes()
            self.running = True
            self.sampler = threading.Thread(target=self.sample, daemon=True)
            self.sampler.start()
        return self

    def sample(self):
        while self.running:
            self.peak = max(self.peak, resident_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated() - self.start
        else:
            self.running = False
            self.sampler.join()
            self.bytes = max(self.peak, resident_bytes()) - self.start


def measure(args) -> dict:
    """One variant in this process: peak bytes of the model step and of the head + loss."""
    from pianomuse.batching import collate_windows
    from pianomuse.model import RWKV7, RWKV7Config
    from pianomuse.scoring import batch_nll

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    config = RWKV7Config(
        vocab_size=args.vocab,
        n_layer=args.n_layer,
        n_embd=args.n_embd,
        head_size=64,
        grad_checkpoint=args.grad_checkpoint,
    )
    model = RWKV7(config).to(device)
    completion = int(args.ctx * args.completion_fraction)

    def tokens(n):
        return torch.randint(4, args.vocab, (n,)).tolist()

    windows = [(tokens(args.ctx + 1 - completion), tokens(completion)) for _ in range(args.batch)]
    batch = collate_windows(windows, pad_id=0, scored="completion").to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def full_logits_loss(logits):
        targets = torch.full(batch.inputs.shape, -100, device=device).view(-1)
        targets[batch.head_positions] = batch.targets
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets, ignore_index=-100)

    def model_step():
        with autocast:
            loss = batch_nll(model, batch) if args.variant == "sliced" else full_logits_loss(model(batch.inputs))
        loss.backward()

    model_step()  # warm-up: lazy initialisations and allocator caches must not count as the step's memory
    model.zero_grad(set_to_none=True)
    with PeakMemory(device) as whole:
        model_step()
    model.zero_grad(set_to_none=True)

    hidden = torch.randn(args.batch, args.ctx, args.n_embd, device=device, requires_grad=True)
    head = model.head

    def head_step():
        if args.variant == "sliced":
            logits = head(hidden.view(-1, args.n_embd)[batch.head_positions])
            loss = F.cross_entropy(logits.float(), batch.targets)
        else:
            loss = full_logits_loss(head(hidden))
        loss.backward()

    head_step()
    hidden.grad = None
    model.zero_grad(set_to_none=True)
    with PeakMemory(device) as head_only:
        head_step()
    return {"model_step": whole.bytes, "head_and_loss": head_only.bytes, "device": str(device)}


def vocab_size() -> int:
    from pianomuse.tokenizer import build_tokenizer

    return len(build_tokenizer(**yaml.safe_load((REPO / "config.yaml").read_text())["tokenizer"]).vocab)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-layer", type=int, default=6)
    parser.add_argument("--n-embd", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--ctx", type=int, default=2048)
    parser.add_argument("--completion-fraction", type=float, default=1 / 3, help="4 of 12 bars by default")
    parser.add_argument("--vocab", type=int, default=None, help="default: the configured REMI tokenizer's")
    parser.add_argument("--grad-checkpoint", action="store_true")
    parser.add_argument("--variant", choices=["sliced", "full"], help=argparse.SUPPRESS)  # one subprocess's job
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(measure(args)))
        return

    args.vocab = args.vocab or vocab_size()
    results = {}
    for variant in ["full", "sliced"]:
        command = (
            [sys.executable, __file__, "--variant", variant]
            + [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("variant", "grad_checkpoint")]
            + (["--grad-checkpoint"] if args.grad_checkpoint else [])
        )
        # A fixed mmap threshold makes glibc return freed blocks at once, so the resident size tracks live tensors.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        output = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
        results[variant] = json.loads(output.strip().splitlines()[-1])

    mib = 2**20
    print(
        f"L{args.n_layer} D{args.n_embd} vocab {args.vocab}, batch {args.batch} x ctx {args.ctx}, "
        f"completion {args.completion_fraction:.0%}, grad checkpoint {args.grad_checkpoint}, "
        f"{results['full']['device']}"
    )
    print(f"{'peak memory (MiB)':<22}{'full logits':>14}{'completion-only':>18}{'ratio':>8}")
    for scope in ["model_step", "head_and_loss"]:
        full, sliced = results["full"][scope], results["sliced"][scope]
        print(f"{scope.replace('_', ' '):<22}{full / mib:>14.1f}{sliced / mib:>18.1f}{sliced / full:>8.2f}")


if __name__ == "__main__":
    main()
