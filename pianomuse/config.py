"""Workflow configuration: named presets applied over the defaults, command-line overrides kept on top."""

from __future__ import annotations

import copy


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
