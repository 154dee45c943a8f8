"""The pattern continuation probe: its prompt set, its scorer on constructed continuations, and `pianomuse probe`
end to end on a tiny random model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from symusic import Score

from pianomuse.cli import main
from pianomuse.complete import CompletionError
from pianomuse.metrics import KEY_NAMES, key_scale, notes_of
from pianomuse.probe import (
    FIGURE_SETS,
    OTHER_FIGURE,
    PROMPT_BARS,
    REPEAT,
    TEXTURES,
    TRANSPOSED,
    bar_events,
    check_tokenizer_resolution,
    f1,
    figure_score,
    probe_figures,
)
from pianomuse.tokenizer import build_tokenizer

REPO = Path(__file__).resolve().parents[1]
FIGURES = probe_figures()
VALIDATION_FIGURES = probe_figures("validation")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("figure_set", list(FIGURE_SETS))
def test_prompt_set_is_fixed_and_covers_textures_meters_and_keys(figure_set):
    figures = probe_figures(figure_set)
    textures = FIGURE_SETS[figure_set].textures
    assert 20 <= len(figures) <= 30
    assert probe_figures(figure_set) == figures  # the same prompts on every call
    assert {f.texture for f in figures} == set(textures)
    for texture in textures:
        assert {f.time_signature for f in figures if f.texture == texture} == {(3, 4), (4, 4)}, texture
    keys = {f.key for f in figures}
    assert len(keys) >= 12 and any(k.endswith("major") for k in keys) and any(k.endswith("minor") for k in keys)
    assert len({f.name for f in figures}) == len(figures)


def test_the_test_set_starts_with_the_first_measurements_figure():
    assert FIGURES[0].key == "C major" and [p for _, _, p in FIGURES[0].notes[:8]] == [60, 64, 67, 72, 76, 67, 72, 76]


def shape(figure) -> tuple:
    """A figure up to transposition: its meter and its (onset, duration, pitch above the lowest) notes."""
    low = min(pitch for _, _, pitch in figure.notes)
    return figure.time_signature, tuple(
        sorted((onset, duration, pitch - low) for onset, duration, pitch in figure.notes)
    )


def test_validation_figures_are_their_own_patterns_not_the_test_figures_in_other_keys():
    assert not set(FIGURE_SETS["validation"].textures) & set(TEXTURES)
    assert not {shape(f) for f in VALIDATION_FIGURES} & {shape(f) for f in FIGURES}
    assert not {f.name for f in VALIDATION_FIGURES} & {f.name for f in FIGURES}
    assert [f.key for f in VALIDATION_FIGURES] != [f.key for f in FIGURES]


def test_an_unknown_figure_set_is_refused():
    with pytest.raises(CompletionError, match="unknown figure set 'train': choose from test, validation"):
        probe_figures("train")


@pytest.mark.parametrize("figure", FIGURES + VALIDATION_FIGURES, ids=lambda f: f.name)
def test_each_prompt_is_its_figure_played_eight_times_like_a_score(figure):
    score = figure.score(PROMPT_BARS)
    notes = notes_of(score)
    assert score.tpq == 480 and len(score.tempos) == 1 and len(score.time_signatures) == 1
    assert set(notes["velocity"].tolist()) == {80}
    assert len(notes) == PROMPT_BARS * len(figure.notes)
    assert all(21 <= p <= 108 for p in notes["pitch"].tolist())
    for onset, duration, _ in figure.notes:
        assert 0 <= onset < figure.slots_per_bar and onset + duration <= figure.slots_per_bar  # inside its bar
    assert bar_events(score, figure.slots_per_bar, PROMPT_BARS) == [figure.events()] * PROMPT_BARS
    # Every note of the figure lies in its key's scale, so a key-keeping continuation can copy it exactly.
    assert all(key_scale(KEY_NAMES.index(figure.key))[pitch % 12] for _, _, pitch in figure.notes)


def test_scorer_gives_one_for_a_copy_and_little_for_near_misses():
    figure = FIGURES[0]  # sixteenth notes: C4 E4 G4 C5 E5 G4 C5 E5, twice a bar
    assert figure_score(figure.score(4), figure, 4) == 1.0
    assert figure_score(figure.score(4, transpose=1), figure, 4) == 0.0
    assert figure_score(figure.score(4).shift_time(120), figure, 4) < 0.2  # a sixteenth late: every onset wrong
    assert figure_score(Score(480), figure, 4) == 0.0  # silence
    # Two bars of the figure, two of silence: the mean over the four bars.
    assert figure_score(figure.score(2), figure, 4) == 0.5


def test_scorer_f1_counts_missing_and_extra_notes_alike():
    full = {(0, 60), (1, 64), (2, 67), (3, 72)}
    assert f1(full, full) == 1.0
    assert f1({(0, 60), (1, 64)}, full) == pytest.approx(2 * 2 / 6)  # half the figure
    doubled = full | {(5, 61), (6, 62), (7, 63), (8, 65)}  # the figure and as many notes again
    assert f1(doubled, full) == pytest.approx(2 * 4 / 12)
    assert f1(set(), full) == 0.0 and f1(set(), set()) == 1.0


def test_scorer_reads_any_resolution_and_rounds_onsets_to_the_nearest_sixteenth():
    figure = FIGURES[0]
    coarse = figure.score(4).resample(8)  # 8 ticks per quarter, as the tokenizer decodes
    assert coarse.tpq == 8 and figure_score(coarse, figure, 4) == 1.0
    assert figure_score(figure.score(4).shift_time(40), figure, 4) == 1.0  # a third of a sixteenth late: same slot


def test_probe_command_end_to_end_on_a_tiny_model(checkpoint, tmp_path, capsys):
    out = tmp_path / "probe"
    args = ["probe", "--checkpoint", str(checkpoint), "--bars", "2", "--samples", "2", "--seed", "3", "-o", str(out)]
    assert main(args) == 0
    stdout = capsys.readouterr().out
    assert "RWKV-7: " in stdout and "repeat the figure: 1.000" in stdout

    results = json.loads((out / "probe.json").read_text())
    assert results["figures"] == "test" and results["settings"]["bars"] == 2 and results["settings"]["samples"] == 2
    assert [p["name"] for p in results["prompts"]] == [f.name for f in FIGURES]
    for prompt in results["prompts"]:
        scores = prompt["scores"]
        assert len(scores["RWKV-7"]) == 2 and all(0 <= s <= 1 for s in scores["RWKV-7"])
        # Through the tokenizer like a model's continuation: the figure played on scores 1, a semitone up 0.
        assert scores[REPEAT] == [1.0] and scores[TRANSPOSED] == [0.0] and scores[OTHER_FIGURE][0] < 0.5
        folder = out / "prompts" / prompt["name"]
        assert sorted(p.name for p in folder.iterdir()) == [
            "prompt.mid",
            "rwkv-7-sample-0.mid",
            "rwkv-7-sample-1.mid",
            "rwkv-7.png",
        ]
        assert (out / prompt["rolls"]["RWKV-7"]).stat().st_size > 0
        figure = next(f for f in FIGURES if f.name == prompt["name"])
        assert Score(str(folder / "prompt.mid")).note_num() == PROMPT_BARS * len(figure.notes)
    mean, low, high, n = results["summary"]["RWKV-7"]
    assert n == len(FIGURES) and 0 <= low <= mean <= high <= 1
    assert mean == pytest.approx(np.mean([np.mean(p["scores"]["RWKV-7"]) for p in results["prompts"]]))
    assert results["summary"][REPEAT][0] == 1.0 and results["summary"][TRANSPOSED][0] == 0.0
    assert set(results["by_texture"]) == set(TEXTURES)

    markdown, html = (out / "probe.md").read_text(), (out / "probe.html").read_text()
    assert markdown.count("![") == len(FIGURES) and html.count("<img ") == len(FIGURES)
    assert "nan" not in markdown and "n/a" not in markdown
    for prompt in results["prompts"]:
        assert prompt["rolls"]["RWKV-7"] in markdown


def test_probe_command_probes_the_validation_figures_when_asked(checkpoint, tmp_path, capsys):
    out = tmp_path / "probe"
    args = ["probe", "--checkpoint", str(checkpoint), "--figures", "validation", "--bars", "1", "--samples", "1"]
    assert main([*args, "-o", str(out)]) == 0
    assert "repeat the figure: 1.000" in capsys.readouterr().out
    results = json.loads((out / "probe.json").read_text())
    assert results["figures"] == "validation"
    assert [p["name"] for p in results["prompts"]] == [f.name for f in VALIDATION_FIGURES]
    assert list(results["by_texture"]) == list(FIGURE_SETS["validation"].textures)
    assert results["summary"][REPEAT][0] == 1.0 and results["summary"][TRANSPOSED][0] == 0.0
    assert "(validation figures)" in (out / "probe.md").read_text()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--top-p", "1.5"], "top-p must be in (0, 1]"),
        (["--temperature", "0"], "temperature must be greater than 0"),
        (["--samples", "0"], "number of samples must be at least 1"),
        (["--bars", "0"], "bars to generate must be at least 1"),
    ],
)
def test_probe_command_rejects_bad_settings(checkpoint, tmp_path, capsys, extra, message):
    code = main(["probe", "--checkpoint", str(checkpoint), "-o", str(tmp_path / "out"), *extra])
    stderr = capsys.readouterr().err
    assert code == 1 and message in stderr and "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_probe_command_rejects_a_missing_checkpoint_and_bad_usage(tmp_path, capsys):
    assert main(["probe", "--checkpoint", str(tmp_path / "absent.pth"), "-o", str(tmp_path / "out")]) == 1
    assert "checkpoint not found" in capsys.readouterr().err
    for args in [
        ["probe", "-o", str(tmp_path / "out")],
        ["probe", "--checkpoint", "x.pth", "-o", "o", "--bars", "x"],
        ["probe", "--checkpoint", "x.pth", "-o", "o", "--figures", "train"],
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code == 2 and "usage:" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_tokenizer_too_coarse_for_sixteenths_is_refused():
    coarse = build_tokenizer([21, 108], [[0, 4, 2], [4, 12, 2]], 32, True, 32, [40, 250], True, True, ["PAD"])
    with pytest.raises(CompletionError, match="writes 2 onsets per beat; the probe's figures need 4"):
        check_tokenizer_resolution(coarse)
    fine = build_tokenizer([21, 108], [[0, 4, 8], [4, 12, 4]], 32, True, 32, [40, 250], True, True, ["PAD"])
    check_tokenizer_resolution(fine)  # the default resolution passes
