"""Benchmark the WKV-7 recurrence: forward + backward of the compiled kernels against the chunked form and the twin.

CPU: the C++ kernel vs the chunked matrix form (`wkv7_chunked`, one column per --chunks length) vs the twin, fp32.
GPU (only when CUDA is available): our CUDA kernel vs fla's `chunk_rwkv7` (if flash-linear-attention is installed)
vs the twin, bf16. Inputs have RWKV-7's decay range (-w < MAX_LOG_DECAY). Every timing is the best of --repeat runs
after one untimed warm-up of the compiled kernels and the chunked form; the twin is never warmed up on the full
shape (it is slow), so each of its --repeat runs is a full, honest run.

    python bench/bench_wkv7.py                        # B=8 H=8 N=64, T=1024 and T=4096
    python bench/bench_wkv7.py --shapes 8x8x64x1024 --repeat 3
    # the training shapes (demo: 4096 tokens, H=2; default: 16384 tokens, H=4), chunked form vs kernel, 1 thread:
    OMP_NUM_THREADS=1 python bench/bench_wkv7.py --repeat 3 --twin-max-steps 0 \
        --shapes 4x2x64x1024 2x2x64x2048 1x2x64x4096 16x4x64x1024 8x4x64x2048 4x4x64x4096
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from pianomuse.devices import synchronize
from pianomuse.kernels.build import load_kernel
from pianomuse.kernels.checks import random_wkv7_inputs
from pianomuse.kernels.wkv7 import CHUNK, MAX_LOG_DECAY, wkv7_chunked, wkv7_compiled, wkv7_reference

INPUT_NAMES = ("r", "w", "k", "v", "a", "b")


def parse_shape(text: str) -> tuple[int, int, int, int]:
    """'BxHxNxT' -> (B, H, N, T)."""
    batch, heads, size, steps = (int(part) for part in text.lower().split("x"))
    return batch, heads, size, steps


def time_forward_backward(fn, inputs: dict, device: str, repeat: int) -> tuple[float, float]:
    """Best (forward seconds, forward + backward seconds) over `repeat` runs of fn on fresh leaf tensors."""
    best_forward = best_total = float("inf")
    for _ in range(repeat):
        leaves = {name: x.detach().clone().requires_grad_(True) for name, x in inputs.items()}
        synchronize(device)
        start = time.perf_counter()
        y, state = fn(**{name: leaves[name] for name in INPUT_NAMES}, state=leaves["state"])
        synchronize(device)
        forward = time.perf_counter() - start
        (y.float().sum() + state.float().sum()).backward()
        synchronize(device)
        best_forward, best_total = min(best_forward, forward), min(best_total, time.perf_counter() - start)
    return best_forward, best_total


def fla_function():
    """fla's chunk_rwkv7 taking our argument names, or None when flash-linear-attention is not installed."""
    try:
        from fla.ops.rwkv7 import chunk_rwkv7
    except ImportError:
        return None

    def run(r, w, k, v, a, b, state):
        # fla keeps its state as [B, H, K, V]; ours is [B, H, V, K].
        initial_state = state.transpose(-1, -2).contiguous()
        y, final = chunk_rwkv7(r=r, w=w, k=k, v=v, a=a, b=b, scale=1.0, initial_state=initial_state,
                               output_final_state=True)  # fmt: skip
        return y, final.transpose(-1, -2)

    return run


def print_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(column), *(len(row[i]) for row in rows)) for i, column in enumerate(columns)]
    print(f"\n{title}")
    print("  ".join(column.rjust(width) for column, width in zip(columns, widths)))
    for row in rows:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths)))


def implementations_for(device: str, chunks: list[int]) -> dict:
    """name -> function with wkv7's signature: the compiled kernel first, the twin last."""
    kernel = load_kernel(device)
    implementations = {"kernel": lambda **kw: wkv7_compiled(kernel, **kw)}
    if device == "cpu":
        for chunk in chunks:
            implementations[f"chunked{chunk}"] = lambda chunk=chunk, **kw: wkv7_chunked(**kw, chunk=chunk)
    if device == "cuda" and (fla := fla_function()) is not None:
        implementations["fla"] = fla
    implementations["twin"] = wkv7_reference
    return implementations


def bench_device(device: str, dtype: torch.dtype, shapes, repeat: int, twin_max_steps: int | None, chunks) -> None:
    implementations = implementations_for(device, chunks)
    others = [name for name in implementations if name != "kernel"]
    warmup = random_wkv7_inputs(1, 40, 1, shapes[0][2], device=device, dtype=dtype, max_log_decay=MAX_LOG_DECAY)
    for name, fn in implementations.items():
        if name != "twin":
            time_forward_backward(fn, warmup, device, 1)

    columns = ["B", "H", "N", "T"]
    for name in implementations:
        columns += [f"{name} fwd s", f"{name} fwd+bwd s"]
    columns += [f"{name}/kernel {part}" for name in others for part in ("fwd", "fwd+bwd")]
    rows = []
    for batch, heads, size, steps in shapes:
        inputs = random_wkv7_inputs(batch, steps, heads, size, device=device, dtype=dtype, max_log_decay=MAX_LOG_DECAY)
        timings = {}
        for name, fn in implementations.items():
            if name == "twin" and twin_max_steps is not None and steps > twin_max_steps:
                continue
            if name != "twin":
                time_forward_backward(fn, inputs, device, 1)  # warm-up on this shape (allocator, caches)
            timings[name] = time_forward_backward(fn, inputs, device, repeat)
            print(f"  {device} {name} B={batch} H={heads} N={size} T={steps}: fwd {timings[name][0]:.3f} s, "
                  f"fwd+bwd {timings[name][1]:.3f} s", flush=True)  # fmt: skip
        row = [str(batch), str(heads), str(size), str(steps)]
        for name in implementations:
            row += [f"{seconds:.3f}" for seconds in timings[name]] if name in timings else ["-", "-"]
        for name in others:
            row += [f"{timings[name][i] / timings['kernel'][i]:.2f}x" if name in timings else "-" for i in (0, 1)]
        rows.append(row)
    print_table(f"WKV-7 {device} {str(dtype).removeprefix('torch.')}, best of {repeat}", columns, rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", type=parse_shape, default=[(8, 8, 64, 1024), (8, 8, 64, 4096)],
                        help="shapes as BxHxNxT (default: 8x8x64x1024 8x8x64x4096)")  # fmt: skip
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per implementation; the best counts")
    parser.add_argument("--twin-max-steps", type=int, default=None,
                        help="skip the twin on shapes with more steps (it keeps every state for autograd: "
                        "about 4 MB per step at B=8 H=8 N=64)")  # fmt: skip
    parser.add_argument("--chunks", nargs="+", type=int, default=[CHUNK],
                        help=f"chunk lengths of the chunked form on the CPU (default: {CHUNK})")  # fmt: skip
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU section")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
          f"{torch.get_num_threads()} torch threads")  # fmt: skip
    if not args.no_cpu:
        bench_device("cpu", torch.float32, args.shapes, args.repeat, args.twin_max_steps, args.chunks)
    if torch.cuda.is_available():
        print(f"\nGPU: {torch.cuda.get_device_name()}")
        bench_device("cuda", torch.bfloat16, args.shapes, args.repeat, args.twin_max_steps, args.chunks)
    else:
        print("\nno CUDA device: GPU section skipped")


if __name__ == "__main__":
    main()
