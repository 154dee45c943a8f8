"""Checkpoint files of a training run, written atomically so that a kill at any moment leaves a loadable set.

    last.pth / best.pth         model state dict only (RWKV-LM .pth layout): portable, loadable by the `rwkv` package
    last.json / best.json       model config, tokenizer hash, step and metrics of the weights beside them
    last.state.pt               what resuming needs besides the weights: optimiser, scheduler, RNG, data position
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from pianomuse.model import UNUSED_LAYER0_KEYS, save_rwkv_pth


def atomic_write(path: Path, write) -> None:
    """Call `write(file_path)` on a temporary file in the same folder, then rename it over `path` in one step."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_torch(obj, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_json(obj: dict, path: Path) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2) + "\n"))


def save_weights(model: torch.nn.Module, info: dict, run_dir: Path, name: str) -> None:
    """`{name}.pth` (RWKV-LM layout, fp32 on CPU) and `{name}.json` (its description)."""
    atomic_write(run_dir / f"{name}.pth", lambda tmp: save_rwkv_pth(model, tmp))
    save_json(info, run_dir / f"{name}.json")


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


def save_resume_point(model, info: dict, training_state: dict, run_dir: Path) -> None:
    """The last checkpoint: the state file first, the weights and their JSON after it.

    Both carry the step; `load_resume_point` refuses a pair whose steps differ (a kill between the renames).
    """
    save_torch({**training_state, "rng": rng_states()}, run_dir / "last.state.pt")
    save_weights(model, info, run_dir, "last")


def load_resume_point(run_dir: Path) -> tuple[dict, dict] | None:
    """(weights, training state) of the last checkpoint, or None when the run has none yet."""
    state_path, weights_path, info_path = run_dir / "last.state.pt", run_dir / "last.pth", run_dir / "last.json"
    if not state_path.exists():
        return None
    state = torch.load(state_path, map_location="cpu", weights_only=False)
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    if info.get("step") != state["step"]:
        raise RuntimeError(
            f"{run_dir}: last.state.pt is at step {state['step']} but last.json at step {info.get('step')}; "
            "the run was killed while writing a checkpoint. Delete the run folder to start over."
        )
    weights = torch.load(weights_path, map_location="cpu", weights_only=True)
    # The .pth layout carries layer 0's unused value-residual weights; the model has no such parameters.
    return {key: value for key, value in weights.items() if key not in UNUSED_LAYER0_KEYS}, state
