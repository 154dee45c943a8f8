"""Evaluation: the musical metrics on hand-built scores, the baselines' token streams, and `snakemake evaluate`
on a tiny run over real MAESTRO pieces."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from midi_factory import make_piano_score
from symusic import Note, Score, Track
from wav import read_wav
from workflow_helpers import TINY_TRAIN, copy_workflow, data_dirs, snakemake, write_tiny_run_overrides

from pianomuse.audio import SAMPLE_RATE
from pianomuse.cli import main as cli_main
from pianomuse.complete import Completer, Completion
from pianomuse.evaluate import (
    OTHER_PIECE,
    REPEAT,
    TRUTH,
    choose_prompts,
    evaluate_run,
    model_window_nll,
    nll_results,
    repeat_last_bars,
    unigram_window_nll,
)
from pianomuse.metrics import (
    IN_KEY_BY_CHANCE,
    KEY_NAMES,
    METRICS,
    all_metrics,
    best_key,
    groove_similarity,
    inter_onset_interval_ratio,
    key_agreement,
    mean_and_ci,
    note_density_ratio,
    pitch_class_overlap,
    pitch_range_difference,
    polyphony_ratio,
    ratio_and_ci,
    scale_consistency,
    velocity_overlap,
)
from pianomuse.model import load_rwkv_pth
from pianomuse.probe import REPEAT as PROBE_REPEAT, TEXTURES, probe_figures
from pianomuse.remi import pitch_token_ids
from pianomuse.scoring import unigram_nll
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
    + [(4, 2, 48, 80), (4, 2, 55, 80)]
    + [(4 + 0.5 * i, 0.5, p, 72) for i, p in enumerate([67, 69, 71, 72])]
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


# Bars of an A-minor figure: A C E held, a passing G# (the leading tone), then the tune down to A.
A_MINOR = score_of([
    (0, 2, 57, 64), (0, 4, 45, 64), (2, 1, 60, 64), (3, 1, 64, 64), (4, 1, 68, 64), (5, 1, 69, 64),
    (6, 1, 67, 64), (7, 1, 65, 64), (8, 1, 64, 64), (9, 1, 62, 64), (10, 1, 60, 64), (11, 2, 57, 64),
])  # fmt: skip


def transposed(score: Score, semitones: int) -> Score:
    return score.shift_pitch(semitones)


def test_key_agreement_in_and_out_of_key():
    in_key = score_of([(i * 0.5, 0.5, p, 64) for i, p in enumerate([72, 71, 69, 67, 65, 64, 62, 60, 48, 55])])
    black_keys = score_of([(i, 1, p, 64) for i, p in enumerate([61, 63, 66, 68, 70, 73])])
    assert KEY_NAMES[best_key(C_MAJOR)] == "C major"
    assert key_agreement(in_key, C_MAJOR) == 1
    assert key_agreement(black_keys, C_MAJOR) == 0
    # One note of each pitch class: exactly the chance level, 7 of 12.
    chromatic = score_of([(i, 1, 60 + i, 64) for i in range(12)])
    assert key_agreement(chromatic, C_MAJOR) == IN_KEY_BY_CHANCE == 7 / 12
    # Half in key, half out: C and G in, F# and C# out.
    assert key_agreement(score_of([(0, 1, 60, 64), (1, 1, 66, 64), (2, 1, 67, 64), (3, 1, 61, 64)]), C_MAJOR) == 0.5


def test_key_agreement_follows_the_prompt_into_every_key():
    in_key = score_of([(i, 1, p, 64) for i, p in enumerate([60, 62, 64, 65, 67, 69, 71])])
    black_keys = score_of([(i, 1, p, 64) for i, p in enumerate([61, 63, 66, 68, 70])])
    for shift in range(-6, 6):
        tonic = shift % 12
        assert best_key(transposed(C_MAJOR, shift)) == tonic, shift
        assert best_key(transposed(A_MINOR, shift)) == 12 + (9 + shift) % 12, shift
        assert key_agreement(transposed(in_key, shift), transposed(C_MAJOR, shift)) == 1
        assert key_agreement(transposed(black_keys, shift), transposed(C_MAJOR, shift)) == 0
        # C major's scale after a prompt in another key scores the share of its notes in that key's scale.
        c_major = {0, 2, 4, 5, 7, 9, 11}
        shared = len(c_major & {(p + tonic) % 12 for p in c_major})
        assert key_agreement(in_key, transposed(C_MAJOR, shift)) == pytest.approx(shared / 7)


def test_key_agreement_reads_the_tonic_not_only_the_scale():
    # A minor and C major share their pitch classes; the profiles tell them apart by what is held and stressed.
    assert KEY_NAMES[best_key(A_MINOR)] == "A minor"
    # The raised leading tone G# is outside A natural minor: a continuation of it is out of key.
    assert key_agreement(score_of([(0, 1, 68, 64), (1, 1, 69, 64)]), A_MINOR) == 0.5
    # C E G fits C, F and G major alike by in-scale share; the profiles name C major.
    assert KEY_NAMES[best_key(score_of([(0, 4, 48, 64), (0, 1, 60, 64), (1, 1, 64, 64), (2, 1, 67, 64)]))] == "C major"


def test_key_agreement_is_undefined_without_notes():
    assert best_key(score_of([])) is None
    assert math.isnan(key_agreement(C_MAJOR, score_of([])))
    assert math.isnan(key_agreement(score_of([]), C_MAJOR))


def test_ratio_and_ci_pools_items_of_different_sizes():
    # Window NLLs 2, 6, 12 over 1, 2, 3 tokens: 20 / 6 pooled, not the mean of the per-window ratios.
    mean, low, high, n = ratio_and_ci([2.0, 6.0, 12.0], [1, 2, 3], seed=0)
    assert mean == pytest.approx(20 / 6) and n == 3 and 2 <= low <= mean <= high <= 4
    assert ratio_and_ci([5.0, 5.0], [1, 1], seed=0)[:3] == (5.0, 5.0, 5.0)


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


TINY_EVALUATE = {"prompts": 2, "samples": 2, "top_k": 50, "nll_windows": 32}
TINY_PROBE = {"bars": 1, "samples": 1, "top_k": 50}


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


def assert_report_filled(out: Path, prompts: int, sampled: int = 1) -> None:
    """report.md and report.html hold every table, every cell filled, nothing undefined, every image there
    (`sampled`: the systems whose samples have piano rolls)."""
    markdown, html = (out / "report.md").read_text(), (out / "report.html").read_text()
    table_rows = [line for line in markdown.splitlines() if line.startswith("| ")]
    probes = len(probe_figures())
    assert len(table_rows) == (
        2 * 2  # NLL per token, NLL per note
        + 2  # key agreement
        + (1 + len(METRICS))
        + (1 + 1 + len(TEXTURES))
        + 2 * (1 + probes)  # probe: summary, per prompt, piano rolls
        + 2 * (1 + prompts)  # prompts and samples, piano rolls
    )
    for line in table_rows:
        assert all(cell.strip() for cell in line.strip("|").split(" | ")), line
    assert not re.search(r"\bnan\b|n/a", markdown, re.IGNORECASE)
    assert html.count("<tr>") == len(table_rows) and "<td></td>" not in html and "n/a" not in html
    images = re.findall(r"!\[[^]]*\]\(([^)]+)\)", markdown)
    # A roll per prompt for each sampled system and the truth; one per probe figure for each sampled system.
    assert len(images) == prompts * (sampled + 1) + probes * sampled and html.count("<img ") == len(images)
    for image in images:
        assert (out / image).is_file(), image  # the probe's piano rolls are linked from its own folder


def assert_measures_side_by_side(results: dict, prompts: int, samples: int, baselines: tuple = ()) -> None:
    """Every system in the tables of key agreement and NLL, with the counts behind each value."""
    nll = results["nll"]["systems"]
    assert set(nll) == {"RWKV-7", *baselines, "unigram"}
    for system in nll.values():
        assert system["per_token"][3] == system["per_note"][3] == results["nll"]["windows"]
        # Per note = the same total NLL over fewer items than tokens.
        ratio = results["nll"]["tokens"] / results["nll"]["notes"]
        assert system["per_note"][0] == pytest.approx(system["per_token"][0] * ratio)
    agreement = results["key_agreement"]
    assert list(agreement) == ["RWKV-7", *baselines, REPEAT, OTHER_PIECE, TRUTH]
    counts = {"RWKV-7": prompts * samples, REPEAT: prompts, OTHER_PIECE: prompts, TRUTH: prompts}
    counts.update({baseline: prompts * samples for baseline in baselines})
    for system, (mean, low, high, n) in agreement.items():
        assert len(results["key_agreement_values"][system]) == counts[system]
        assert 0 <= low <= mean <= high <= 1, system
    probe = results["probe"]
    assert probe["summary"][PROBE_REPEAT][0] == 1.0 and len(probe["prompts"]) == len(probe_figures())
    assert probe["sampled"] == ["RWKV-7", *baselines]


@pytest.mark.slow
@pytest.mark.maestro
def test_snakemake_evaluate_on_a_tiny_run_writes_a_filled_report(tmp_path, tokenized_workflow, maestro_dir):
    workdir = tokenized_workflow
    write_tiny_run_overrides(
        workdir,
        maestro_dir,
        {
            "windows": {"context_bars": 2, "completion_bars": 2, "step": 4, "max_tokens": 1024},
            "train": {**TINY_TRAIN, "run": "tiny"},
            "evaluate": TINY_EVALUATE,
            "probe": TINY_PROBE,
        },
    )
    snakemake(workdir, "evaluate", "--configfile", "overrides.yaml")  # with both baselines, the default

    out = workdir / "results/eval/tiny"
    results = json.loads((out / "metrics.json").read_text())
    assert_measures_side_by_side(results, prompts=2, samples=2, baselines=("Transformer", "n-gram"))
    for run in ["tiny-transformer/best.pth", "tiny-ngram/model.npz"]:  # beside the run, not over it
        assert (workdir / "results/checkpoints" / run).is_file(), run
    assert len(results["metric_values"]["RWKV-7"]["pitch-class overlap"]) == 4  # P x K
    assert [(p["prompt_bars"], p["samples"]["RWKV-7"]["bars"]) for p in results["prompts"]] == [(2, [2, 2])] * 2
    for p in range(2):
        for name in ["rwkv-7/sample-0.mid", "rwkv-7/sample-1.mid", "rwkv-7/sample-0.png", "truth.mid", "truth.png"]:
            assert (out / f"samples/prompt-{p}" / name).is_file(), name
    probe = json.loads((workdir / "results/probe/tiny/probe.json").read_text())
    assert probe["settings"]["bars"] == 1 and results["probe"] == probe
    assert_report_filled(out, prompts=2, sampled=3)

    # The trained checkpoint, as a composer would use it: `pianomuse complete` on a real MAESTRO prompt.
    prompt = maestro_dir / "2004/MIDI-Unprocessed_SMF_02_R1_2004_01-05_ORIG_MID--AUDIO_02_R1_2004_05_Track05_wav.midi"
    completions = tmp_path / "completions"
    command = [
        "complete",
        str(prompt),
        "--checkpoint",
        str(workdir / "results/checkpoints/tiny/best.pth"),
        "--prompt-bars",
        "4",
        "--bars",
        "2",
        "--samples",
        "3",
        "--temperature",
        "1.0",
        "--top-p",
        "0.95",
        "--seed",
        "7",
        "-o",
        str(completions),
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
    evaluate = {**TINY_EVALUATE, "baselines": []}  # the tiny run above has them
    write_tiny_run_overrides(workdir, maestro_dir, {"train": TINY_TRAIN, "evaluate": evaluate, "probe": TINY_PROBE})
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
    assert_measures_side_by_side(results, prompts=2, samples=2)
    for p, prompt in enumerate(results["prompts"]):
        assert prompt["prompt_bars"] == 4
        assert prompt["samples"]["RWKV-7"]["bars"] == [12, 12] and prompt["samples"]["RWKV-7"]["token_errors"] == [0, 0]
        for k in range(2):
            continuation = tokenizer.encode(Score(str(out / f"samples/prompt-{p}/rwkv-7/sample-{k}.continuation.mid")))[
                0
            ]
            # Re-encoding drops trailing empty bars, so a valid 12-bar continuation may read as fewer.
            assert tokenizer.tokens_errors(continuation) == 0 and continuation.tokens.count("Bar_None") <= 12
    assert_report_filled(out, prompts=2)
    assert "(the whole prompt cycled when it has fewer bars)" in (out / "report.md").read_text()


def windows_dataset(tokenizer, n: int, seed: int) -> datasets.Dataset:
    """`n` windows of random token ids of random lengths (the NLL needs no grammar), two pieces."""
    rng = np.random.default_rng(seed)
    vocab = len(tokenizer.vocab)
    contexts = [rng.integers(4, vocab, size=rng.integers(2, 40)).tolist() for _ in range(n)]
    completions = [rng.integers(4, vocab, size=rng.integers(1, 30)).tolist() for _ in range(n)]
    return datasets.Dataset.from_dict(
        {"context_ids": contexts, "completion_ids": completions, "piece_id": [f"p{i % 2}" for i in range(n)]}
    )


def test_model_nll_per_window_matches_scoring_each_window_alone(checkpoint):
    model, tokenizer = load_rwkv_pth(checkpoint), load_tokenizer(checkpoint.parent / "tokenizer.json")
    windows = windows_dataset(tokenizer, 7, seed=0)
    contexts, completions = windows["context_ids"], windows["completion_ids"]
    # A small budget: several batches, rows padded to their batch's longest.
    got = model_window_nll(model, torch.device("cpu"), 150, tokenizer.pad_token_id)(contexts, completions)
    with torch.no_grad():
        for i, (context, completion) in enumerate(zip(contexts, completions)):
            sequence = context + completion
            log_probs = torch.log_softmax(model(torch.tensor([sequence[:-1]]))[0].float(), dim=-1)
            positions = torch.arange(len(context) - 1, len(sequence) - 1)
            expected = -log_probs[positions, torch.tensor(completion)].sum().item()
            assert got[i] == pytest.approx(expected, rel=1e-4), i


def test_nll_per_token_and_per_note_of_every_likelihood_system(tokenizer_path):
    tokenizer = load_tokenizer(tokenizer_path)
    train, test = windows_dataset(tokenizer, 20, seed=1), windows_dataset(tokenizer, 12, seed=2)
    pitches = set(pitch_token_ids(tokenizer).tolist())
    tokens = sum(len(m) for m in test["completion_ids"])
    notes = sum(i in pitches for m in test["completion_ids"] for i in m)
    two_nats = lambda contexts, completions: np.array([2.0 * len(m) for m in completions])  # noqa: E731
    results = nll_results(
        {"two nats a token": two_nats, "unigram": unigram_window_nll(train, len(tokenizer.vocab))},
        tokenizer,
        test,
        n_windows=100,
        seed=0,
    )
    assert (results["windows"], results["tokens"], results["notes"]) == (12, tokens, notes)
    flat = results["systems"]["two nats a token"]
    assert flat["per_token"][0] == pytest.approx(2.0) and flat["per_token"][3] == 12
    assert flat["per_note"][0] == pytest.approx(2.0 * tokens / notes)
    # The unigram scores the windows as the training-time baseline scores a split.
    assert results["systems"]["unigram"]["per_token"][0] == pytest.approx(
        unigram_nll(train, test, len(tokenizer.vocab))
    )


class Oracle:
    """A sampled system that plays the true continuation K times: what a system that reads the prompt perfectly
    would score."""

    def __init__(self, completer, truths: dict[tuple, list[int]]):
        self.completer, self.truths = completer, truths

    def complete_ids(self, prompt, sampling, progress=True):
        ids = self.truths[tuple(prompt)]
        full = self.completer.tokenizer.decode([prompt + ids])
        alone = self.completer.decode_last_bars(prompt + ids, sampling.bars)
        tick = self.completer.bars_ticks(prompt, full.tpq)
        k = sampling.samples
        return Completion([full] * k, [alone] * k, [], prompt, [ids] * k, tick)


def three_test_windows(completer: Completer) -> tuple[dict, datasets.Dataset]:
    """Three pieces of 6 bars, each one test window: 4 bars of context, 2 of completion."""
    bar_id = completer.grammar.bar_id
    rows = {"context_ids": [], "completion_ids": [], "piece_id": [], "start_bar": []}
    for piece in range(3):
        ids = completer.prompt_ids(make_piano_score(6, 4, pitches=[60 + 2 * piece, 64, 67, 72], seed=piece), None)
        bars = [i for i, token in enumerate(ids) if token == bar_id] + [len(ids)]
        rows["context_ids"].append(ids[: bars[4]])
        rows["completion_ids"].append(ids[bars[4] :])
        rows["piece_id"].append(f"piece-{piece}")
        rows["start_bar"].append(0)
    return rows, datasets.Dataset.from_dict(rows)


def evaluate_settings(prompts: int) -> dict:
    """An `evaluate` config section for the three test windows: K = 2 samples, every window scored for NLL."""
    return {
        "prompts": prompts,
        "samples": 2,
        "temperature": 1.0,
        "top_p": 0.95,
        "top_k": None,
        "seed": 0,
        "stay_in_key": 0.0,
        "nll_windows": 3,
    }


def test_evaluate_run_takes_its_systems_as_data(checkpoint, tmp_path):
    """Two sampled systems (the model and an oracle) and three likelihood systems, each in every table it applies
    to; the oracle scores perfectly where a continuation is compared with the truth, and as the truth on key
    agreement."""
    completer = Completer.load(checkpoint)
    rows, test_ds = three_test_windows(completer)
    oracle = Oracle(completer, {tuple(c): m for c, m in zip(rows["context_ids"], rows["completion_ids"])})
    two_nats = lambda contexts, completions: np.array([2.0 * len(m) for m in completions])  # noqa: E731
    settings = evaluate_settings(prompts=3)
    results = evaluate_run(
        settings,
        2,
        completer,
        {"RWKV-7": completer, "oracle": oracle},
        {
            "RWKV-7": model_window_nll(completer.model, torch.device("cpu"), 4096, completer.tokenizer.pad_token_id),
            "unigram": unigram_window_nll(test_ds, len(completer.tokenizer.vocab)),
            "two nats": two_nats,
        },
        test_ds,
        tmp_path / "eval",
    )
    assert list(results["nll"]["systems"]) == ["RWKV-7", "unigram", "two nats"]
    assert results["nll"]["systems"]["two nats"]["per_token"][0] == pytest.approx(2.0)
    assert list(results["key_agreement"]) == ["RWKV-7", "oracle", REPEAT, OTHER_PIECE, TRUTH]
    truth_values = results["key_agreement_values"][TRUTH]
    assert results["key_agreement_values"]["oracle"] == [value for value in truth_values for _ in range(2)]
    assert {name: summary[0] for name, summary in results["metrics"]["oracle"].items()} == {
        name: perfect for name, (_, perfect) in METRICS.items()
    }
    assert "probe" not in results
    markdown = (tmp_path / "eval/report.md").read_text()
    assert "| measure | RWKV-7 | unigram | two nats |" in markdown
    agreement_header = (
        "| RWKV-7 | oracle | repeat the prompt's last bars | bars of another test piece | true continuation |"
    )
    assert f"| measure {agreement_header}" in markdown
    assert "samples drawn at temperature 1.0, top-p 0.95, top-k all; share of" in markdown
    for p in range(3):
        for system in ["rwkv-7", "oracle"]:
            assert (tmp_path / f"eval/samples/prompt-{p}/{system}/sample-1.mid").is_file()
        assert f"samples/prompt-{p}/oracle/sample-0.png" in markdown


def test_evaluate_run_samples_with_the_stay_in_key_setting_and_says_so(checkpoint, tmp_path):
    """A strong pull into the prompt's key puts every sampled note there (the random model wanders otherwise), and
    the report names the setting beside temperature and top-p."""
    completer = Completer.load(checkpoint)
    _, test_ds = three_test_windows(completer)
    settings = {**evaluate_settings(prompts=3), "stay_in_key": 40.0}
    likelihoods = {"unigram": unigram_window_nll(test_ds, len(completer.tokenizer.vocab))}
    results = evaluate_run(settings, 2, completer, {"RWKV-7": completer}, likelihoods, test_ds, tmp_path / "eval")
    values = [v for v in results["key_agreement_values"]["RWKV-7"] if v is not None and not np.isnan(v)]
    assert values and all(v == 1.0 for v in values)
    assert results["sampling"] == {"temperature": 1.0, "top_p": 0.95, "top_k": None, "stay_in_key": 40.0}
    markdown = (tmp_path / "eval/report.md").read_text()
    assert "samples drawn at temperature 1.0, top-p 0.95, top-k all, stay-in-key 40.0 nats; share of" in markdown


def test_evaluate_run_with_a_renderer_plays_every_sample_and_truth_in_the_report(checkpoint, tmp_path, renderer):
    completer = Completer.load(checkpoint)
    _, test_ds = three_test_windows(completer)
    settings = evaluate_settings(prompts=2)
    likelihoods = {"unigram": unigram_window_nll(test_ds, len(completer.tokenizer.vocab))}
    out = tmp_path / "eval"
    evaluate_run(settings, 2, completer, {"RWKV-7": completer}, likelihoods, test_ds, out, renderer=renderer)
    html = (out / "report.html").read_text()
    played = re.findall(r'<audio controls preload="none" src="([^"]+)">', html)
    expected = [
        f"samples/prompt-{p}/{name}"
        for p in range(2)
        for name in ["rwkv-7/sample-0.wav", "rwkv-7/sample-1.wav", "truth.wav"]
    ]
    assert played == expected
    for path in played:
        samples, rate = read_wav(out / path)
        assert rate == SAMPLE_RATE and np.abs(samples).max() > 0.01  # the prompt, at least, is heard
    markdown = (out / "report.md").read_text()
    assert "## Listen" in markdown and "[truth.wav](samples/prompt-1/truth.wav)" in markdown
