"""The Snakemake workflow end to end: download, quarantine, incremental reruns, config validation, real MAESTRO."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import datasets
import pandas as pd
import pytest
import yaml
from miditok import TokSequence
from workflow_helpers import (
    REPO,
    copy_workflow,
    data_dirs,
    edit_config,
    fake_maestro,
    serve_as_maestro_zip,
    snakemake,
)

from pianomuse.config import deep_merge, load_config
from pianomuse.tokenizer import load_tokenizer

TRAIN_VALIDATION_TEST = ["train", "train", "validation", "validation", "test", "test"]


def planned_outputs(workdir: Path, *args: str) -> list[str]:
    """The output files of the jobs a dry run would execute, in its order."""
    output = snakemake(workdir, "--dry-run", *args).stdout
    return [path for line in re.findall(r"^\s+output: (.*)$", output, flags=re.M) for path in line.split(", ")]


def planned_jobs(workdir: Path, *args: str) -> Counter:
    """The jobs a dry run would execute, counted per rule (empty when there is nothing to do)."""
    output = snakemake(workdir, "--dry-run", *args).stdout
    if "Nothing to be done" in output:
        return Counter()
    table = output.split("Job stats:")[1].split("total")[0]
    return Counter({rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.M)})


@pytest.fixture(scope="module")
def served_maestro_zip(tmp_path_factory):
    """Two short pieces per split plus one corrupt file in train, zipped like MAESTRO and served on loopback."""
    rows = [
        ["Composer", f"Piece {i}", split, 2004, f"2004/piece-{i}.midi", f"2004/piece-{i}.wav", 30.0]
        for i, split in enumerate(TRAIN_VALIDATION_TEST)
    ]
    source = fake_maestro(tmp_path_factory.mktemp("maestro-src"), rows, bars=14)
    (source / "2004/corrupt.midi").write_bytes(b"MThd\x00\x00\x00\x06\x00\x01\x00")
    with open(source / "maestro-v3.0.0.csv", "a", newline="") as f:
        csv.writer(f).writerow(["Composer", "Corrupt", "train", 2004, "2004/corrupt.midi", "2004/corrupt.wav", 1.0])
    yield from serve_as_maestro_zip(source, tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="module")
def workflow_run(tmp_path_factory, served_maestro_zip):
    """A workflow copy that has run up to the windows (and the kernels) once, downloading its MAESTRO from loopback."""
    url, sha256 = served_maestro_zip
    workdir = copy_workflow(tmp_path_factory.mktemp("workflow"))
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    config["maestro_dir"] = "resources/maestro-v3.0.0"
    config["maestro"].update(url=url, sha256=sha256)
    config["tokenize"]["shards"] = 2
    config["augment"]["transpositions"] = [-2, 1, 3]
    config["windows"].update(context_bars=4, completion_bars=2, step=2)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    snakemake(workdir, "data", "kernels")
    return workdir


@pytest.mark.slow
def test_workflow_downloads_maestro_when_the_folder_is_missing(workflow_run):
    assert (workflow_run / "resources/maestro-v3.0.0/maestro-v3.0.0.csv").exists()
    manifest = pd.read_parquet(data_dirs(workflow_run)["maestro"] / "manifest.parquet")
    assert sorted(manifest["split"].value_counts().items()) == [("test", 2), ("train", 3), ("validation", 2)]


@pytest.mark.slow
def test_bad_file_is_quarantined_and_the_rest_goes_on(workflow_run):
    tokens = data_dirs(workflow_run)["tokens"] / "train"
    rejects = pd.concat(pd.read_parquet(p) for p in tokens.glob("*.rejects.parquet"))
    assert rejects["piece_id"].tolist() == ["2004/corrupt"]
    assert rejects["reason"].str.len().min() > 0
    shards = pd.concat(pd.read_parquet(p) for p in tokens.glob("shard-?.parquet"))
    assert sorted(shards["piece_id"]) == ["2004/piece-0", "2004/piece-1"]


@pytest.mark.slow
def test_windows_are_bar_aligned_and_only_train_is_augmented(workflow_run):
    data = data_dirs(workflow_run)
    tokenizer = load_tokenizer(data["tokenizer"] / "tokenizer.json")
    bar = tokenizer.vocab["Bar_None"]
    for split in ["train", "validation", "test"]:
        windows = datasets.load_from_disk(str(data["windows"] / split)).to_pandas()
        assert len(windows) > 0
        assert all(ids[0] == bar for ids in windows["completion_ids"])
        assert all((ids == bar).sum() == 4 for ids in windows["context_ids"])
        assert all((ids == bar).sum() == 2 for ids in windows["completion_ids"])
        expected = {0, -2, 1, 3} if split == "train" else {0}
        assert set(windows["transpose"]) <= expected and 0 in set(windows["transpose"])
    train = datasets.load_from_disk(str(data["windows"] / "train")).to_pandas()
    assert set(train["transpose"]) == {0, -2, 1, 3}


@pytest.mark.slow
def test_nothing_changed_runs_nothing(workflow_run):
    assert planned_jobs(workflow_run, "data", "kernels") == Counter()


@pytest.mark.slow
def test_a_copied_checkout_with_its_results_reruns_nothing(workflow_run, tmp_path):
    """The workflow and its results/ copied elsewhere (cp -a): no input path names the old place, so nothing runs."""
    moved = tmp_path / "moved"
    shutil.copytree(workflow_run, moved, symlinks=True)
    assert planned_jobs(moved, "data", "kernels") == Counter()


def file_stamps(folder: Path) -> dict:
    return {path: path.stat().st_mtime_ns for path in folder.rglob("*") if path.is_file()}


@pytest.mark.slow
def test_switching_windows_settings_and_back_rebuilds_and_deletes_nothing(workflow_run):
    before = data_dirs(workflow_run)
    stamps = file_stamps(before["windows"])
    edit_config(workflow_run, "windows", "context_bars", 3)
    try:
        other = data_dirs(workflow_run)
        assert other["windows"] != before["windows"] and other["augment"] == before["augment"]
        snakemake(workflow_run, "data")
        assert file_stamps(before["windows"]) == stamps  # the first configuration's windows, untouched
        assert (
            json.loads((other["windows"] / "test.stats.json").read_text())["settings"]["windows"]["context_bars"] == 3
        )
    finally:
        edit_config(workflow_run, "windows", "context_bars", 4)
    assert planned_jobs(workflow_run, "data") == Counter()
    assert file_stamps(before["windows"]) == stamps


@pytest.mark.slow
def test_another_preset_plans_only_its_own_folders(workflow_run):
    """`--config preset=demo` in a checkout that built the default preset's data: its jobs write elsewhere."""
    planned = planned_outputs(workflow_run, "data", "--config", "preset=demo")
    assert planned and len(planned) == len(set(planned))
    ours = [str(folder.relative_to(workflow_run)) for folder in data_dirs(workflow_run).values()]
    assert not [path for path in planned if path.startswith(tuple(ours))]


