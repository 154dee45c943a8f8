"""Training-step throughput and MFU of RWKV-7 against a same-size causal GPT-style Transformer, on the CPU or a GPU.

For each preset (its model size and training batch tokens, presets/ over config.yaml) and context length, the batch
is batch_tokens / ctx windows of ctx tokens. A training step is forward + backward of the full-vocabulary
cross-entropy at every position (the training loss scores every token of a window). Reported per model: tokens/s,
FLOPs per token (pianomuse.flops: products only, causal attention counted as its unmasked half) and MFU, the
achieved FLOP/s over the machine's fp32 matrix-multiply peak measured in the same run (the best of large torch.mm
products timed before, between and after the rows, at the same thread count). The baseline is
torch.nn.TransformerEncoder with pre-norm layers and a causal mask (4 heads, ff 4C), learned positions, the same
vocabulary and head. `--profile` adds a torch.profiler table of one RWKV-7 step, its self time grouped into the
WKV-7 op, the matrix products, the LoRA branches, token shift, norms, the loss and the elementwise glue, and the
top ops.

    python bench/bench_model.py                                   # demo and default presets, ctx 1024 2048 4096
    python bench/bench_model.py --presets demo --ctx 2048 --profile --threads 1 2
    python bench/bench_model.py --presets default --ctx 2048 --device cuda
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from pianomuse.config import load_config
from pianomuse.devices import synchronize
from pianomuse.flops import matmul_peak, rwkv7_train_flops_per_token, transformer_train_flops_per_token
from pianomuse.model import RWKV7, RWKV7Config

REPO = Path(__file__).resolve().parents[1]
N_HEAD = 4  # the Transformer's heads


class CausalTransformer(nn.Module):
    """GPT-style baseline: token + learned position embeddings, pre-norm encoder layers under a causal mask, head."""

    def __init__(self, vocab_size: int, n_layer: int, d_model: int, n_head: int, d_ff: int, max_len: int):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(max_len, d_model)
        layer = nn.TransformerEncoderLayer(
            d_model, n_head, d_ff, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.layers = nn.TransformerEncoder(layer, n_layer, enable_nested_tensor=False)
        self.ln_out = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.size(1)
        x = self.emb(idx) + self.pos(torch.arange(T, device=idx.device))
        mask = nn.Transformer.generate_square_subsequent_mask(T, device=idx.device)
        return self.head(self.ln_out(self.layers(x, mask=mask, is_causal=True)))


def train_step(model: nn.Module, idx: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    logits = model(idx)
    # The targets do not matter for speed: the inputs themselves will do.
    F.cross_entropy(logits.view(-1, logits.size(-1)), idx.view(-1)).backward()


def tokens_per_second(model: nn.Module, idx: torch.Tensor, seconds: float) -> float:
    """Training steps repeated for at least `seconds` (and at least once); the model must be warmed up."""
    synchronize(idx.device)
    steps, start = 0, time.perf_counter()
    while steps < 1 or time.perf_counter() - start < seconds:
        train_step(model, idx)
        steps += 1
    synchronize(idx.device)
    return idx.numel() * steps / (time.perf_counter() - start)


def compare(models: list[nn.Module], idx: torch.Tensor, seconds: float, rounds: int) -> list[float]:
    """Best tokens/s of each model over `rounds` alternating rounds: on a shared machine, load that comes and goes
    hits both models alike, and the best round is the least disturbed one."""
    for model in models:  # warm-up: allocator caches, lazy kernel loading
        model.train()
        train_step(model, idx)
    best = [0.0] * len(models)
    for _ in range(rounds):
        for i, model in enumerate(models):
            best[i] = max(best[i], tokens_per_second(model, idx, seconds / rounds))
    return best


def wkv7_op_in_use(model: RWKV7, device: torch.device) -> str:
    """Which WKV-7 implementation the model runs: pianomuse.kernels.wkv7 warns when it falls back to pure PyTorch."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            model(torch.zeros(1, 4, dtype=torch.long, device=device))
    fell_back = any("could not be built" in str(w.message) for w in caught)
    return "pure PyTorch (compiled kernel unavailable)" if fell_back else f"compiled {device.type} kernel"


def vocab_size(config: dict) -> int:
    from pianomuse.tokenizer import build_tokenizer

    return len(build_tokenizer(**config["tokenizer"]).vocab)


def preset_shapes(preset: str) -> tuple[int, int, int, int]:
    """(n_layer, n_embd, head_size, batch_tokens) of a preset: its file in presets/ over config.yaml's defaults."""
    resolved = load_config(REPO / "config.yaml", {"preset": preset})
    model, train = resolved["model"], resolved["train"]
    return model["n_layer"], model["n_embd"], model["head_size"], train["batch_tokens"]


def op_category(name: str, shapes: list, lora_ranks: set[int], n_embd: int) -> str:
    """The part of the RWKV-7 step an op's self time belongs to (LoRA products have a LoRA rank among their dims)."""
    if name.startswith("_WKV7Function"):
        return "WKV-7 op backward" if name.endswith("Backward") else "WKV-7 op forward"
    if name in ("aten::mm", "aten::addmm", "aten::bmm"):
        dims = {d for shape in shapes for d in shape}
        return "LoRA products" if dims & lora_ranks and n_embd not in lora_ranks else "matrix products"
    if name.startswith("_TokenMixFunction"):
        return "token shift (fused mixes)"
    if "norm" in name:
        return "norms (layer, group, L2)"
    if "softmax" in name or "nll_loss" in name:
        return "loss (log-softmax, NLL)"
    if name.startswith("aten::"):
        return "elementwise glue and copies"
    return "autograd and Python overhead"


