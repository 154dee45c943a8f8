"""Kernels stage: build every compiled kernel this machine can run, check each against its twins, keep a record.

The record (results/kernels/kernels.json) names the build folder, so that later rules load those very kernels
(`pianomuse.kernels.build.use_recorded_kernels`). Besides the ops (`pianomuse.kernels.checks`), the CPU kernel's
whole-model decoding step is checked against `RWKV7.step` on a small model: that check builds a model, so it lives
here, above the model, and not in the kernels layer.
"""

from __future__ import annotations

import math
import os
import platform
from pathlib import Path
from types import ModuleType

import torch

from pianomuse.decode_step import CompiledStep
from pianomuse.kernels.build import EXTENSION_NAMES, load_kernel, staged_sources
from pianomuse.kernels.checks import TOLERANCE, check_kernel, check_token_mix, check_wkv_keys, relative_errors
from pianomuse.kernels.toolchain import compiler_version
from pianomuse.model import RWKV7, RWKV7Config, state_repeat


def perturbed_model(config: RWKV7Config, seed: int = 0) -> RWKV7:
    """A model with every parameter moved off its initial value, in eval mode.

    The RWKV-LM initialisation zeroes the LoRA down-projections, att.output and ffn.value, which would leave whole
    paths of the model unchecked; the noise makes every parameter matter.
    """
    torch.manual_seed(seed)
    model = RWKV7(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * (0.5 / math.sqrt(p.shape[-1]) if p.ndim == 2 else 0.1))
    return model.eval()


@torch.inference_mode()
def check_decode_step(kernel: ModuleType, batch: int = 3, steps: int = 16, seed: int = 0) -> dict:
    """Compares the compiled decoding step with `RWKV7.step` on a small perturbed model: logits at every step and
    the state after the last, starting from a parallel prefill's state."""
    config = RWKV7Config(vocab_size=300, n_layer=2, n_embd=128, head_size=64)
    model = perturbed_model(config, seed)
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, config.vocab_size, (batch, 8 + steps), generator=generator)
    _, prefilled = model(tokens[:, :8], return_state=True)
    # The compiled step consumes the state it is given (see decode_step.Step), so it starts from a copy.
    compiled, state, twin_state = CompiledStep(kernel, model), state_repeat(prefilled, 1), prefilled
    errors = {"logits": 0.0}
    for t in range(8, 8 + steps):
        twin_logits, twin_state = model.step(tokens[:, t], twin_state)
        logits, state = compiled(tokens[:, t], state)
        errors["logits"] = max(errors["logits"], relative_errors({"x": logits}, {"x": twin_logits})["x"])
    for name in ("att_x", "wkv", "ffn_x"):
        pairs = [(getattr(ours, name), getattr(twins, name)) for ours, twins in zip(state, twin_state, strict=True)]
        errors[name] = max(relative_errors({"x": ours}, {"x": twin})["x"] for ours, twin in pairs)
    tolerance = TOLERANCE[torch.float32]
    return {
        "kernel": "decode_step",
        "dtype": "float32",
        "model": {"n_layer": config.n_layer, "n_embd": config.n_embd, "head_size": config.head_size},
        "batch": batch,
        "steps": steps,
        "max_relative_error": errors,
        "tolerance": tolerance,
        "passed": all(error <= tolerance for error in errors.values()),
    }


def build_kernels(build_dir: str | os.PathLike, verbose: bool = False) -> dict:
    """Builds the CPU kernel (and the CUDA one where a GPU is visible), checks each against the twins (the WKV-7
    recurrence; on the CPU also the token-shift mixes, the key inputs and the whole decoding step), returns a
    record: what was built, where, with which compiler, and the maximum errors of the checks."""
    device_types = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    kernels = []
    for device_type in device_types:
        module = load_kernel(device_type, build_dir, verbose=verbose)
        checks = [check_kernel(module, device_type, torch.float32)]
        if device_type == "cpu":
            checks.extend([check_token_mix(module), check_wkv_keys(module), check_decode_step(module)])
        if device_type == "cuda":
            checks.append(check_kernel(module, device_type, torch.bfloat16))
        kernels.append(
            {
                "name": EXTENSION_NAMES[device_type],
                "device": device_type if device_type == "cpu" else torch.cuda.get_device_name(),
                "path": str(Path(module.__file__).resolve()),
                "sources": [str(source) for source in staged_sources(device_type, build_dir)],
                "compiler": compiler_version(device_type),
                "checks": checks,
                "passed": all(check["passed"] for check in checks),
            }
        )
    return {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "build_dir": str(Path(build_dir).resolve()),
        "kernels": kernels,
        "passed": all(kernel["passed"] for kernel in kernels),
    }