@pytest.mark.slow
def test_changing_context_bars_reruns_only_the_windows(workflow_run):
    edit_config(workflow_run, "windows", "context_bars", 5)  # a setting no test has built
    try:
        assert planned_jobs(workflow_run, "data") == Counter({"windows": 3, "data": 1})
    finally:
        edit_config(workflow_run, "windows", "context_bars", 4)


@pytest.mark.slow
def test_changing_the_tokenizer_reruns_everything_from_tokenize_on(workflow_run):
    edit_config(workflow_run, "tokenizer", "num_velocities", 16)
    try:
        jobs = planned_jobs(workflow_run, "data")
    finally:
        edit_config(workflow_run, "tokenizer", "num_velocities", 32)
    assert jobs == Counter({"tokenizer": 1, "tokenize": 2, "augment": 2, "windows": 3, "data": 1})


def test_a_run_that_cannot_resume_fails_before_anything_is_rebuilt(tmp_path):
    """A run folder trained on other windows: `snakemake train` stops while planning, saying why, and runs nothing."""
    workdir = copy_workflow(tmp_path)
    run_dir = workdir / "results/checkpoints/default"
    run_dir.mkdir(parents=True)
    edit_config(workdir, "windows", "context_bars", 6)
    record = {"windows": str(data_dirs(workdir)["windows"].relative_to(workdir)), "settings": {}}
    (run_dir / "data.json").write_text(json.dumps(record))
    edit_config(workdir, "windows", "context_bars", 8)
    for args in [["--dry-run", "train"], ["train"]]:
        result = snakemake(workdir, *args, check=False)
        assert result.returncode != 0
        output = result.stdout + result.stderr
        assert f"results/checkpoints/default was trained on {record['windows']}" in output, output
        assert "choose another train.run, switch the settings back, or delete" in output
    assert sorted(path.name for path in (workdir / "results").iterdir()) == ["checkpoints"]  # nothing was built


def test_unknown_config_key_is_a_clear_error(tmp_path):
    workdir = copy_workflow(tmp_path)
    edit_config(workdir, "windows", "contxt_bars", 4)
    result = snakemake(workdir, "--dry-run", "data", check=False)
    assert result.returncode != 0
    assert "contxt_bars" in result.stdout + result.stderr
    assert "Additional properties are not allowed" in result.stdout + result.stderr


