"""The bench scripts' measures that the experiment log relies on."""

import importlib.util
from pathlib import Path

import pytest
from midi_factory import make_piano_score, write_midi

REPO = Path(__file__).resolve().parents[1]


def load_bench(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "continuation, expected",
    [
        ("the last 4 bars again", (1.0, 1.0)),
        ("the first bar, four times", (0.0, 1.0)),
        ("new pitches", (0.0, 0.0)),
    ],
)
def test_prompt_copying_scores_a_repeat_of_the_prompt_and_new_music(tmp_path, continuation, expected):
    prompt_copying = load_bench("prompt_copying")
    prompt = [[60 + bar, 64 + bar, 67 + bar, 71 + bar] for bar in range(8)]  # each bar its own chord tones
    after = {
        "the last 4 bars again": prompt[4:],
        "the first bar, four times": [prompt[0]] * 4,
        "new pitches": [[90, 91, 92, 93]] * 4,
    }[continuation]
    pitches = [pitch for bar in prompt + after for pitch in bar]
    path = write_midi(make_piano_score(12, 4, tpq=480, pitches=pitches), tmp_path / "sample-0.mid")
    assert prompt_copying.copying(path, context_bars=8, completion_bars=4) == pytest.approx(expected)
