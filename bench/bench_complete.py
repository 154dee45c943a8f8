"""Completion speed: batched forked-state decoding against the `rwkv` package, and per-token latency against GPT-2.

1. K samples of M bars after a P-bar prompt. Ours: `Completer.complete` (prefill once in parallel mode, fork the
   state K times, decode the K samples as one batch under the REMI grammar mask). Theirs: the `rwkv` PyPI package
   (RWKV_V7_ON=1, strategy 'cpu fp32') on the same checkpoint, K sequential generations: `forward(prompt, None)`,
   then one token at a time with plain temperature / top-p sampling (no grammar), each stopped after the mean
   number of tokens our samples produced, so both sides generate the same number of tokens. Each side runs
   --repeats times and its fastest run counts (the machines these run on are shared and noisy).
2. Per-token decode latency (batch 1) after prompts of 256, 4096 and 16384 tokens: the RWKV-7 step the Completer
   uses (compiled on the CPU) against a same-size GPT-2 (transformers, random init, KV cache). Prefill is not timed,
   only the decode steps after it.

The checkpoint is a random-init small model (L6 D256, head 64, vocabulary of config.yaml's tokenizer) unless
--checkpoint names a trained one: speed does not depend on the weights, only on the shapes.

    python bench/bench_complete.py
    python bench/bench_complete.py --checkpoint results/checkpoints/default/best.pth --threads 2
"""

from __future__ import annotations

import os

# The rwkv package reads these when imported: v7 support on, no TorchScript / CUDA kernel (plain CPU fp32).
os.environ["RWKV_V7_ON"] = "1"
os.environ["RWKV_JIT_ON"] = "0"
os.environ["RWKV_CUDA_ON"] = "0"

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from symusic import Score

from pianomuse.complete import Completer, Sampling  # noqa: E402
from pianomuse.config import load_config  # noqa: E402
from pianomuse.decode_step import decode_step_for  # noqa: E402
from pianomuse.model import RWKV7, RWKV7Config, load_rwkv_pth, save_rwkv_pth  # noqa: E402
from pianomuse.probe import probe_figures  # noqa: E402
from pianomuse.tokenizer import build_tokenizer, load_tokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIG = load_config(REPO / "config.yaml")


def prompt_score(maestro: Path, min_bars: int) -> tuple[Score, str]:
    """The first MAESTRO piece (sorted paths, so the same one every run) with enough notes, else the probe's first
    figure (a C major arpeggio) repeated."""
    if maestro.is_dir():
        for path in sorted(maestro.rglob("*.mid*")):
            score = Score(str(path))
            if score.tracks and len(score.tracks[0].notes) > 200:
                return score, f"MAESTRO {path.relative_to(maestro)}"
    return probe_figures()[0].score(min_bars + 8), f"the probe's first figure ({maestro} not found)"