def test_unknown_preset_is_a_clear_error(tmp_path):
    """A preset without a file stops the workflow, naming the presets there are, also when a --configfile is given
    (Snakemake itself skips a missing configfile then)."""
    workdir = copy_workflow(tmp_path)
    (workdir / "overrides.yaml").write_text(yaml.safe_dump({"train": {"run": "mine"}}))
    for args in [["--config", "preset=fast"], ["--configfile", "overrides.yaml", "--config", "preset=fast"]]:
        result = snakemake(workdir, "--dry-run", "data", *args, check=False)
        assert result.returncode != 0
        assert (
            "unknown preset 'fast' (no presets/fast.yaml); the presets are: cpu, default, demo, full, mirex"
            in result.stdout + result.stderr
        )
    assert not (workdir / "results").exists()


def test_a_preset_file_that_does_not_validate_is_named(tmp_path):
    workdir = copy_workflow(tmp_path, preset="demo")
    demo = workdir / "presets/demo.yaml"
    demo.write_text(demo.read_text().replace("  warmup_steps: 15", "  warmup: 15"))
    result = snakemake(workdir, "--dry-run", "data", check=False)
    assert result.returncode != 0
    assert "presets/demo.yaml: Additional properties are not allowed ('warmup' was unexpected) (at train)" in (
        result.stdout + result.stderr
    )


def run_and_windows(workdir: Path, *args: str) -> tuple[str, str]:
    """The training run a dry run of `train` plans with these arguments, and the windows folder it trains on."""
    output = snakemake(workdir, "--dry-run", "train", *args).stdout
    (run_and_folder,) = re.findall(r"^Job \d+: training run (\S+) on (results/windows/\w+)/train:", output, flags=re.M)
    return run_and_folder


def windows_of(workdir: Path, configfile: str | None = None, **config) -> str:
    return str(data_dirs(workdir, configfile, **config)["windows"].relative_to(workdir))


