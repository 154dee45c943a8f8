"""Helpers for tests that run the Snakemake workflow or need a MAESTRO-shaped folder."""

from __future__ import annotations

import csv
import hashlib
import re
import shutil
import subprocess
import sys
import threading
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from midi_factory import make_piano_score, write_midi

from pianomuse.config import data_folders, deep_merge, load_config

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ["Snakefile", "config.yaml", "presets", "profiles", "workflow", "envs"]
MAESTRO_CSV_HEADER = [
    "canonical_composer",
    "canonical_title",
    "split",
    "year",
    "midi_filename",
    "audio_filename",
    "duration",
]


def copy_workflow(dest: Path, preset: str | None = "default") -> Path:
    """The workflow files in `dest`, so that a test's results/ and config edits stay out of the checkout. The
    copy's config.yaml selects `preset` (default: the `default` preset, whichever one the checkout ships with;
    None keeps the shipped choice)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, dest / name)
    config = dest / "config.yaml"
    if preset is not None:
        config.write_text(re.sub(r"^preset: .*$", f"preset: {preset}", config.read_text(), count=1, flags=re.M))
    return dest


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run Snakemake on 2 cores in `workdir`; on failure (with check) the test fails showing the rules' logs."""
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", *args], cwd=workdir, capture_output=True, text=True
    )
    if check and result.returncode != 0:
        logs = "\n".join(f"== {p}\n{p.read_text()[-3000:]}" for p in sorted((workdir / "results/logs").rglob("*.log")))
        pytest.fail(f"snakemake {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}\n{logs}")
    return result


def data_dirs(workdir: Path, configfile: str | None = None, **config) -> dict[str, Path]:
    """The data folders (maestro, tokenizer, tokens, augment, windows) Snakemake uses in `workdir` with
    `--configfile configfile --config key=value ...`."""
    overrides = yaml.safe_load((workdir / configfile).read_text()) if configfile else {}
    resolved = load_config(workdir / "config.yaml", deep_merge(overrides, config))
    return {stage: workdir / folder for stage, folder in data_folders(resolved).items()}


def edit_config(workdir: Path, section: str, key: str, value) -> None:
    path = workdir / "config.yaml"
    config = yaml.safe_load(path.read_text())
    config[section][key] = value
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def fake_maestro(folder: Path, rows: list[list], bars: int = 2) -> Path:
    """A MAESTRO-shaped folder: the csv and one small MIDI file per csv row, in year folders."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, row in enumerate(rows):
        write_midi(make_piano_score(bars=bars + i, notes_per_bar=6, seed=i), folder / row[4])
    with open(folder / "maestro-v3.0.0.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(MAESTRO_CSV_HEADER)
        writer.writerows(rows)
    return folder


def serve_as_maestro_zip(source: Path, root: Path):
    """Zip `source` like the official archive (under a top-level maestro-v3.0.0/) and serve it on loopback HTTP.

    A generator for fixtures: yields (url, sha256), then shuts the server down.
    """
    zip_path = root / "maestro-v3.0.0-midi.zip"
    with zipfile.ZipFile(zip_path, "w") as archive:
        for path in sorted(source.rglob("*")):
            archive.write(path, Path("maestro-v3.0.0") / path.relative_to(source))
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield (
            f"http://127.0.0.1:{server.server_port}/{zip_path.name}",
            hashlib.sha256(zip_path.read_bytes()).hexdigest(),
        )
    finally:
        server.shutdown()
        server.server_close()


# A few-step CPU run for tests that need a trained checkpoint, not a good one.
TINY_TRAIN = {
    "device": "cpu",
    "max_steps": 6,
    "batch_tokens": 4096,
    "warmup_steps": 2,
    "eval_every": 3,
    "eval_windows": 8,
    "log_every": 3,
    "checkpoint_every": 3,
    "num_workers": 0,
}


def write_tiny_run_overrides(workdir: Path, maestro_dir: Path, sections: dict) -> None:
    """`overrides.yaml` for a tiny real-MAESTRO run (2 pieces per split, one shard, one transposition, an L2 D64
    model) with `sections` (windows, train, evaluate, ...) merged over it."""
    base = {
        "maestro_dir": str(maestro_dir),
        "maestro": {"pieces_per_split": 2},
        "tokenize": {"shards": 1},
        "augment": {"transpositions": [1]},
        "model": {"n_layer": 2, "n_embd": 64, "head_size": 64},
    }
    (workdir / "overrides.yaml").write_text(yaml.safe_dump(deep_merge(base, sections)))
