"""The REMI tokenizer: built once from config, saved as JSON, and loaded from that file by every later stage."""

from __future__ import annotations

import hashlib
from pathlib import Path

from miditok import REMI, TokenizerConfig


def build_tokenizer(
    pitch_range: tuple[int, int],
    beat_res: list[tuple[int, int, int]],
    num_velocities: int,
    use_tempos: bool,
    num_tempos: int,
    tempo_range: tuple[int, int],
    use_time_signatures: bool,
    use_sustain_pedals: bool,
    special_tokens: list[str],
) -> REMI:
    """A REMI tokenizer. `pitch_range` is inclusive (21-108 is the piano); `beat_res` rows are (start beat, end beat,
    positions per beat)."""
    config = TokenizerConfig(
        pitch_range=tuple(pitch_range),
        beat_res={(start, end): res for start, end, res in beat_res},
        num_velocities=num_velocities,
        use_tempos=use_tempos,
        num_tempos=num_tempos,
        tempo_range=tuple(tempo_range),
        use_time_signatures=use_time_signatures,
        use_sustain_pedals=use_sustain_pedals,
        special_tokens=list(special_tokens),
    )
    return REMI(config)


def save_tokenizer(tokenizer: REMI, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(path)


def load_tokenizer(path: str | Path) -> REMI:
    return REMI(params=Path(path))


def tokenizer_hash(path: str | Path) -> str:
    """A short digest of the id -> token mapping: checkpoints record it so that a mismatched tokenizer is caught."""
    vocab = sorted(load_tokenizer(path).vocab.items(), key=lambda item: item[1])
    return hashlib.sha256(repr(vocab).encode()).hexdigest()[:16]
