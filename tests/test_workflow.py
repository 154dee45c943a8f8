"""The Snakemake workflow end to end: download, quarantine, incremental reruns, config validation, real MAESTRO."""

from __future__ import annotations

import csv
import hashlib
import re
import shutil
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

import datasets
import pandas as pd
import pytest
import yaml
from miditok import TokSequence

from midi_factory import make_piano_score, write_midi
from pianomuse.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ["Snakefile", "config.yaml", "workflow", "envs"]
MAESTRO_COLUMNS = ["canonical_composer", "canonical_title", "split", "year", "midi_filename", "audio_filename", "duration"]


def copy_workflow(dest: Path) -> Path:
    for name in WORKFLOW_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, dest / name)
        else:
            shutil.copy(source, dest / name)
    return dest


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", *args],
        cwd=workdir,
        capture_output=True,
        text=True,
    )
    if check and result.returncode != 0:
        logs = "\n".join(f"== {p}\n{p.read_text()}" for p in sorted((workdir / "results/logs").rglob("*.log")))
        pytest.fail(f"snakemake {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}\n{logs}")
    return result


def planned_jobs(workdir: Path, *args: str) -> Counter:
    """The jobs a dry run would execute, counted per rule (empty when there is nothing to do)."""
    output = snakemake(workdir, "--dry-run", *args).stdout
    if "Nothing to be done" in output:
        return Counter()
    table = output.split("Job stats:")[1].split("total")[0]
    return Counter({rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.M)})