def test_the_command_line_wins_over_the_preset(tmp_path):
    """`--config` over `--configfile` over the preset over config.yaml, key by key: a value one level sets replaces
    that key only, and the preset's other values stay (the windows folder's key holds every data setting)."""
    workdir = copy_workflow(tmp_path, preset="demo")
    assert run_and_windows(workdir) == ("demo", windows_of(workdir))
    overrides = {"maestro": {"pieces_per_split": 7}, "train": {"run": "from-file"}}
    (workdir / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    resolved = load_config(workdir / "config.yaml", overrides)
    demo = yaml.safe_load((workdir / "presets/demo.yaml").read_text())
    assert resolved["maestro"]["pieces_per_split"] == 7 != demo["maestro"]["pieces_per_split"]
    assert resolved["augment"]["transpositions"] == demo["augment"]["transpositions"]
    windows = windows_of(workdir, "overrides.yaml")
    assert windows not in (windows_of(workdir), windows_of(workdir, "overrides.yaml", preset="default"))
    assert run_and_windows(workdir, "--configfile", "overrides.yaml") == ("from-file", windows)
    from_cli = run_and_windows(workdir, "--configfile", "overrides.yaml", "--config", "train={run: from-cli}")
    assert from_cli == ("from-cli", windows)
    mirex = run_and_windows(workdir, "--configfile", "overrides.yaml", "--config", "preset=mirex")
    assert mirex == ("from-file", windows_of(workdir, "overrides.yaml", preset="mirex"))


def test_an_experiment_configfile_applies_over_the_chosen_preset(tmp_path):
    """experiments/*.yaml over the preset config.yaml chooses, or over another one chosen on the command line: the
    experiment's loop rows and run name win over the preset's, key by key, its other settings stay."""
    workdir = copy_workflow(tmp_path, preset=None)
    shipped = yaml.safe_load((workdir / "config.yaml").read_text())["preset"]
    experiment = str(REPO / "experiments/demo-loops.yaml")
    settings = yaml.safe_load(Path(experiment).read_text())
    for args, preset in [([], shipped), (["--config", "preset=cpu"], "cpu")]:
        resolved = load_config(workdir / "config.yaml", {**settings, "preset": preset})
        preset_loops = load_config(workdir / "config.yaml", {"preset": preset})["augment"]["loops"] or {}
        assert resolved["augment"]["loops"] == {**preset_loops, **settings["augment"]["loops"]}
        assert resolved["model"] == load_config(workdir / "config.yaml", {"preset": preset})["model"]
        windows = windows_of(workdir, experiment, preset=preset)
        assert windows != windows_of(workdir, preset=preset)
        assert run_and_windows(workdir, "--configfile", experiment, *args) == ("demo-loops", windows)


@pytest.mark.slow
@pytest.mark.maestro
def test_workflow_on_real_maestro(tmp_path, maestro_dir):
    """The data stages on 21 real MAESTRO pieces (7 per split), with the default tokenizer and windows."""
    workdir = copy_workflow(tmp_path)
    overrides = {"maestro_dir": str(maestro_dir), "maestro": {"pieces_per_split": 7}, "tokenize": {"shards": 2}}
    (workdir / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    snakemake(workdir, "data", "--configfile", "overrides.yaml")
    data = data_dirs(workdir, "overrides.yaml")
    tokenizer = load_tokenizer(data["tokenizer"] / "tokenizer.json")
    bar = tokenizer.vocab["Bar_None"]
    for split in ["train", "validation", "test"]:
        pieces = pd.concat(pd.read_parquet(p) for p in (data["tokens"] / split).glob("shard-?.parquet"))
        assert len(pieces) == 7
        windows = datasets.load_from_disk(str(data["windows"] / split)).to_pandas()
        assert set(windows["piece_id"]) <= set(pieces["piece_id"])
        assert all(ids[0] == bar for ids in windows["completion_ids"])
        assert all((ids == bar).sum() == 8 for ids in windows["context_ids"])
        assert all((ids == bar).sum() == 4 for ids in windows["completion_ids"])
        checked = windows.iloc[:: max(1, len(windows) // 200)]
        for context, completion in zip(checked["context_ids"], checked["completion_ids"]):
            assert tokenizer.tokens_errors(TokSequence(ids=[*context, *completion])) == 0


@pytest.mark.slow
def test_readme_inspection_snippet_runs_as_written(workflow_run):
    readme = (REPO / "README.md").read_text()
    snippet = readme.split("```python\n", 1)[1].split("```", 1)[0]
    result = subprocess.run([sys.executable, "-c", snippet], cwd=workflow_run, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "Score(" in result.stdout


def readme_commands() -> list[str]:
    """The commands of the README's bash blocks, in order: continued lines joined, comments dropped, `a && b` split."""
    readme = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", readme, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                commands += [" ".join(part.split()) for part in line.split("&&")]
    return commands


# The README's demo preset shrunk to seconds of work; every other setting is as the checkout ships it.
TINY_DEMO = {
    "maestro": {"pieces_per_split": 2},
    "tokenize": {"shards": 1},
    "augment": {"transpositions": [1]},
    "model": {"n_layer": 2, "n_embd": 64, "head_size": 64},
    "train": {
        "max_steps": 4,
        "eval_every": 2,
        "eval_windows": 8,
        "log_every": 2,
        "checkpoint_every": 2,
        "num_workers": 0,
    },
    "evaluate": {"prompts": 2, "samples": 2, "nll_windows": 32},
}


@pytest.mark.slow
@pytest.mark.maestro
def test_readme_commands_run_as_written(tmp_path, maestro_dir):
    """Every command of the README, verbatim, in a checkout as shipped (config.yaml, the default profile) beside a
    MAESTRO copy, with a .venv like the one .ci/setup makes; only the demo preset is shrunk to a few steps."""
    commands = readme_commands()
    setup = ["bash .ci/setup", "bash .ci/run"]  # installing, and the whole test suite: not from inside a test
    assert [command for command in commands if command in setup] == setup
    # The studio serves until Ctrl-C: tests/test_studio.py runs that command and stops it.
    server = ".venv/bin/pianomuse studio"
    assert any(command.startswith(server) for command in commands)
    commands = [command for command in commands if command not in setup and not command.startswith(server)]
    assert commands[0] == ".venv/bin/snakemake" and ".venv/bin/snakemake evaluate" in commands

    checkout = copy_workflow(tmp_path / "checkout", preset=None)
    (tmp_path / "shared/data").mkdir(parents=True)
    (tmp_path / "shared/data/maestro-v3.0.0").symlink_to(maestro_dir)
    venv_bin = checkout / ".venv/bin"
    venv_bin.mkdir(parents=True)
    for name, module in [("snakemake", "snakemake"), ("pianomuse", "pianomuse.cli")]:
        (venv_bin / name).write_text(f'#!/bin/sh\nexec "{sys.executable}" -m {module} "$@"\n')
        (venv_bin / name).chmod(0o755)
    config = yaml.safe_load((checkout / "config.yaml").read_text())
    assert config["preset"] == "demo" and config["maestro_dir"] == "../shared/data/maestro-v3.0.0"
    demo = checkout / "presets/demo.yaml"
    demo.write_text(yaml.safe_dump(deep_merge(yaml.safe_load(demo.read_text()), TINY_DEMO), sort_keys=False))

    for command in commands:
        result = subprocess.run(command, shell=True, cwd=checkout, capture_output=True, text=True)
        assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    assert (checkout / "results/checkpoints/demo/done.json").is_file()
    assert (checkout / "results/eval/demo/report.md").is_file()
    assert sorted(path.name for path in (checkout / "completions").glob("sample-*.mid")) == [
        f"sample-{i}{suffix}" for i in range(4) for suffix in [".continuation.mid", ".mid"]
    ]
