"""Checkpoint files of a training run, written atomically so that a kill at any moment leaves a loadable set.

last.pth / best.pth         model state dict only (RWKV-7: RWKV-LM .pth layout, loadable by the `rwkv` package)
last.json / best.json       arch, model config, tokenizer hash, step and metrics of the weights beside them
last.state.pt               what resuming needs: weights, optimiser, scheduler, RNG, data position
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from pianomuse.files import atomic_write, write_json
from pianomuse.models import save_model


def save_torch(obj: object, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_weights(model: torch.nn.Module, info: dict, run_dir: Path, name: str) -> None:
    """`{name}.pth` (fp32 on CPU; RWKV-7's in RWKV-LM's layout) and `{name}.json` (its description)."""
    atomic_write(run_dir / f"{name}.pth", lambda tmp: save_model(model, tmp))
    write_json(info, run_dir / f"{name}.json")


def rng_states() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_resume_point(model: torch.nn.Module, info: dict, training_state: dict, run_dir: Path) -> None:
    """The last checkpoint: `last.state.pt` holds everything resuming needs, the weights included, in one file
    renamed into place at once, so a kill at any moment leaves a consistent resume point. `last.pth`/`last.json`,
    the portable copy, follow it.
    """
    save_torch({**training_state, "model": model.state_dict(), "rng": rng_states()}, run_dir / "last.state.pt")
    save_weights(model, info, run_dir, "last")


def load_resume_point(run_dir: Path) -> tuple[dict, dict] | None:
    """(weights, training state) of the last checkpoint, or None when the run has none yet."""
    state_path = run_dir / "last.state.pt"
    if not state_path.exists():
        return None
    state = torch.load(state_path, map_location="cpu", weights_only=False)
    return state.pop("model"), state
