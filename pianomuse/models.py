"""Every model pianomuse trains or samples, behind one factory: RWKV-7 (the model), the same-size Transformer and
the n-gram (the baselines). Dispatch on the architecture happens here and nowhere else.

A checkpoint is a weights file with a JSON companion that names its `arch` ("rwkv7", "transformer" or "ngram");
files written before the baselines existed have none and are RWKV-7's.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pianomuse.decoding import Decoder, RWKV7Decoder
from pianomuse.model import RWKV7, RWKV7Config, load_rwkv_pth, save_rwkv_pth
from pianomuse.ngram import NgramDecoder, NgramModel
from pianomuse.transformer import Transformer, TransformerConfig, TransformerDecoder

ARCHS = ("rwkv7", "transformer")  # trainable by `pianomuse.train` (`model.arch`)
LEGACY_ARCH = "rwkv7"  # of a checkpoint or run config that names none
SYSTEM_NAMES = {"rwkv7": "RWKV-7", "transformer": "Transformer", "ngram": "n-gram"}  # what reports call each arch


def matched_mlp_hidden(vocab_size: int, n_layer: int, n_embd: int, head_size: int) -> int:
    """The Transformer's MLP width that gives it RWKV-7's parameter count at the same size (a multiple of 32).

    RWKV-7's blocks hold ~13-16 C^2 parameters (4 C^2 attention projections, an 8 C^2 channel mix, LoRAs whose share
    shrinks as C grows), so no fixed MLP ratio matches at every width: it is 5.25 C at C=128 and ~4.6 C at C=256.
    """
    with torch.device("meta"):  # shapes only: no memory, no initialisation work
        target = sum(p.numel() for p in RWKV7(RWKV7Config(vocab_size, n_layer, n_embd, head_size)).parameters())
    C, L = n_embd, n_layer
    # Transformer: embedding + head (2 V C), final LayerNorm (2 C), per block two LayerNorms (4 C), qkv + output
    # (4 C^2) and the MLP (2 C hidden).
    fixed = 2 * vocab_size * C + 2 * C + L * (4 * C + 4 * C * C)
    return max(32, round((target - fixed) / (2 * C * L) / 32) * 32)


def model_config(
    arch: str, vocab_size: int, n_layer: int, n_embd: int, head_size: int, dropout: float = 0.0,
    grad_checkpoint: bool = False,
) -> RWKV7Config | TransformerConfig:  # fmt: skip
    if arch == "rwkv7":
        return RWKV7Config(vocab_size, n_layer, n_embd, head_size, dropout, grad_checkpoint)
    if arch == "transformer":
        mlp_hidden = matched_mlp_hidden(vocab_size, n_layer, n_embd, head_size)
        return TransformerConfig(vocab_size, n_layer, n_embd, mlp_hidden, head_size, dropout, grad_checkpoint)
    raise ValueError(f"unknown model.arch {arch!r}; pianomuse trains: {', '.join(ARCHS)}")


def build_model(config: RWKV7Config | TransformerConfig) -> torch.nn.Module:
    return RWKV7(config) if isinstance(config, RWKV7Config) else Transformer(config)


def arch_of(model: torch.nn.Module | NgramModel) -> str:
    if isinstance(model, RWKV7):
        return "rwkv7"
    if isinstance(model, Transformer):
        return "transformer"
    if isinstance(model, NgramModel):
        return "ngram"
    raise TypeError(f"not a pianomuse model: {type(model).__name__}")


def save_model(model: torch.nn.Module, path: str | Path) -> None:
    """Weights only, fp32 on the CPU: RWKV-7 in RWKV-LM's .pth layout, the Transformer as its state dict."""
    if isinstance(model, RWKV7):
        save_rwkv_pth(model, path)
    else:
        torch.save({name: t.detach().cpu().clone() for name, t in model.state_dict().items()}, path)


def load_model(path: str | Path, info: dict) -> RWKV7 | Transformer | NgramModel:
    """The model of a checkpoint file, given its JSON companion `info` (for the arch and the config)."""
    arch = info.get("arch", LEGACY_ARCH)
    if arch == "rwkv7":
        return load_rwkv_pth(path)
    if arch == "transformer":
        model = Transformer(TransformerConfig(**info["model"]))
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model
    if arch == "ngram":
        return NgramModel.load(path)
    raise ValueError(f"unknown arch {arch!r} in the checkpoint's JSON")


def decoder_for(model: torch.nn.Module | NgramModel, device: str | torch.device = "cpu") -> Decoder:
    """The model, ready to be sampled by the completion engine on `device` (torch models move there, eval mode)."""
    if isinstance(model, NgramModel):
        return NgramDecoder(model)
    model = model.to(device).eval()
    return RWKV7Decoder(model) if isinstance(model, RWKV7) else TransformerDecoder(model)
