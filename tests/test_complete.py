"""Completion: the grammar mask, seeded sampling, shared prefill, the Completer and the `pianomuse complete` CLI.

A random tiny model is the hardest case for the grammar (it would emit anything), and it needs no training run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from midi_factory import make_piano_score, write_midi
from miditok import TokSequence
from symusic import Note, Score, Tempo, Track

import pianomuse.complete as complete_module
from pianomuse.cli import main
from pianomuse.complete import Completer, Sampling
from pianomuse.decode_step import CompiledStep
from pianomuse.sampling import StreamUniforms
from pianomuse.tokenizer import build_tokenizer, save_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="session")
def completer(checkpoint) -> Completer:
    return Completer.load(checkpoint)


@pytest.fixture(scope="session")
def prompt_midi(tmp_path_factory) -> Path:
    return write_midi(make_piano_score(6, 4, seed=1), tmp_path_factory.mktemp("prompt") / "prompt.mid")


def check_samples(completer: Completer, prompt: list[int], continuations: list[list[int]], bars: int) -> None:
    tokenizer = completer.tokenizer
    (signature, *_) = [tokenizer[i] for i in reversed(prompt) if tokenizer[i].startswith("TimeSig_")]
    for ids in continuations:
        assert tokenizer.tokens_errors(TokSequence(ids=prompt + ids)) == 0, [tokenizer[i] for i in ids]
        # The prompt's meter kept: a model trained on MAESTRO (4/4 throughout) would turn every other one into 4/4.
        assert {tokenizer[i] for i in ids if tokenizer[i].startswith("TimeSig_")} == {signature}
        assert sum(i == completer.grammar.bar_id for i in ids) == bars
        assert all(tokenizer[i].split("_")[0] not in {"PAD", "BOS", "EOS", "PitchDrum"} for i in ids)


@pytest.mark.parametrize("time_signature", [(4, 4), (3, 4), (6, 8)])
def test_random_model_samples_always_decode_with_exactly_m_bars(completer, time_signature):
    """200 streams per time signature (25 seeds x 8 samples), hot sampling, short bars so the budget path runs too."""
    prompt = completer.prompt_ids(make_piano_score(3, 3, time_signature=time_signature, seed=2), 2)
    for seed in range(25):
        sampling = Sampling(bars=2, samples=8, temperature=1.5, top_p=1.0, seed=seed, max_tokens_per_bar=24)
        continuations = completer.generate(prompt, sampling, progress=False)
        check_samples(completer, prompt, continuations, bars=2)


def test_top_k_and_top_p_keep_samples_valid(completer):
    prompt = completer.prompt_ids(make_piano_score(2, 4), None)
    continuations = completer.generate(prompt, Sampling(bars=3, samples=4, top_k=5, top_p=0.5, seed=3), progress=False)
    check_samples(completer, prompt, continuations, bars=3)


def test_same_seed_same_output_other_seed_other_output(completer, prompt_midi):
    def run(seed):
        completion = completer.complete(prompt_midi, 2, Sampling(bars=2, samples=3, seed=seed), progress=False)
        return completion.continuation_ids

    first = run(7)
    assert run(7) == first
    assert run(8) != first
    assert len({tuple(ids) for ids in first}) == 3  # the samples of one run differ from each other


C_MAJOR_CHORDS = [60, 64, 67, 72, 62, 65, 69, 71, 60, 64, 67, 72]  # C major, tonic and dominant weighed most


def pitch_classes(completer: Completer, ids: list[int]) -> list[int]:
    return [int(completer.grammar.pitch_class[i]) for i in ids if completer.grammar.is_pitch[i]]


def test_stay_in_key_lowers_only_the_pitches_outside_the_prompts_key(completer):
    grammar = completer.grammar
    prompt = completer.prompt_ids(make_piano_score(4, 6, pitches=C_MAJOR_CHORDS, seed=4), None)
    penalty = completer.prompt_key_penalty(prompt, 2.5)
    outside = grammar.is_pitch & torch.isin(grammar.pitch_class, torch.tensor([1, 3, 6, 8, 10]))
    assert outside.sum() > 0 and (grammar.is_pitch & ~outside).sum() > 0
    assert torch.equal(penalty, torch.where(outside, -2.5, 0.0))  # C major's scale; no other token touched
    assert completer.prompt_key_penalty(prompt, 0.0) == 0.0
    assert completer.prompt_key_penalty(prompt[:1], 2.5) == 0.0  # a prompt of one empty bar has no key


def test_stay_in_key_keeps_the_continuations_in_the_prompts_key(completer):
    """The random model wanders out of C major at strength 0 (the model as it is); a strong pull keeps every pitch
    in it, and the grammar still holds."""
    prompt = completer.prompt_ids(make_piano_score(4, 6, pitches=C_MAJOR_CHORDS, seed=4), None)
    settings = {"bars": 2, "samples": 4, "temperature": 1.2, "top_p": 1.0, "seed": 11, "max_tokens_per_bar": 40}
    free = completer.generate(prompt, Sampling(**settings, stay_in_key=0.0), progress=False)
    kept = completer.generate(prompt, Sampling(**settings, stay_in_key=40.0), progress=False)
    check_samples(completer, prompt, kept, bars=2)
    scale = {0, 2, 4, 5, 7, 9, 11}
    free_classes = [c for ids in free for c in pitch_classes(completer, ids)]
    kept_classes = [c for ids in kept for c in pitch_classes(completer, ids)]
    assert sum(c not in scale for c in free_classes) > 0.2 * len(free_classes)
    assert kept_classes and set(kept_classes) <= scale


def test_progress_counts_finished_bars_from_zero_and_shows_100_percent_once(completer, capsys):
    prompt = completer.prompt_ids(make_piano_score(2, 4), None)
    completer.generate(prompt, Sampling(bars=2, samples=3, seed=2, max_tokens_per_bar=24), progress=True)
    frames = [frame.strip() for frame in capsys.readouterr().err.replace("\n", "\r").split("\r") if frame.strip()]
    counts = [int(frame.split("|")[2].split("/")[0]) for frame in frames]
    assert counts[0] == 0 and counts == sorted(counts) and counts.count(6) == 1
    assert all(frame.split("|")[2].split("/")[1].startswith("6 ") for frame in frames)


def test_on_bars_reports_finished_bars_up_to_k_times_m_with_the_bar_off(completer, capsys):
    prompt = completer.prompt_ids(make_piano_score(2, 4), None)
    counts = []
    sampling = Sampling(bars=3, samples=4, seed=2, max_tokens_per_bar=24)
    completer.generate(prompt, sampling, progress=False, on_bars=counts.append)
    assert counts[-1] == 12 and counts == sorted(set(counts)) and counts[0] > 0
    assert capsys.readouterr().err == ""


def test_prompt_is_read_once_and_batched_samples_match_single_ones(completer, monkeypatch):
    prompt = completer.prompt_ids(make_piano_score(2, 4), None)
    prompt_reads = []
    forward = completer.model.forward

    def counting_forward(idx, *args, **kwargs):
        if idx.shape[1] > 1:
            prompt_reads.append(idx.shape)
        return forward(idx, *args, **kwargs)

    monkeypatch.setattr(completer.model, "forward", counting_forward)
    batched = completer.generate(prompt, Sampling(bars=2, samples=4, seed=5), progress=False)
    assert prompt_reads == [torch.Size([1, len(prompt) + 1])]  # the prompt and the first Bar, once for 4 samples

    for i in range(4):
        # Stream i alone, drawing from the generator it had in the batch.
        monkeypatch.setattr(complete_module, "StreamUniforms", lambda seed, streams, i=i: StreamUniforms(seed, [i]))
        assert completer.generate(prompt, Sampling(bars=2, samples=1, seed=5), progress=False) == [batched[i]]


def test_compiled_decoding_step_samples_what_the_twin_samples(completer, monkeypatch):
    """The Completer decodes with the compiled CPU step; with `RWKV7.step` in its place the samples are the same."""
    assert isinstance(completer.decoder.step, CompiledStep)
    prompt = completer.prompt_ids(make_piano_score(2, 4), None)
    sampling = Sampling(bars=2, samples=4, seed=11)
    compiled = completer.generate(prompt, sampling, progress=False)
    monkeypatch.setattr(completer.decoder, "step", completer.model.step)
    assert completer.generate(prompt, sampling, progress=False) == compiled


def test_complete_returns_prompt_plus_continuation(completer, prompt_midi):
    result = completer.complete(prompt_midi, (2, 4), Sampling(bars=2, samples=2, seed=0), progress=False)
    assert sum(i == completer.grammar.bar_id for i in result.prompt_ids) == 3
    assert result.continuation_tick == 3 * 4 * result.full[0].tpq  # three 4/4 bars
    for full, alone, summary in zip(result.full, result.continuations, result.summaries, strict=True):
        assert summary.bars == 2 and summary.notes == alone.note_num()
        assert full.note_num() == 12 + alone.note_num()  # the prompt's 3 bars of 4 notes, then the continuation
        assert alone.tempos[0].time == 0  # the continuation alone states the tempo in force


def notes_of(track, start: int, stop: int, shift: int = 0) -> list[tuple]:
    return [(n.time - shift, n.duration, n.pitch, n.velocity) for n in track.notes if start <= n.time < stop]


@pytest.mark.parametrize("bars", [3, (2, 4)])
def test_written_samples_keep_the_composers_prompt_bars_untouched(completer, checkpoint, tmp_path, capsys, bars):
    """sample-{i}.mid: the file's own prompt bars note for note, at its resolution and tempo map (no round trip
    through tokens), then the continuation on a track of its own at that resolution, in the tempo in force."""
    score = make_piano_score(5, 4, tpq=480, tempo_qpm=120.0, seed=4)
    for i, note in enumerate(score.tracks[0].notes):  # off the tokenizer's grid
        note.time += 7 * (i % 3)
        note.duration -= 5
    score.tempos.append(Tempo(2 * 1920 + 240, qpm=97.0))  # mid-bar, in the prompt
    left = Track("left hand", 0, False)
    left.notes.append(Note(1920 + 100, 1500, 40, 55))
    score.tracks.append(left)
    prompt = write_midi(score, tmp_path / "prompt.mid")
    original = Score(str(prompt))
    first, last = (1, bars) if isinstance(bars, int) else bars
    start, stop = (first - 1) * 1920, last * 1920
    selection = ["--prompt-bars", str(bars)] if isinstance(bars, int) else ["--from-bar", "2", "--to-bar", "4"]
    out = tmp_path / "out"
    args = ["complete", str(prompt), "--checkpoint", str(checkpoint), *selection, "--bars", "2", "--samples", "2"]
    assert run_cli([*args, "-o", str(out)], capsys)[0] == 0
    for i in range(2):
        full, alone = Score(str(out / f"sample-{i}.mid")), Score(str(out / f"sample-{i}.continuation.mid"))
        assert full.tpq == alone.tpq == 480
        assert [t.name for t in full.tracks] == ["piano", "left hand", "pianomuse continuation"]
        for written, given in zip(full.tracks[:2], original.tracks, strict=True):
            assert notes_of(written, 0, stop - start) == notes_of(given, start, stop, shift=start)
        expected_tempos = [(0, 500000)] + ([(2 * 1920 + 240 - start, 618557)] if start < 2 * 1920 else [])
        assert [(t.time, t.mspq) for t in full.tempos if t.time < stop - start] == expected_tempos
        assert [(t.time, t.mspq) for t in alone.tempos][:1] == [(0, 618557)]  # 97 qpm goes on, not rounded
        continuation = full.tracks[2]
        assert all(n.time >= stop - start for n in continuation.notes)
        assert notes_of(continuation, 0, 10**9, shift=stop - start) == notes_of(alone.tracks[0], 0, 10**9)


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_writes_every_sample(checkpoint, prompt_midi, tmp_path, capsys):
    out = tmp_path / "out"
    args = [
        "complete",
        str(prompt_midi),
        "--checkpoint",
        str(checkpoint),
        "--from-bar",
        "2",
        "--to-bar",
        "5",
        "--bars",
        "2",
        "--samples",
        "2",
        "--temperature",
        "0.9",
        "--top-p",
        "0.95",
        "--top-k",
        "50",
        "--seed",
        "1",
        "-o",
        str(out),
    ]
    code, stdout, _ = run_cli(args, capsys)
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        f"sample-{i}{suffix}" for i in range(2) for suffix in [".continuation.mid", ".mid", ".png"]
    ]
    assert [line.split(":")[0] for line in stdout.splitlines()] == ["sample-0", "sample-1"]
    assert all(", 2 bars, " in line for line in stdout.splitlines())


def test_cli_takes_a_run_folder_for_its_best_checkpoint(checkpoint, prompt_midi, tmp_path, capsys):
    args = ["complete", str(prompt_midi), "--checkpoint", str(checkpoint.parent), "--prompt-bars", "2", "--bars", "1"]
    code, stdout, stderr = run_cli([*args, "--samples", "1", "-o", str(tmp_path / "out")], capsys)
    assert code == 0, stderr
    assert stdout.startswith("sample-0: ") and (tmp_path / "out/sample-0.mid").is_file()


def test_cli_help_explains_every_option_and_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["complete", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option in [
        "--checkpoint",
        "--tokenizer",
        "--prompt-bars",
        "--from-bar",
        "--to-bar",
        "--bars",
        "--samples",
        "--temperature",
        "--top-p",
        "--top-k",
        "--stay-in-key",
        "--seed",
        "--device",
        "--threads",
        "--output",
    ]:
        assert f"{option} " in text
    for shown in [
        "M (default: 4)",
        "K (default: 4)",
        f"(default: {Sampling().temperature})",
        f"(default: {Sampling().top_p})",
        f"about 7x rarer at temperature 1 (default: {Sampling().stay_in_key})",
        "(default: 0)",
        "(default: cpu)",
        "the last bar J of the prompt",
        "its best.pth is used",
    ]:
        assert shown in text, shown
    assert "%(default)" not in text


@pytest.fixture(scope="session")
def other_tokenizer(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("other") / "tokenizer.json"
    save_tokenizer(
        build_tokenizer([21, 108], [[0, 4, 8], [4, 12, 4]], 16, True, 32, [40, 250], True, True, ["PAD", "BOS", "EOS"]),
        path,
    )
    return path


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--prompt-bars", "9"], "the prompt has 6 bars but bars 1 to 9 were asked for"),
        (["--from-bar", "5", "--to-bar", "7"], "the prompt has 6 bars but bars 5 to 7 were asked for"),
        (["--from-bar", "4", "--to-bar", "2"], "are not a range of bars"),
        (["--temperature", "0"], "temperature must be greater than 0"),
        (["--temperature", "-1"], "temperature must be greater than 0"),
        (["--top-p", "0"], "top-p must be in (0, 1]"),
        (["--top-p", "1.5"], "top-p must be in (0, 1]"),
        (["--top-k", "0"], "top-k must be at least 1"),
        (["--stay-in-key", "-1"], "stay-in-key must be a number of at least 0"),
        (["--stay-in-key", "inf"], "stay-in-key must be a number of at least 0"),
        (["--stay-in-key", "nan"], "stay-in-key must be a number of at least 0"),
        (["--bars", "0"], "bars to generate must be at least 1"),
    ],
)
def test_cli_rejects_bad_settings(checkpoint, prompt_midi, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    code, _, stderr = run_cli(
        ["complete", str(prompt_midi), "--checkpoint", str(checkpoint), "-o", str(out), *extra], capsys
    )
    assert code == 1
    assert message in stderr and "Traceback" not in stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []  # nothing half-written, no staging folder left


def test_cli_rejects_bad_files(checkpoint, prompt_midi, other_tokenizer, tmp_path, capsys):
    not_midi = tmp_path / "notes.mid"
    not_midi.write_text("these are not MIDI bytes")
    cases = [
        ([str(not_midi), "--checkpoint", str(checkpoint)], "is not a readable MIDI file"),
        ([str(tmp_path / "absent.mid"), "--checkpoint", str(checkpoint)], "prompt file not found"),
        ([str(prompt_midi), "--checkpoint", str(tmp_path / "absent.pth")], "checkpoint not found"),
        ([str(prompt_midi), "--checkpoint", str(tmp_path)], "is a folder without best.pth; pass a training run's"),
        (
            [str(prompt_midi), "--checkpoint", str(checkpoint), "--tokenizer", str(other_tokenizer)],
            "tokenizer mismatch",
        ),
    ]
    for args, message in cases:
        code, _, stderr = run_cli(["complete", *args, "-o", str(tmp_path / "out")], capsys)
        assert code == 1 and message in stderr, stderr
        assert not (tmp_path / "out").exists()


def test_cli_usage_errors_exit_2(checkpoint, prompt_midi, tmp_path, capsys):
    base = ["complete", str(prompt_midi), "--checkpoint", str(checkpoint), "-o", str(tmp_path / "out")]
    for extra in [["--prompt-bars", "2", "--from-bar", "1", "--to-bar", "2"], ["--from-bar", "1"], ["--bars", "x"]]:
        with pytest.raises(SystemExit) as exit_info:
            main(base + extra)
        assert exit_info.value.code == 2
        assert "usage:" in capsys.readouterr().err


def test_installed_command_reports_errors_without_traceback(checkpoint, tmp_path):
    not_midi = tmp_path / "notes.mid"
    not_midi.write_text("not MIDI")
    command = [sys.executable, "-m", "pianomuse.cli", "complete", str(not_midi), "--checkpoint", str(checkpoint)]
    result = subprocess.run([*command, "-o", str(tmp_path / "out")], capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("pianomuse: error: ") and "Traceback" not in result.stderr


@pytest.mark.maestro
def test_complete_a_maestro_prompt(maestro_dir, checkpoint, completer, tmp_path, capsys):
    midi = min(maestro_dir.glob("2004/*.midi"))
    out = tmp_path / "out"
    args = ["complete", str(midi), "--checkpoint", str(checkpoint), "--from-bar", "3", "--to-bar", "6"]
    code, stdout, stderr = run_cli([*args, "--bars", "2", "--samples", "2", "--seed", "0", "-o", str(out)], capsys)
    assert code == 0, stderr
    assert len(stdout.splitlines()) == 2
    for i in range(2):
        assert (out / f"sample-{i}.png").stat().st_size > 0
        full = completer.tokenizer.encode(str(out / f"sample-{i}.mid"))
        alone = completer.tokenizer.encode(str(out / f"sample-{i}.continuation.mid"))
        assert completer.tokenizer.tokens_errors(full[0]) == 0
        assert full[0].tokens.count("Bar_None") <= 6 and alone[0].tokens.count("Bar_None") <= 2
    result = completer.complete(midi, (3, 6), Sampling(bars=2, samples=2, seed=0), progress=False)
    check_samples(completer, result.prompt_ids, result.continuation_ids, bars=2)
    assert sum(i == completer.grammar.bar_id for i in result.prompt_ids) == 4
