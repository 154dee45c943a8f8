"""Fixtures shared across the test modules."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from pianomuse.checkpoint import save_weights
from pianomuse.kernel_record import perturbed_model
from pianomuse.kernels.build import load_kernel
from pianomuse.model import RWKV7Config
from pianomuse.tokenizer import build_tokenizer, load_tokenizer, save_tokenizer, tokenizer_hash

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def maestro_dir() -> Path:
    """The shared MAESTRO v3.0.0 copy beside the repository (../shared/data/maestro-v3.0.0); skips when absent."""
    path = REPO.parent / "shared/data/maestro-v3.0.0"
    if not (path / "maestro-v3.0.0.csv").is_file():
        pytest.skip(f"MAESTRO v3.0.0 not found at {path} (no maestro-v3.0.0.csv there)")
    return path


@pytest.fixture(scope="session")
def cpu_kernel():
    """The C++ kernel module, built once into the default cache (the same module the ops dispatch to)."""
    return load_kernel("cpu")


@pytest.fixture(scope="session")
def tokenizer_path(tmp_path_factory) -> Path:
    """The tokenizer the workflow builds from config.yaml's defaults, saved once per session."""
    settings = yaml.safe_load((REPO / "config.yaml").read_text())["tokenizer"]
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
    save_tokenizer(build_tokenizer(**settings), path)
    return path


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, tokenizer_path) -> Path:
    """A random tiny model saved as train saves it, with the run's tokenizer beside it. Perturbed: at RWKV-LM's
    initialisation every block is the identity, so the logits would not depend on the state at all."""
    run_dir = tmp_path_factory.mktemp("run")
    config = RWKV7Config(vocab_size=len(load_tokenizer(tokenizer_path).vocab), n_layer=2, n_embd=64, head_size=32)
    info = {"model": vars(config), "tokenizer_hash": tokenizer_hash(tokenizer_path), "step": 0}
    save_weights(perturbed_model(config), info, run_dir, "best")
    shutil.copy(tokenizer_path, run_dir / "tokenizer.json")
    return run_dir / "best.pth"


@pytest.fixture
def one_thread():
    """One torch thread for the test."""
    # Decoding a tiny batch gains nothing from intra-op threads, and on a shared machine they make it crawl.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def kernel_build_fails(monkeypatch):
    """Every compiled-kernel build fails with "no compiler here", and no kernel or warning is cached yet."""
    import pianomuse.kernels.build as kernel_build
    import pianomuse.kernels.wkv7 as wkv7_module

    def broken_loader(device_type, build_dir=None):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(kernel_build, "load_kernel", broken_loader)
    monkeypatch.setattr(wkv7_module, "_kernels", {})
    monkeypatch.setattr(wkv7_module, "_fallback_warned", False)


@pytest.fixture(scope="session")
def renderer():
    """An audio renderer with the system's soundfont; skips where FluidSynth or a GM soundfont is not installed
    (.ci/setup installs both)."""
    from pianomuse.audio import AudioError, Renderer

    try:
        return Renderer()
    except AudioError as error:
        pytest.skip(f"no audio here: {error}")