def sample_top_p(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """Plain nucleus sampling of one token from [V] logits (the baseline's sampler: no grammar mask)."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    sorted_probs, order = torch.sort(probs, descending=True)
    cumulative = torch.cumsum(sorted_probs, dim=-1)
    sorted_probs[cumulative - sorted_probs > top_p] = 0  # keep the smallest prefix whose mass reaches top_p
    choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)
    return int(order[choice])


def bench_forked_vs_rwkv_package(args, checkpoint: Path, tokenizer) -> None:
    completer = Completer(load_rwkv_pth(checkpoint), tokenizer)
    score, source = prompt_score(args.maestro_dir, args.prompt_bars)
    prompt = completer.prompt_ids(score, args.prompt_bars)
    print(
        f"\n[1] K={args.samples} samples x {args.bars} bars after a {args.prompt_bars}-bar prompt "
        f"({len(prompt)} tokens, {source})"
    )

    completer.generate(prompt, Sampling(bars=1), progress=False)  # warm-up: first-call allocations out of the timing
    sampling = Sampling(args.bars, args.samples, args.temperature, args.top_p, seed=0)
    ours_times = []
    for _ in range(args.repeats):  # the same seed: the same samples every time
        start = time.perf_counter()
        completion = completer.complete_ids(prompt, sampling, progress=False)
        ours_times.append(time.perf_counter() - start)
    lengths = [len(c) for c in completion.continuation_ids]
    tokens_each = round(float(np.mean(lengths)))
    ours_tokens = sum(lengths)

    from rwkv.model import RWKV  # imported here: after the environment variables above

    theirs_model = RWKV(model=str(checkpoint.with_suffix("")), strategy="cpu fp32")
    theirs_model.forward(prompt[:8], None)  # warm-up
    theirs_times = []
    for _ in range(args.repeats):
        generator = torch.Generator().manual_seed(0)
        start = time.perf_counter()
        for _ in range(args.samples):
            # Their normal usage: the prompt through forward() once per sample, then token by token.
            logits, state = theirs_model.forward(prompt + [completer.grammar.bar_id], None)
            for _ in range(tokens_each - 1):  # the Bar token already counts as the first generated token, as in ours
                token = sample_top_p(logits, args.temperature, args.top_p, generator)
                logits, state = theirs_model.forward([token], state)
        theirs_times.append(time.perf_counter() - start)
    ours_s, theirs_s = min(ours_times), min(theirs_times)
    theirs_tokens = args.samples * tokens_each

    print(
        f"tokens per sample: ours {min(lengths)}..{max(lengths)} (mean {np.mean(lengths):.1f}), "
        f"theirs {tokens_each} each"
    )
    print(f"{'':44}{'seconds':>10}{'tokens':>9}{'tokens/s':>11}")
    print(
        f"{'pianomuse Completer (1 prefill, batched K)':44}{ours_s:>10.2f}{ours_tokens:>9}{ours_tokens / ours_s:>11.1f}"
    )
    print(
        f"{'rwkv package, K sequential generations':44}{theirs_s:>10.2f}{theirs_tokens:>9}"
        f"{theirs_tokens / theirs_s:>11.1f}"
    )
    print(
        f"speed-up (theirs s / ours s, best of {args.repeats} each, token counts {theirs_tokens}/{ours_tokens}): "
        f"{theirs_s / ours_s:.2f}x (goal >= 5x)"
    )


def fastest_ms_per_step(decoders: list, steps: int, rounds: int = 8) -> list[float]:
    """ms per call of each decoder (a function decoding one token), `steps` calls each in `rounds` rounds that take
    every decoder in turn; each decoder's fastest round counts. Taking turns spreads the machine's slow spells over
    all of them instead of one prompt length. A decoder goes on from where its last round stopped."""
    best, per_round = [float("inf")] * len(decoders), max(1, steps // rounds)
    for _ in range(rounds):
        for i, decode_one in enumerate(decoders):
            start = time.perf_counter()
            for _ in range(per_round):
                decode_one()
            best[i] = min(best[i], (time.perf_counter() - start) / per_round)
    return [seconds * 1e3 for seconds in best]


@torch.inference_mode()
def rwkv_decoder(model: RWKV7, prompt: torch.Tensor, chunk: int):
    """A function decoding one more token (greedy) after the prompt, with the step the Completer decodes with."""
    # Prefill in chunks carrying the state: same result as one forward, bounded activation memory.
    state = None
    for begin in range(0, prompt.shape[1], chunk):
        logits, state = model(prompt[:, begin : begin + chunk], state, return_state=True)
    token = logits[:, -1].argmax(-1)
    step = decode_step_for(model)

    @torch.inference_mode()
    def decode_one():
        nonlocal logits, state, token
        logits, state = step(token, state)
        token = logits.argmax(-1)

    return decode_one


@torch.inference_mode()
def gpt2_decoder(model, prompt: torch.Tensor, chunk: int):
    """The same for GPT-2: chunked prefill into the KV cache; each token then attends over the whole cache."""
    past = None
    for begin in range(0, prompt.shape[1], chunk):
        out = model(prompt[:, begin : begin + chunk], past_key_values=past, use_cache=True)
        past = out.past_key_values
    token = out.logits[:, -1].argmax(-1, keepdim=True)

    @torch.inference_mode()
    def decode_one():
        nonlocal out, past, token
        out = model(token, past_key_values=past, use_cache=True)
        past = out.past_key_values
        token = out.logits[:, -1].argmax(-1, keepdim=True)

    return decode_one


def bench_latency_vs_prompt_length(args, checkpoint: Path, vocab_size: int) -> None:
    lengths = args.prompt_lengths
    print(
        f"\n[2] decode latency, batch 1, {args.steps} steps after each prompt in 8 rounds taking the prompt lengths "
        "in turn, the fastest round's ms/token (prefill not timed)"
    )
    rwkv = load_rwkv_pth(checkpoint).eval()
    try:
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(0)
        gpt2 = GPT2LMHeadModel(
            GPT2Config(
                n_layer=6,
                n_embd=256,
                n_head=4,
                vocab_size=vocab_size,
                n_positions=max(lengths) + args.steps,
                bos_token_id=None,
                eos_token_id=None,
            )
        ).eval()
    except ImportError:
        gpt2 = None
        print("GPT-2: skipped: pip install transformers")

    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, vocab_size, (1, length), generator=generator) for length in lengths]  # any ids
    rwkv_ms = fastest_ms_per_step([rwkv_decoder(rwkv, prompt, args.chunk) for prompt in prompts], args.steps)
    if gpt2 is not None:
        gpt2_ms = fastest_ms_per_step([gpt2_decoder(gpt2, prompt, args.chunk) for prompt in prompts], args.steps)
    else:
        gpt2_ms = [float("nan")] * len(lengths)

    print(
        f"{'prompt tokens':>14}{'RWKV-7 ms/tok':>15}{'vs first':>10}{'GPT-2 ms/tok':>14}{'vs first':>10}"
        f"{'GPT-2/RWKV':>12}"
    )
    for length, ours, theirs in zip(lengths, rwkv_ms, gpt2_ms):
        print(
            f"{length:>14}{ours:>15.2f}{ours / rwkv_ms[0]:>9.2f}x{theirs:>14.2f}"
            f"{theirs / gpt2_ms[0]:>9.2f}x{theirs / ours:>11.2f}x"
        )
    print(f"RWKV-7 {lengths[0]} -> {lengths[-1]}: {rwkv_ms[-1] / rwkv_ms[0]:.2f}x (goal <= 1.1x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="a trained {name}.pth (default: random-init L6 D256)")
    parser.add_argument("--tokenizer", type=Path, help="the checkpoint's tokenizer.json (default: config.yaml's)")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--bars", type=int, default=4)
    parser.add_argument("--prompt-bars", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=Sampling.temperature)
    parser.add_argument("--top-p", type=float, default=Sampling.top_p)
    parser.add_argument(
        "--maestro-dir",
        type=Path,
        default=REPO / CONFIG["maestro_dir"],
        help="MAESTRO v3.0.0, for the prompt of [1] (default: config.yaml's maestro_dir, %(default)s)",
    )
    parser.add_argument("--prompt-lengths", type=int, nargs="+", default=[256, 4096, 16384])
    parser.add_argument("--steps", type=int, default=256, help="decode steps timed per prompt length")
    parser.add_argument("--chunk", type=int, default=2048, help="prefill chunk (memory bound, not timed)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side in [1]; the fastest counts")
    parser.add_argument("--skip", choices=["forked", "latency"], help="leave one of the two benchmarks out")
    args = parser.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    print(
        f"machine: {os.cpu_count()} CPUs (torch threads {torch.get_num_threads()}), torch {torch.__version__}, "
        f"python {sys.version.split()[0]}"
    )

    with tempfile.TemporaryDirectory() as tmp:
        if args.tokenizer:
            tokenizer = load_tokenizer(args.tokenizer)
        else:
            tokenizer = build_tokenizer(**CONFIG["tokenizer"])
        checkpoint = args.checkpoint
        if checkpoint is None:
            checkpoint = Path(tmp) / "random_l6_d256.pth"
            save_rwkv_pth(
                RWKV7(RWKV7Config(vocab_size=len(tokenizer), n_layer=6, n_embd=256, head_size=64)), checkpoint
            )
        print(f"checkpoint: {args.checkpoint or 'random init L6 D256 head 64'}, vocabulary {len(tokenizer)}")
        if args.skip != "forked":
            bench_forked_vs_rwkv_package(args, checkpoint, tokenizer)
        if args.skip != "latency":
            bench_latency_vs_prompt_length(args, checkpoint, len(tokenizer))


if __name__ == "__main__":
    main()
