"""Tokenize speed: the Snakemake tokenize stage vs a plain single-process symusic + miditok loop.

Both tokenize the same MAESTRO files in the same run. The pipeline is timed end to end through Snakemake
(start-up, scheduling, Parquet writing and the rejects tables included) at each core count asked for.

    .venv/bin/python bench/bench_tokenize.py                      # all 1276 files, -c1 and -c2
    .venv/bin/python bench/bench_tokenize.py --pieces-per-split 10
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import symusic
import yaml

from pianomuse.config import data_folders, load_config
from pianomuse.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parents[1]


def run_snakemake(workdir: Path, cores: int, targets: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            *targets,
            "--configfile",
            "overrides.yaml",
            "--cores",
            str(cores),
            "--quiet",
            "all",
        ],
        cwd=workdir,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def plain_loop(tokenizer_path: Path, midi_paths: list[str]) -> float:
    tokenizer = load_tokenizer(tokenizer_path)
    start = time.perf_counter()
    for path in midi_paths:
        tokenizer.encode(symusic.Score(path))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--maestro-dir", type=Path, default=REPO.parent / "shared/data/maestro-v3.0.0")
    parser.add_argument("--pieces-per-split", type=int, default=None, help="subset size per split; default: all")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--cores", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for name in ["Snakefile", "config.yaml", "presets", "workflow", "envs"]:
            source = REPO / name
            (shutil.copytree if source.is_dir() else shutil.copy)(source, workdir / name)
        overrides = {
            "preset": "default",
            "maestro_dir": str(args.maestro_dir.resolve()),
            "maestro": {"pieces_per_split": args.pieces_per_split},
            "tokenize": {"shards": args.shards},
        }
        (workdir / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        data = data_folders(load_config(workdir / "config.yaml", overrides))
        tokenizer = f"{data['tokenizer']}/tokenizer.json"
        run_snakemake(workdir, 1, [f"{data['maestro']}/manifest.parquet", tokenizer])
        manifest = pd.read_parquet(workdir / data["maestro"] / "manifest.parquet")
        shard_targets = [
            f"{data['tokens']}/{split}/shard-{k}.parquet"
            for split in ["train", "validation", "test"]
            for k in range(args.shards)
        ]

        # Read every file once first, so that no run is charged for a cold page cache.
        for path in manifest["midi_path"]:
            Path(path).read_bytes()
        rows = []
        loop_seconds = plain_loop(workdir / tokenizer, manifest["midi_path"].tolist())
        for cores in args.cores:
            shutil.rmtree(workdir / data["tokens"], ignore_errors=True)
            seconds = run_snakemake(workdir, cores, shard_targets)
            rows.append((f"pipeline -c{cores}", cores, seconds))
        shards = pd.concat(pd.read_parquet(workdir / target) for target in shard_targets)
        notes = int(shards["n_notes"].sum())
        rows.insert(0, ("plain loop (1 process)", 1, loop_seconds))

    loop_rate = notes / loop_seconds
    print(f"# tokenize: {len(manifest)} files, {len(shards)} tokenized, {notes:,} notes")
    print(
        f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}"
    )
    print("| run | cores | seconds | notes/s | notes/s per core | per core vs loop |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, cores, seconds in rows:
        rate = notes / seconds
        print(
            f"| {name} | {cores} | {seconds:.1f} | {rate:,.0f} | {rate / cores:,.0f} "
            f"| {rate / cores / loop_rate:.2f}x |"
        )


if __name__ == "__main__":
    main()
