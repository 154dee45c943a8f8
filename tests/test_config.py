"""Presets and command-line overrides resolve in the documented order: defaults < preset < command line."""

import copy
import json
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from pianomuse.complete import Sampling
from pianomuse.config import (
    ConfigError,
    apply_preset,
    check_run_data,
    data_folders,
    load_config,
    record_run_data,
    run_data_record,
)

REPO = Path(__file__).resolve().parents[1]

CONFIG = {
    "preset": "demo",
    "windows": {"context_bars": 8, "completion_bars": 4},
    "presets": {"default": {}, "demo": {"windows": {"context_bars": 4}}},
}


def test_preset_overrides_defaults_and_keeps_the_rest():
    resolved = apply_preset(CONFIG, {})
    assert resolved["windows"] == {"context_bars": 4, "completion_bars": 4}
    assert "presets" not in resolved


def test_command_line_wins_over_the_preset():
    resolved = apply_preset(CONFIG, {"windows": {"context_bars": 2}})
    assert resolved["windows"]["context_bars"] == 2


def test_resolving_does_not_mutate_the_input():
    apply_preset(CONFIG, {"windows": {"context_bars": 2}})
    assert CONFIG["windows"]["context_bars"] == 8


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(ConfigError, match="unknown preset 'fast'.*default, demo"):
        apply_preset({**CONFIG, "preset": "fast"}, {})


# ----------------------------------------------------------------------------------------------------------------
# Data folders keyed by settings, and the run's record of its data

WORKFLOW_CONFIG = load_config(REPO / "config.yaml", {"preset": "default"})


def changed_folders(section: str, key: str, value) -> set[str]:
    other = copy.deepcopy(WORKFLOW_CONFIG)
    other[section][key] = value
    before, after = data_folders(WORKFLOW_CONFIG), data_folders(other)
    return {stage for stage in before if before[stage] != after[stage]}


def test_data_folders_are_named_by_the_settings_each_stage_depends_on():
    folders = data_folders(WORKFLOW_CONFIG)
    assert [folder.rsplit("/", 1)[0] for folder in folders.values()] == [
        "results/maestro",
        "results/tokenizer",
        "results/tokens",
        "results/augment",
        "results/windows",
    ]
    assert data_folders(copy.deepcopy(WORKFLOW_CONFIG)) == folders  # stable
    assert changed_folders("windows", "context_bars", 3) == {"windows"}
    assert changed_folders("augment", "transpositions", [1]) == {"augment", "windows"}
    assert changed_folders("tokenize", "shards", 3) == {"tokens", "augment", "windows"}
    assert changed_folders("tokenizer", "num_velocities", 16) == {"tokenizer", "tokens", "augment", "windows"}
    assert changed_folders("maestro", "pieces_per_split", 5) == {"maestro", "tokens", "augment", "windows"}
    # Where MAESTRO is read or downloaded from is not what it is, nor are the model and training settings.
    assert changed_folders("maestro", "url", "https://mirror.example/maestro.zip") == set()
    assert changed_folders("train", "lr", 0.5) == set()
    moved = {**WORKFLOW_CONFIG, "maestro_dir": "/elsewhere/maestro-v3.0.0"}
    assert data_folders(moved) == folders


def test_presets_have_data_folders_of_their_own():
    demo, mirex = (load_config(REPO / "config.yaml", {"preset": name}) for name in ["demo", "mirex"])
    default = data_folders(WORKFLOW_CONFIG)
    assert set(data_folders(demo).values()).isdisjoint(set(default.values()) - {default["tokenizer"]})
    assert data_folders(mirex)["windows"] != default["windows"] and data_folders(mirex)["tokens"] == default["tokens"]


def test_a_run_on_other_data_or_of_another_model_is_refused_and_says_what_changed(tmp_path):
    record = run_data_record(WORKFLOW_CONFIG)
    model = WORKFLOW_CONFIG["model"]
    check_run_data(tmp_path / "new-run", record, model)  # nothing recorded yet: fine
    record_run_data(tmp_path, record, model)
    record_run_data(tmp_path, record, model)  # the same data again: fine
    other = copy.deepcopy(WORKFLOW_CONFIG)
    other["windows"]["context_bars"] = 3
    with pytest.raises(ConfigError, match=r"was trained on results/windows/\w+, but .* \(changed: windows\); choose"):
        record_run_data(tmp_path, run_data_record(other), model)
    assert json.loads((tmp_path / "data.json").read_text()) == record  # the record is kept
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"model": model}))
    (tmp_path / "last.state.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match="holds a run of another model"):
        check_run_data(tmp_path, record, {**model, "n_layer": 1})


def test_the_sampling_sections_hold_the_sampling_defaults():
    """`Sampling` is the one source of the sampling defaults; config.yaml's evaluate and probe sections repeat them
    (the evaluate section has no `bars`: it continues the test windows' completion bars)."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    defaults = asdict(Sampling())
    defaults.pop("max_tokens_per_bar")
    assert config["probe"] == defaults
    evaluate = {name: config["evaluate"][name] for name in defaults if name != "bars"}
    assert evaluate == {name: value for name, value in defaults.items() if name != "bars"}
