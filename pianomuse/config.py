"""Workflow configuration: named presets applied over the defaults, command-line overrides kept on top."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import yaml

from pianomuse.files import write_json


class ConfigError(ValueError):
    pass


def deep_merge(base: dict, overrides: dict) -> dict:
    """A copy of `base` with `overrides` merged in, recursing into nested mappings."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def apply_preset(config: dict, command_line: dict) -> dict:
    """Resolve `config` (config.yaml with the command line already merged in) into the settings of one run.

    The preset named by `config["preset"]` is applied over the defaults, then the command-line values are applied
    again so that they win over the preset. The `presets` table itself is dropped from the result.
    """
    presets = config.get("presets", {})
    name = config.get("preset", "default")
    if name not in presets:
        raise ConfigError(f"unknown preset {name!r}; config.yaml defines: {', '.join(sorted(presets)) or 'none'}")
    defaults = {key: value for key, value in config.items() if key != "presets"}
    return deep_merge(deep_merge(defaults, presets[name] or {}), command_line)


def load_config(path: str | Path = "config.yaml", overrides: dict | None = None) -> dict:
    """The settings `snakemake` resolves from the config file `path` (with `--config`-style `overrides`), for
    Python that needs them outside the workflow, e.g. to find the data folders."""
    overrides = overrides or {}
    return apply_preset(deep_merge(yaml.safe_load(Path(path).read_text()), overrides), overrides)


# ----------------------------------------------------------------------------------------------------------------
# Data folders: each stage's output lives in a folder named by a hash of the settings it depends on, so that two
# configurations (presets, windows settings, ...) never rebuild or delete each other's data.

# Which settings each data folder depends on, its own and those of the stages upstream of it.
DATA_STAGES = {
    "maestro": ["maestro"],
    "tokenizer": ["tokenizer"],
    "tokens": ["maestro", "tokenizer", "tokenize"],
    "augment": ["maestro", "tokenizer", "tokenize", "augment"],
    "windows": ["maestro", "tokenizer", "tokenize", "augment", "windows"],
}


def settings_key(settings: object) -> str:
    """A short, stable name for a set of settings: 10 hex digits of the SHA-256 of their canonical JSON."""
    canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:10]


def data_settings(config: dict) -> dict:
    """The settings that decide what the data is. Where MAESTRO v3.0.0 is read or downloaded from (maestro_dir,
    url, sha256) is not among them: the same pinned data set from another place is the same data."""
    return {
        "maestro": {key: config["maestro"][key] for key in ("pieces_per_split", "seed")},
        # An option left null (off) is left out: adding an option to a stage keeps its existing folders' keys.
        **{
            stage: {key: value for key, value in config[stage].items() if value is not None}
            for stage in ("tokenizer", "tokenize", "augment", "windows")
        },
    }


def data_folders(config: dict) -> dict[str, str]:
    """Each data stage's folder for this configuration: `results/{stage}/{key of its settings}`."""
    settings = data_settings(config)
    return {
        stage: f"results/{stage}/{settings_key({name: settings[name] for name in depends_on})}"
        for stage, depends_on in DATA_STAGES.items()
    }


# ----------------------------------------------------------------------------------------------------------------
# A run folder records the data it trains on (data.json): a run resumes, or counts as done, only on that data.

RUN_DATA = "data.json"


def run_data_record(config: dict) -> dict:
    """What a run folder records about the data it trains on: the windows folder and the settings behind it."""
    return {"windows": data_folders(config)["windows"], "settings": data_settings(config)}


def check_run_data(run_dir: str | Path, record: dict, model: dict) -> None:
    """Raises ConfigError when the run in `run_dir` was started on other data, or with another model, than
    `record` and `model` describe: it could neither resume nor count as done."""
    run_dir = Path(run_dir)
    fix = f"choose another train.run, switch the settings back, or delete {run_dir} to train it again from scratch"
    recorded = run_dir / RUN_DATA
    if recorded.is_file():
        previous = json.loads(recorded.read_text())
        if previous["windows"] != record["windows"]:
            changed = sorted(
                stage for stage in record["settings"] if previous["settings"].get(stage) != record["settings"][stage]
            )
            raise ConfigError(
                f"{run_dir} was trained on {previous['windows']}, but these settings make {record['windows']} "
                f"(changed: {', '.join(changed)}); {fix}"
            )
    config_path = run_dir / "config.yaml"
    if (run_dir / "last.state.pt").is_file() and config_path.is_file():
        previous_model = yaml.safe_load(config_path.read_text()).get("model")
        if previous_model != model:
            raise ConfigError(f"{run_dir} holds a run of another model ({previous_model}, now {model}); {fix}")


def record_run_data(run_dir: str | Path, record: dict, model: dict) -> None:
    """Checks the run against `record` (see check_run_data), then writes `record` into the run folder."""
    check_run_data(run_dir, record, model)
    write_json(record, Path(run_dir) / RUN_DATA)
