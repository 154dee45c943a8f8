"""The bench scripts' measures that the experiment log relies on."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from midi_factory import make_piano_score, write_midi

from pianomuse.augment import ScoreGrid, score_like_ids
from pianomuse.evaluate import model_window_nll
from pianomuse.model import RWKV7, RWKV7Config
from pianomuse.remi import tokenize_score
from pianomuse.tokenizer import load_tokenizer

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


def test_key_calibration_counts_the_pitch_mass_in_the_key_after_temperature_and_top_p():
    key_calibration = load_bench("key_calibration")
    pitch_ids = torch.arange(2, 14)  # twelve pitch tokens, one per pitch class; tokens 0 and 1 are not pitches
    in_key = torch.tensor([True, False, True, False, True, True, False, True, False, True, False, True])  # C major
    uniform = torch.zeros(1, 14)
    assert key_calibration.in_key_mass(uniform, pitch_ids, in_key, 1.0, 1.0).item() == pytest.approx(7 / 12)
    # Half the mass on a non-pitch token changes nothing: the share is among the pitches.
    sure = torch.full((1, 14), -1e9)
    sure[0, 0], sure[0, 2 + 4] = 0.0, 0.0  # E, in the key
    assert key_calibration.in_key_mass(sure, pitch_ids, in_key, 1.0, 1.0).item() == pytest.approx(1.0)
    # 0.8 on C, 0.2 spread over the five pitches out of the key: top-p 0.9 keeps C and three of them
    # (each is kept while the mass before it is under 0.9: 0.8, 0.84, 0.88).
    logits = torch.full((1, 14), -1e9)
    logits[0, 2] = math.log(0.8)
    logits[0, 2 + torch.nonzero(~in_key).flatten()] = math.log(0.2 / 5)
    assert key_calibration.in_key_mass(logits, pitch_ids, in_key, 1.0, 1.0).item() == pytest.approx(0.8)
    assert key_calibration.in_key_mass(logits, pitch_ids, in_key, 1.0, 0.9).item() == pytest.approx(0.8 / 0.92)
    # A lower temperature sharpens towards C.
    assert key_calibration.in_key_mass(logits, pitch_ids, in_key, 0.5, 1.0).item() > 0.8


def test_key_calibration_reads_the_logits_that_score_each_completion_token():
    key_calibration = load_bench("key_calibration")
    torch.manual_seed(0)
    model = RWKV7(RWKV7Config(vocab_size=40, n_layer=2, n_embd=64, head_size=32)).eval()
    context, completion = [1, 5, 9, 3, 7], [2, 8, 4]
    logits = key_calibration.window_logits(model, context, completion)
    nll = -torch.log_softmax(logits.float(), dim=-1)[torch.arange(3), torch.tensor(completion)].sum()
    score = model_window_nll(model, torch.device("cpu"), batch_tokens=64, pad_id=0)
    assert nll.item() == pytest.approx(score([context], [completion])[0], rel=1e-5)


def test_score_like_prompts_writes_a_window_like_a_score_and_keeps_its_bars(tokenizer_path):
    score_like_prompts = load_bench("score_like_prompts")
    tokenizer = load_tokenizer(tokenizer_path)
    grid = ScoreGrid.of(tokenizer)
    performed = make_piano_score(12, 6, seed=3)  # sixths of a bar: mostly off the sixteenth grid, random velocities
    ids, bar_offsets, _ = tokenize_score(tokenizer, performed)
    row = {"context_ids": ids[: bar_offsets[8]].tolist(), "completion_ids": ids[bar_offsets[8] :].tolist()}
    window = score_like_prompts.score_like_window(row, grid)
    assert window["context_ids"].count(grid.bar_id) == 8
    assert window["completion_ids"].count(grid.bar_id) == 4
    assert window["context_ids"] + window["completion_ids"] == score_like_ids(ids, grid)[0].tolist()
    notes = tokenizer.decode([window["context_ids"] + window["completion_ids"]]).tracks[0].notes.numpy()
    assert len(set(notes["velocity"])) == 1 and not (notes["time"] % (tokenizer.time_division // 4)).any()