def edit_config(workdir: Path, section: str, key: str, value) -> None:
    path = workdir / "config.yaml"
    config = yaml.safe_load(path.read_text())
    config[section][key] = value
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def fake_maestro(folder: Path) -> Path:
    """A MAESTRO-shaped folder: two short pieces per split plus one corrupt file in train."""
    rows = []
    for i, split in enumerate(["train", "train", "validation", "validation", "test", "test"]):
        name = f"2004/piece-{i}.midi"
        score = make_piano_score(bars=14 + i, notes_per_bar=6, seed=i)
        write_midi(score, folder / name)
        rows.append(["Composer", f"Piece {i}", split, 2004, name, name.replace(".midi", ".wav"), 30.0])
    (folder / "2004/corrupt.midi").write_bytes(b"MThd\x00\x00\x00\x06\x00\x01\x00")
    rows.append(["Composer", "Corrupt", "train", 2004, "2004/corrupt.midi", "2004/corrupt.wav", 1.0])
    with open(folder / "maestro-v3.0.0.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(MAESTRO_COLUMNS)
        writer.writerows(rows)
    return folder


@pytest.fixture(scope="module")
def served_maestro_zip(tmp_path_factory):
    """The fake MAESTRO zipped like the official archive (a top-level maestro-v3.0.0/ folder), on loopback HTTP."""
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
    from functools import partial
    import threading

    root = tmp_path_factory.mktemp("served")
    source = fake_maestro(tmp_path_factory.mktemp("maestro-src"))
    zip_path = root / "maestro-v3.0.0-midi.zip"
    with zipfile.ZipFile(zip_path, "w") as archive:
        for path in sorted(source.rglob("*")):
            if path.is_file():
                archive.write(path, Path("maestro-v3.0.0") / path.relative_to(source))
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/{zip_path.name}", hashlib.sha256(zip_path.read_bytes()).hexdigest()
    server.shutdown()


@pytest.fixture(scope="module")
def workflow_run(tmp_path_factory, served_maestro_zip):
    """A workflow copy that has run up to the windows once, downloading its MAESTRO from loopback."""
    url, sha256 = served_maestro_zip
    workdir = copy_workflow(tmp_path_factory.mktemp("workflow"))
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    config["maestro_dir"] = "resources/maestro-v3.0.0"
    config["maestro"].update(url=url, sha256=sha256)
    config["tokenize"]["shards"] = 2
    config["augment"]["transpositions"] = [-2, 1, 3]
    config["windows"].update(context_bars=4, completion_bars=2, step=2)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    snakemake(workdir, "data")
    return workdir


@pytest.mark.slow
def test_workflow_downloads_maestro_when_the_folder_is_missing(workflow_run):
    assert (workflow_run / "resources/maestro-v3.0.0/maestro-v3.0.0.csv").exists()
    manifest = pd.read_parquet(workflow_run / "results/maestro/manifest.parquet")
    assert sorted(manifest["split"].value_counts().items()) == [("test", 2), ("train", 3), ("validation", 2)]


@pytest.mark.slow
def test_bad_file_is_quarantined_and_the_rest_goes_on(workflow_run):
    rejects = pd.concat(pd.read_parquet(p) for p in (workflow_run / "results/tokens/train").glob("*.rejects.parquet"))
    assert rejects["piece_id"].tolist() == ["2004/corrupt"]
    assert rejects["reason"].str.len().min() > 0
    shards = pd.concat(pd.read_parquet(p) for p in (workflow_run / "results/tokens/train").glob("shard-?.parquet"))
    assert sorted(shards["piece_id"]) == ["2004/piece-0", "2004/piece-1"]


@pytest.mark.slow
def test_windows_are_bar_aligned_and_only_train_is_augmented(workflow_run):
    tokenizer = load_tokenizer(workflow_run / "results/tokenizer.json")
    bar = tokenizer.vocab["Bar_None"]
    for split in ["train", "validation", "test"]:
        windows = datasets.load_from_disk(str(workflow_run / "results/windows" / split)).to_pandas()
        assert len(windows) > 0
        assert all(ids[0] == bar for ids in windows["completion_ids"])
        assert all((ids == bar).sum() == 4 for ids in windows["context_ids"])
        assert all((ids == bar).sum() == 2 for ids in windows["completion_ids"])
        expected = {0, -2, 1, 3} if split == "train" else {0}
        assert set(windows["transpose"]) <= expected and 0 in set(windows["transpose"])
    train = datasets.load_from_disk(str(workflow_run / "results/windows/train")).to_pandas()
    assert set(train["transpose"]) == {0, -2, 1, 3}


@pytest.mark.slow
def test_nothing_changed_runs_nothing(workflow_run):
    assert planned_jobs(workflow_run, "data") == Counter()


@pytest.mark.slow
def test_changing_context_bars_reruns_only_the_windows(workflow_run):
    edit_config(workflow_run, "windows", "context_bars", 3)
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


def test_unknown_config_key_is_a_clear_error(tmp_path):
    workdir = copy_workflow(tmp_path)
    edit_config(workdir, "windows", "contxt_bars", 4)
    result = snakemake(workdir, "--dry-run", "data", check=False)
    assert result.returncode != 0
    assert "contxt_bars" in result.stdout + result.stderr
    assert "Additional properties are not allowed" in result.stdout + result.stderr


def test_unknown_preset_is_a_clear_error(tmp_path):
    workdir = copy_workflow(tmp_path)
    result = snakemake(workdir, "--dry-run", "data", "--config", "preset=fast", check=False)
    assert result.returncode != 0
    assert "unknown preset 'fast'" in result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.maestro
def test_workflow_on_real_maestro(tmp_path, maestro_dir):
    """The data stages on 21 real MAESTRO pieces (7 per split), with the default tokenizer and windows."""
    workdir = copy_workflow(tmp_path)
    overrides = {"maestro_dir": str(maestro_dir), "maestro": {"pieces_per_split": 7}, "tokenize": {"shards": 2}}
    (workdir / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    snakemake(workdir, "data", "--configfile", "overrides.yaml")
    tokenizer = load_tokenizer(workdir / "results/tokenizer.json")
    bar = tokenizer.vocab["Bar_None"]
    for split in ["train", "validation", "test"]:
        pieces = pd.concat(pd.read_parquet(p) for p in (workdir / "results/tokens" / split).glob("shard-?.parquet"))
        assert len(pieces) == 7
        windows = datasets.load_from_disk(str(workdir / "results/windows" / split)).to_pandas()
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
