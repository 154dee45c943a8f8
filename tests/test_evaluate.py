"""Evaluation: the musical metrics on hand-built scores, the baselines' token streams, and `snakemake evaluate`
on a tiny run over real MAESTRO pieces."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import datasets
import pytest
from symusic import Note, Score, Track
from workflow_helpers import copy_workflow, data_dirs, snakemake, write_tiny_run_overrides

from pianomuse.cli import main as cli_main
from pianomuse.evaluate import choose_prompts, repeat_last_bars
from pianomuse.metrics import (
    METRICS,
    all_metrics,
    groove_similarity,
    inter_onset_interval_ratio,
    mean_and_ci,
    note_density_ratio,
    pitch_class_overlap,
    pitch_range_difference,
    polyphony_ratio,
    scale_consistency,
    velocity_overlap,
)
from pianomuse.tokenizer import load_tokenizer

TPQ = 480


def score_of(notes: list[tuple[float, float, int, int]]) -> Score:
    """A 4/4 piano score from (onset, duration in quarter notes, pitch, velocity) tuples."""
    score = Score(TPQ)
    track = Track("piano", 0)
    for onset, duration, pitch, velocity in notes:
        track.notes.append(Note(int(onset * TPQ), int(duration * TPQ), pitch, velocity))
    score.tracks.append(track)
    return score


# Two bars of C major: quarter notes in bar 1, a chord then eighth notes in bar 2.
C_MAJOR = score_of(
    [(i, 1, p, 64) for i, p in enumerate([60, 62, 64, 65])]
    + [(4, 2, 48, 80), (4, 2, 55, 80)] + [(4 + 0.5 * i, 0.5, p, 72) for i, p in enumerate([67, 69, 71, 72])]
)


def test_identical_scores_get_perfect_values():
    assert all_metrics(C_MAJOR, C_MAJOR) == {name: perfect for name, (_, perfect) in METRICS.items()}


def test_known_differences_give_known_values():
    four_cs = score_of([(i, 1, 60, 64) for i in range(4)])
    four_gs = score_of([(i, 1, 67, 64) for i in range(4)])
    assert pitch_class_overlap(four_cs, four_gs) == 0
    assert pitch_class_overlap(score_of([(0, 1, 60, 64), (1, 1, 67, 64)]), four_cs) == 0.5
    eight_eighths = score_of([(0.5 * i, 0.5, 60, 64) for i in range(8)])
    assert note_density_ratio(eight_eighths, four_cs) == 2
    assert inter_onset_interval_ratio(eight_eighths, four_cs) == 0.5
    assert pitch_range_difference(score_of([(0, 1, 60, 64), (1, 1, 72, 64)]), four_cs) == 12
    assert velocity_overlap(score_of([(i, 1, 60, 100) for i in range(4)]), four_cs) == 0
    triads = score_of([(i, 1, p, 64) for i in range(4) for p in (60, 64, 67)])
    assert polyphony_ratio(triads, four_cs) == 3
    # Onsets on beats 1 and 3 against all four beats: 2 of 16 sixteenth slots differ.
    assert groove_similarity(score_of([(0, 2, 60, 64), (2, 2, 60, 64)]), four_cs) == 1 - 2 / 16
    # C# and F# are outside C major (the truth's best scale); C and G are in it.
    off_key = score_of([(0, 1, 61, 64), (1, 1, 66, 64), (2, 1, 60, 64), (3, 1, 67, 64)])
    assert scale_consistency(off_key, C_MAJOR) == 0.5


def test_ratios_against_an_empty_truth_are_nan_and_left_out_of_means():
    empty = score_of([])
    assert math.isnan(note_density_ratio(C_MAJOR, empty))
    mean, low, high, n = mean_and_ci([1.0, float("nan"), 3.0], seed=0)
    assert (mean, n) == (2.0, 2) and 1.0 <= low <= mean <= high <= 3.0


def test_repeat_baseline_cycles_the_last_bars():
    bar = 9
    ids = [bar, 1, 2, bar, 3, bar, 4, 5]
    assert repeat_last_bars(ids, bar, 2) == ids + [bar, 3, bar, 4, 5]
    assert repeat_last_bars(ids, bar, 5) == ids + [bar, 1, 2, bar, 3, bar, 4, 5, bar, 1, 2, bar, 3]


def test_prompts_take_one_window_per_piece_first_and_are_seeded():
    pieces = ["a"] * 5 + ["b"] * 5 + ["c"]
    chosen = choose_prompts(pieces, 3, seed=0)
    assert sorted(pieces[i] for i in chosen) == ["a", "b", "c"]
    assert chosen == choose_prompts(pieces, 3, seed=0)
    assert len(set(choose_prompts(pieces, 11, seed=0))) == 11


TINY_TRAIN = {
    "device": "cpu", "max_steps": 6, "batch_tokens": 4096, "warmup_steps": 2, "eval_every": 3, "eval_windows": 8,
    "log_every": 3, "checkpoint_every": 3, "num_workers": 0,
}
TINY_EVALUATE = {"prompts": 2, "samples": 2, "top_k": 50, "nll_windows": 32}
# The stages that no windows, train or evaluate setting changes: the tiny run's tokens, transpositions and kernels.
def shared_stages(workdir: Path) -> list[str]:
    data = data_dirs(workdir, "overrides.yaml")
    targets = [data["tokens"] / "test/shard-0.parquet", data["augment"] / "train/shard-0.parquet"]
    return [str(target.relative_to(workdir)) for target in targets] + ["results/kernels/kernels.json"]


@pytest.fixture(scope="module")
def tokenized_workflow(tmp_path_factory, maestro_dir) -> Path:
    """One workflow copy for this module's tiny real-MAESTRO runs, with its shared stages done. Each test writes its
    overrides and runs `evaluate`, which rebuilds the windows for its settings; the runs have their own names, so
    the checkpoints and reports of one never stand in for another's, whichever test runs first."""
    workdir = copy_workflow(tmp_path_factory.mktemp("tiny-runs"))
    write_tiny_run_overrides(workdir, maestro_dir, {})
    snakemake(workdir, *shared_stages(workdir), "--configfile", "overrides.yaml")
    return workdir


