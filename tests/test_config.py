"""The settings of a run resolve in the documented order: config.yaml < the preset's file < the command line."""

import copy
import json
import re
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

from pianomuse.complete import Sampling
from pianomuse.config import (
    PRESETS,
    SCHEMA,
    ConfigError,
    check_run_data,
    data_folders,
    load_config,
    preset_file,
    preset_schema,
    record_run_data,
    run_data_record,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULTS = yaml.safe_load((REPO / "config.yaml").read_text())
SHIPPED_PRESETS = ["cpu", "default", "demo", "full", "mirex"]  # the README describes each


def preset_settings(name: str) -> dict:
    return yaml.safe_load((REPO / PRESETS / f"{name}.yaml").read_text())


def test_the_preset_applies_over_the_defaults_and_keeps_the_rest():
    resolved = load_config(REPO / "config.yaml", {"preset": "mirex"})
    assert resolved["windows"] == preset_settings("mirex")["windows"] != DEFAULTS["windows"]
    assert resolved["train"] == {**DEFAULTS["train"], "run": "mirex"}
    assert {key: value for key, value in resolved.items() if key not in ("windows", "train", "preset")} == {
        key: value for key, value in DEFAULTS.items() if key not in ("windows", "train", "preset")
    }
    assert "presets" not in resolved


def test_overrides_win_over_the_preset_and_keep_its_other_values():
    """`--configfile`/`--config` values over the preset's, key by key: the preset's other values in a section stay."""
    demo = preset_settings("demo")
    resolved = load_config(REPO / "config.yaml", {"preset": "demo", "train": {"lr": 0.5, "run": "mine"}})
    assert resolved["train"] == {**DEFAULTS["train"], **demo["train"], "lr": 0.5, "run": "mine"}
    assert resolved["model"] == {**DEFAULTS["model"], **demo["model"]}


def test_the_preset_comes_from_config_yaml_unless_overridden():
    shipped = load_config(REPO / "config.yaml")
    assert shipped["preset"] == DEFAULTS["preset"] and shipped["train"]["run"] == DEFAULTS["preset"]
    assert load_config(REPO / "config.yaml", {"preset": "cpu"})["train"]["run"] == "cpu"


def test_resolving_does_not_mutate_the_overrides():
    overrides = {"preset": "demo", "windows": {"context_bars": 2}}
    kept = copy.deepcopy(overrides)
    load_config(REPO / "config.yaml", overrides)
    assert overrides == kept


@pytest.mark.parametrize("name", SHIPPED_PRESETS)
def test_every_shipped_preset_validates_and_selects_its_run_name(name):
    """Each presets/ file validates on its own (a subset of the keys) and over the defaults (the whole schema), and
    names its own run, so that no two presets share checkpoints or reports."""
    assert sorted(path.stem for path in (REPO / PRESETS).glob("*.yaml")) == SHIPPED_PRESETS
    assert preset_file({"preset": name}, REPO) == str(REPO / PRESETS / f"{name}.yaml")
    resolved = load_config(REPO / "config.yaml", {"preset": name})
    schema = yaml.safe_load((REPO / SCHEMA).read_text())
    assert list(Draft202012Validator(schema).iter_errors(resolved)) == []
    assert resolved["train"]["run"] == name


def test_unknown_preset_names_the_known_ones():
    message = r"unknown preset 'fast' \(no .*presets/fast.yaml\); the presets are: cpu, default, demo, full, mirex$"
    with pytest.raises(ConfigError, match=message):
        preset_file({"preset": "fast"}, REPO)
    with pytest.raises(ConfigError, match="unknown preset 'fast'"):
        load_config(REPO / "config.yaml", {"preset": "fast"})
    with pytest.raises(ConfigError, match=r"unknown preset '\.\./config'"):
        preset_file({"preset": "../config"}, REPO)  # a name, never a path


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        ({"windows": {"contxt_bars": 3}}, r"Additional properties are not allowed \('contxt_bars' .*\(at windows\)"),
        ({"train": {"lr": "fast"}}, r"'fast' is not of type 'number' \(at train.lr\)"),
        ({"train": {"lr": -1.0}}, r"-1.0 is less than or equal to the minimum of 0 \(at train.lr\)"),
        ({"preset": "demo"}, r"\('preset' was unexpected\) \(at top level\)"),
        (None, r"must be a mapping of config keys"),
        ([1, 2], r"must be a mapping of config keys"),
    ],
)
def test_a_preset_file_that_does_not_validate_is_named_with_the_key(tmp_path, settings, error):
    shutil.copytree(REPO / "workflow/schemas", tmp_path / "workflow/schemas")
    (tmp_path / PRESETS).mkdir()
    (tmp_path / PRESETS / "bad.yaml").write_text(yaml.safe_dump(settings))
    with pytest.raises(ConfigError, match=f"{re.escape(str(tmp_path / PRESETS / 'bad.yaml'))}: .*{error}"):
        preset_file({"preset": "bad"}, tmp_path)


def test_a_preset_needs_none_of_the_keys_but_keeps_every_rule():
    schema = yaml.safe_load((REPO / SCHEMA).read_text())
    partial = Draft202012Validator(preset_schema(schema))
    assert partial.is_valid({}) and partial.is_valid({"train": {"lr": 0.5}, "windows": {"step": 2}})
    assert not partial.is_valid({"train": {"lr": 0}}) and not partial.is_valid({"model": {"arch": "lstm"}})
    assert not partial.is_valid({"preset": "demo"})
    # The config's own schema is left as it is: it still requires every section and allows `preset`.
    assert not Draft202012Validator(schema).is_valid({}) and "preset" in schema["properties"]


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