def profile_step(model: RWKV7, idx: torch.Tensor, rows: int) -> None:
    """One profiled training step (after a warm-up one): self time by part of the model, then the top ops."""
    from torch.profiler import ProfilerActivity, profile

    train_step(model, idx)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        train_step(model, idx)
    c = model.config
    lora_ranks = {c.decay_lora, c.iclr_lora, c.value_lora, c.gate_lora}
    by_part: dict[str, float] = defaultdict(float)
    for event in prof.key_averages(group_by_input_shape=True):
        by_part[op_category(event.key, event.input_shapes or [], lora_ranks, c.n_embd)] += event.self_cpu_time_total
    total = sum(by_part.values())
    print(
        f"\nProfile of one RWKV-7 training step, L{c.n_layer} D{c.n_embd}, batch {list(idx.shape)}: "
        f"{total / 1e6:.2f} s of self CPU time"
    )
    print(f"{'part':<32}{'seconds':>9}{'share':>8}")
    for part, micros in sorted(by_part.items(), key=lambda item: -item[1]):
        print(f"{part:<32}{micros / 1e6:>9.3f}{micros / total:>8.1%}")
    print()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def measure_rows(args, vocab: int, device: torch.device, peaks: list[float]) -> list[dict]:
    """Tokens/s of both models for every preset and context; a matmul peak is measured before each row too."""
    rows = []
    for preset in args.presets:
        n_layer, n_embd, head_size, batch_tokens = preset_shapes(preset)
        torch.manual_seed(0)
        rwkv = RWKV7(RWKV7Config(vocab_size=vocab, n_layer=n_layer, n_embd=n_embd, head_size=head_size)).to(device)
        transformer = CausalTransformer(vocab, n_layer, n_embd, N_HEAD, 4 * n_embd, max(args.ctx)).to(device)
        print(
            f"preset {preset}: L{n_layer} D{n_embd}, batch_tokens {batch_tokens}; RWKV-7 head {head_size}, "
            f"WKV-7 op: {wkv7_op_in_use(rwkv, device)}; Transformer {N_HEAD} heads",
            flush=True,
        )
        for ctx in args.ctx:
            peaks.append(matmul_peak(device, args.peak_size, repeats=3))
            idx = torch.randint(0, vocab, (max(1, batch_tokens // ctx), ctx), device=device)
            ours, theirs = compare([rwkv, transformer], idx, args.seconds, args.rounds)
            rows.append(
                {
                    "preset": preset,
                    "shape": f"L{n_layer} D{n_embd}",
                    "ctx": ctx,
                    "batch": idx.size(0),
                    "rwkv": ours,
                    "transformer": theirs,
                    "rwkv_flops": rwkv7_train_flops_per_token(rwkv.config),
                    "transformer_flops": transformer_train_flops_per_token(n_layer, n_embd, 4 * n_embd, vocab, ctx),
                }
            )
            print(f"  ctx {ctx}: RWKV-7 {ours:.0f} tok/s, Transformer {theirs:.0f} tok/s", flush=True)
        if args.profile:
            ctx = args.ctx[0]
            profile_step(
                rwkv, torch.randint(0, vocab, (max(1, batch_tokens // ctx), ctx), device=device), args.profile_rows
            )
    return rows


def print_table(rows: list[dict], peak: float) -> None:
    print(
        "| preset | ctx x batch | RWKV-7 tok/s | RWKV-7 MFU | Transformer tok/s | Transformer MFU "
        "| RWKV-7 / Transformer | MFLOP/token RWKV-7, Transformer |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['preset']} ({r['shape']}) | {r['ctx']} x {r['batch']} | {r['rwkv']:.0f} "
            f"| {r['rwkv'] * r['rwkv_flops'] / peak:.1%} | {r['transformer']:.0f} "
            f"| {r['transformer'] * r['transformer_flops'] / peak:.1%} | {r['rwkv'] / r['transformer']:.2f} "
            f"| {r['rwkv_flops'] / 1e6:.1f}, {r['transformer_flops'] / 1e6:.1f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["demo", "default"], help="presets (files in presets/)")
    parser.add_argument("--ctx", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[torch.get_num_threads()],
        help="CPU thread counts to measure, each a table (default: torch's choice)",
    )
    parser.add_argument("--vocab", type=int, default=None, help="default: the configured REMI tokenizer's")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds", type=float, default=6.0, help="timed seconds per model and measurement")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best one counts")
    parser.add_argument("--peak-size", type=int, default=2048, help="the matmul-peak product's size")
    parser.add_argument("--profile", action="store_true", help="profile one RWKV-7 step per preset (first ctx)")
    parser.add_argument("--profile-rows", type=int, default=25)
    args = parser.parse_args()

    device = torch.device(args.device)
    vocab = args.vocab or vocab_size(load_config(REPO / "config.yaml"))
    for threads in args.threads:
        torch.set_num_threads(threads)
        load = " ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"\n== vocab {vocab}, {device}, {threads} threads, torch {torch.__version__}; load average {load}")
        # MFU is over the best matmul peak seen in the run: on a shared machine the peak is measured low whenever
        # other jobs run during it, and the best measurement is the closest to the machine's real one.
        peaks = [matmul_peak(device, args.peak_size, repeats=5)]
        rows = measure_rows(args, vocab, device, peaks)
        peaks.append(matmul_peak(device, args.peak_size, repeats=5))
        load = " ".join(f"{x:.1f}" for x in os.getloadavg())
        print(
            f"\nfp32 matmul peak ({args.peak_size}^3 torch.mm, {threads} threads): best {max(peaks) / 1e9:.1f} "
            f"GFLOP/s, worst {min(peaks) / 1e9:.1f} of {len(peaks)} measurements; load average after: {load}"
        )
        print_table(rows, max(peaks))


if __name__ == "__main__":
    main()