def assert_report_filled(out: Path, prompts: int) -> None:
    """report.md and report.html hold the four tables, every cell filled, nothing undefined, one image per cell."""
    markdown, html = (out / "report.md").read_text(), (out / "report.html").read_text()
    table_rows = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert len(table_rows) == (1 + 2) + (1 + len(METRICS)) + 2 * (1 + prompts)  # header and rows of each table
    for line in table_rows:
        assert all(cell.strip() for cell in line.strip("|").split(" | ")), line
    assert not re.search(r"\bnan\b|n/a", markdown, re.IGNORECASE)
    assert html.count("<tr>") == len(table_rows) and "<td></td>" not in html and "n/a" not in html
    assert html.count("<img ") == 2 * prompts and markdown.count("![") == 2 * prompts


@pytest.mark.slow
@pytest.mark.maestro
def test_snakemake_evaluate_on_a_tiny_run_writes_a_filled_report(tmp_path, tokenized_workflow, maestro_dir):
    workdir = tokenized_workflow
    write_tiny_run_overrides(workdir, maestro_dir, {
        "windows": {"context_bars": 2, "completion_bars": 2, "step": 4, "max_tokens": 1024},
        "train": {**TINY_TRAIN, "run": "tiny"},
        "evaluate": TINY_EVALUATE,
    })
    snakemake(workdir, "evaluate", "--configfile", "overrides.yaml")

    out = workdir / "results/eval/tiny"
    results = json.loads((out / "metrics.json").read_text())
    assert set(results["nll"]["models"]) == {"RWKV-7", "unigram"}
    assert len(results["metric_values"]["RWKV-7"]["pitch-class overlap"]) == 4  # P x K
    assert [(p["prompt_bars"], p["sample_bars"]) for p in results["prompts"]] == [(2, [2, 2])] * 2
    for p in range(2):
        for name in ["sample-0.mid", "sample-1.mid", "sample-0.png", "sample-1.png", "truth.mid", "truth.png"]:
            assert (out / f"samples/prompt-{p}" / name).is_file(), name
    assert_report_filled(out, prompts=2)

    # The trained checkpoint, as a composer would use it: `pianomuse complete` on a real MAESTRO prompt.
    prompt = maestro_dir / "2004/MIDI-Unprocessed_SMF_02_R1_2004_01-05_ORIG_MID--AUDIO_02_R1_2004_05_Track05_wav.midi"
    completions = tmp_path / "completions"
    command = [
        "complete", str(prompt), "--checkpoint", str(workdir / "results/checkpoints/tiny/best.pth"),
        "--prompt-bars", "4", "--bars", "2", "--samples", "3", "--temperature", "1.0", "--top-p", "0.95",
        "--seed", "7", "-o", str(completions),
    ]
    assert cli_main(command) == 0
    tokenizer = load_tokenizer(workdir / "results/checkpoints/tiny/tokenizer.json")
    for i in range(3):
        assert (completions / f"sample-{i}.png").stat().st_size > 0
        full = tokenizer.encode(Score(str(completions / f"sample-{i}.mid")))[0]
        continuation = tokenizer.encode(Score(str(completions / f"sample-{i}.continuation.mid")))[0]
        assert tokenizer.tokens_errors(full) == 0 and tokenizer.tokens_errors(continuation) == 0
        assert full.tokens.count("Bar_None") <= 6 and continuation.tokens.count("Bar_None") <= 2


