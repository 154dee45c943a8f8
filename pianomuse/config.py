"""Workflow configuration: config.yaml's defaults, the chosen preset's file over them, the command line on top."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from pianomuse.files import write_json

# Beside config.yaml (paths relative to the workflow's folder): one file per preset, and the schema that documents
# every key.
PRESETS = "presets"
SCHEMA = "workflow/schemas/config.schema.yaml"


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


def preset_schema(schema: dict) -> dict:
    """The config schema for a preset file: any subset of the keys, each as the config schema has it (nothing is
    required), and no `preset` key: a preset cannot choose another preset."""

    def optional(node: object) -> object:
        if isinstance(node, dict):
            return {key: optional(value) for key, value in node.items() if key != "required"}
        if isinstance(node, list):
            return [optional(value) for value in node]
        return node

    partial = optional(schema)
    partial["properties"] = {key: value for key, value in partial["properties"].items() if key != "preset"}
    return partial


def preset_file(config: dict, root: str | Path = ".") -> str:
    """The file of the preset that `config` chooses (`preset: NAME` -> `presets/NAME.yaml` under `root`, the
    workflow's folder; no `preset` key chooses `default`), checked against the config schema. ConfigError naming
    the presets there are when it has no file, naming the file and the key when its file does not validate."""
    root = Path(root)
    folder = root / PRESETS
    name = config.get("preset", "default")
    known = sorted(path.stem for path in folder.glob("*.yaml"))
    if name not in known:
        raise ConfigError(
            f"unknown preset {name!r} (no {folder}/{name}.yaml); the presets are: {', '.join(known) or 'none'}"
        )
    path = folder / f"{name}.yaml"
    settings = yaml.safe_load(path.read_text())
    if not isinstance(settings, dict):
        raise ConfigError(f"{path}: must be a mapping of config keys ({{}} for none)")
    schema = preset_schema(yaml.safe_load((root / SCHEMA).read_text()))
    error = best_match(Draft202012Validator(schema).iter_errors(settings))
    if error is not None:
        where = ".".join(str(part) for part in error.absolute_path) or "top level"
        raise ConfigError(f"{path}: {error.message} (at {where})")
    return str(path)


def load_config(path: str | Path = "config.yaml", overrides: dict | None = None) -> dict:
    """The settings `snakemake` resolves from the config file `path` and `--configfile`/`--config`-style
    `overrides`, for Python that needs them outside the workflow, e.g. to find the data folders: the defaults, the
    preset's file over them (from the presets/ folder beside `path`), `overrides` over both."""
    overrides = overrides or {}
    path = Path(path)
    defaults = deep_merge(yaml.safe_load(path.read_text()), overrides)
    preset = yaml.safe_load(Path(preset_file(defaults, path.parent)).read_text())
    return deep_merge(deep_merge(defaults, preset), overrides)


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
