"""Throughput of RWKV-7 (small preset, L6 D256) against a same-size causal GPT-style Transformer.

Tokens per second of a training step (forward + backward of the full-vocabulary cross-entropy at every position)
and of a no-grad forward (prompt prefill), at each context length. The baseline is torch.nn.TransformerEncoder with
pre-norm layers and a causal mask (d_model 256, 4 heads, ff 1024), learned positions, the same vocabulary and head.
The WKV-7 op is whatever pianomuse.kernels.wkv7 runs here: the compiled kernel or, if that cannot be built, the
pure-PyTorch twin (the script says which).

    python bench/bench_model.py                               # CPU, ctx 1024 and 4096, batch 1
    python bench/bench_model.py --ctx 2048 --batch 2 --device cuda
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml

from pianomuse.model import RWKV7, RWKV7Config

REPO = Path(__file__).resolve().parents[1]


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


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def tokens_per_second(model: nn.Module, idx: torch.Tensor, train: bool, seconds: float) -> float:
    """Steps repeated for at least `seconds` (and at least once); the model must be warmed up."""
    model.train(train)
    synchronize(idx.device)
    steps, start = 0, time.perf_counter()
    while steps < 1 or time.perf_counter() - start < seconds:
        if train:
            model.zero_grad(set_to_none=True)
            logits = model(idx)
            # The targets do not matter for speed: the inputs themselves will do.
            F.cross_entropy(logits.view(-1, logits.size(-1)), idx.view(-1)).backward()
        else:
            with torch.no_grad():
                model(idx)
        steps += 1
    synchronize(idx.device)
    return idx.numel() * steps / (time.perf_counter() - start)


def compare(models: list[nn.Module], idx: torch.Tensor, train: bool, seconds: float, rounds: int) -> list[float]:
    """Best tokens/s of each model over `rounds` alternating rounds: on a shared machine, load that comes and goes
    hits both models alike, and the best round is the least disturbed one."""
    for model in models:  # warm-up: allocator caches, lazy kernel loading
        tokens_per_second(model, idx, train, 0.0)
    best = [0.0] * len(models)
    for _ in range(rounds):
        for i, model in enumerate(models):
            best[i] = max(best[i], tokens_per_second(model, idx, train, seconds / rounds))
    return best


def wkv7_op_in_use(model: RWKV7, device: torch.device) -> str:
    """Which WKV-7 implementation the model runs: pianomuse.kernels.wkv7 warns when it falls back to the twin."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            model(torch.zeros(1, 4, dtype=torch.long, device=device))
    fell_back = any("twin" in str(w.message) for w in caught)
    return "pure-PyTorch twin (compiled kernel unavailable)" if fell_back else f"compiled {device.type} kernel"


def vocab_size() -> int:
    from pianomuse.tokenizer import build_tokenizer

    return len(build_tokenizer(**yaml.safe_load((REPO / "config.yaml").read_text())["tokenizer"]).vocab)


def millions(model: nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-layer", type=int, default=6)
    parser.add_argument("--n-embd", type=int, default=256)
    parser.add_argument("--n-head", type=int, default=4, help="the Transformer's heads (RWKV-7 uses head size 64)")
    parser.add_argument("--ctx", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--vocab", type=int, default=None, help="default: the configured REMI tokenizer's")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds", type=float, default=6.0, help="timed seconds per model and measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best one counts")
    args = parser.parse_args()

    device = torch.device(args.device)
    vocab = args.vocab or vocab_size()
    torch.manual_seed(0)
    rwkv = RWKV7(RWKV7Config(vocab_size=vocab, n_layer=args.n_layer, n_embd=args.n_embd, head_size=64)).to(device)
    transformer = CausalTransformer(vocab, args.n_layer, args.n_embd, args.n_head, 4 * args.n_embd, max(args.ctx))
    transformer.to(device)
    positions = transformer.pos.weight.numel() / 1e6

    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    print(f"vocab {vocab}, batch {args.batch}, {device}{threads}, torch {torch.__version__}")
    print(f"RWKV-7:      L{args.n_layer} D{args.n_embd} head 64, {millions(rwkv):.2f}M parameters, "
          f"WKV-7 op: {wkv7_op_in_use(rwkv, device)}")
    print(f"Transformer: L{args.n_layer} D{args.n_embd} {args.n_head} heads ff {4 * args.n_embd}, "
          f"{millions(transformer) - positions:.2f}M parameters + {positions:.2f}M positions")
    print()
    print(f"{'ctx':>6}  {'step':<14}{'RWKV-7 tok/s':>14}{'Transformer tok/s':>19}{'RWKV-7 / Transformer':>22}")
    for ctx in args.ctx:
        idx = torch.randint(0, vocab, (args.batch, ctx), device=device)
        for train, name in [(True, "fwd+bwd"), (False, "fwd (no grad)")]:
            ours, theirs = compare([rwkv, transformer], idx, train, args.seconds, args.rounds)
            print(f"{ctx:>6}  {name:<14}{ours:>14.0f}{theirs:>19.0f}{ours / theirs:>22.2f}", flush=True)


if __name__ == "__main__":
    main()