@pytest.mark.slow
@pytest.mark.maestro
def test_mirex_preset_evaluates_4_bar_prompts_continued_for_12_bars(tokenized_workflow, maestro_dir):
    # The preset's own windows and run name: the overrides only shrink training and evaluation.
    workdir = tokenized_workflow
    write_tiny_run_overrides(workdir, maestro_dir, {"train": TINY_TRAIN, "evaluate": TINY_EVALUATE})
    snakemake(workdir, "evaluate", "--configfile", "overrides.yaml", "--config", "preset=mirex")

    data = data_dirs(workdir, "overrides.yaml", preset="mirex")
    tokenizer = load_tokenizer(data["tokenizer"] / "tokenizer.json")
    bar_id = tokenizer.vocab["Bar_None"]
    for split in ["train", "validation", "test"]:
        windows = datasets.load_from_disk(str(data["windows"] / split))
        assert len(windows) > 0, split
        assert {ids.count(bar_id) for ids in windows["context_ids"]} == {4}, split
        assert {ids.count(bar_id) for ids in windows["completion_ids"]} == {12}, split

    out = workdir / "results/eval/mirex"
    results = json.loads((out / "metrics.json").read_text())
    assert results["continuation_bars"] == 12 and len(results["prompts"]) == 2
    for p, prompt in enumerate(results["prompts"]):
        assert prompt["prompt_bars"] == 4
        assert prompt["sample_bars"] == [12, 12] and prompt["sample_token_errors"] == [0, 0]
        for k in range(2):
            continuation = tokenizer.encode(Score(str(out / f"samples/prompt-{p}/sample-{k}.continuation.mid")))[0]
            # Re-encoding drops trailing empty bars, so a valid 12-bar continuation may read as fewer.
            assert tokenizer.tokens_errors(continuation) == 0 and continuation.tokens.count("Bar_None") <= 12
    assert_report_filled(out, prompts=2)
    assert "(the whole prompt cycled when it has fewer bars)" in (out / "report.md").read_text()
