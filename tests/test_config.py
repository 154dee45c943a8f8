"""Presets and command-line overrides resolve in the documented order: defaults < preset < command line."""

import pytest

from pianomuse.config import ConfigError, apply_preset

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
