"""The RWKV-7 model: parallel and RNN modes agree, head slicing, gradient checkpointing, checkpoints that the `rwkv`
package runs with the same logits, determinism. Tiny fp32 configs, so that the whole file runs in seconds on a CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from pianomuse import kernel_record
from pianomuse.model import (
    RWKV7,
    UNUSED_LAYER0_KEYS,
    RWKV7Config,
    head_positions_from_spans,
    load_rwkv_pth,
    save_rwkv_pth,
    state_repeat,
)

VOCAB = 300
TOL = dict(rtol=0, atol=1e-4)  # max-abs, fp32


def perturbed_model(seed: int = 0, **overrides) -> RWKV7:
    """A tiny model with every parameter moved off its initial value (see `kernel_record.perturbed_model`)."""
    return kernel_record.perturbed_model(
        RWKV7Config(**{"vocab_size": VOCAB, "n_layer": 2, "n_embd": 128, **overrides}), seed
    )


def random_tokens(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def step_through(model: RWKV7, idx: torch.Tensor, state=None):
    """RNN mode over idx [B, T]: logits [B, T, V] and the final state."""
    state = state if state is not None else model.init_state(idx.size(0))
    logits = []
    for t in range(idx.size(1)):
        out, state = model.step(idx[:, t], state)
        logits.append(out)
    return torch.stack(logits, dim=1), state


def assert_states_close(a, b):
    for layer_a, layer_b in zip(a, b, strict=True):
        for name, x, y in zip(layer_a._fields, layer_a, layer_b):
            torch.testing.assert_close(x, y, **TOL, msg=lambda m: f"{name}: {m}")


# ----------------------------------------------------------------------------------------------------------------
# Parallel and RNN modes


@torch.no_grad()
def test_parallel_and_rnn_modes_give_the_same_logits():
    model = perturbed_model()
    idx = random_tokens(2, 48)
    parallel = model(idx)
    assert parallel.shape == (2, 48, VOCAB)
    rnn, _ = step_through(model, idx)
    torch.testing.assert_close(rnn, parallel, **TOL)
    assert parallel.std() > 0.1  # the comparison is not between near-constant outputs


@torch.no_grad()
def test_prefill_then_step_reaches_the_same_state_as_stepping_all_the_way():
    model = perturbed_model()
    idx = random_tokens(2, 40)
    _, stepped = step_through(model, idx)

    logits, prefilled = model(idx[:, :32], return_state=True)
    continued, prefilled = step_through(model, idx[:, 32:], prefilled)
    assert_states_close(prefilled, stepped)

    # Parallel mode continues from a state too: two chunks equal one pass.
    first, state = model(idx[:, :17], return_state=True)
    second, state = model(idx[:, 17:], state, return_state=True)
    torch.testing.assert_close(torch.cat([first, second], dim=1), model(idx), **TOL)
    assert_states_close(state, stepped)
    torch.testing.assert_close(continued, model(idx)[:, 32:], **TOL)


@torch.no_grad()
def test_forked_states_continue_like_separate_runs():
    model = perturbed_model()
    prompt, continuations = random_tokens(1, 20), random_tokens(3, 6, seed=1)
    _, state = model(prompt, return_state=True)
    forked, _ = step_through(model, continuations, state_repeat(state, 3))
    for row in range(3):
        alone = model(torch.cat([prompt, continuations[row : row + 1]], dim=1))[0, 20:]
        torch.testing.assert_close(forked[row], alone, **TOL)


@pytest.mark.maestro
@torch.no_grad()
def test_parallel_and_rnn_modes_agree_on_a_real_maestro_piece(maestro_dir, tokenizer_path):
    from pianomuse.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_path)
    midi = next(maestro_dir.rglob("*.midi"))
    ids = tokenizer.encode(midi)
    ids = ids[0].ids if isinstance(ids, list) else ids.ids
    model = perturbed_model(vocab_size=len(tokenizer.vocab))
    idx = torch.tensor([ids[:64]])
    torch.testing.assert_close(step_through(model, idx)[0], model(idx), **TOL)


# ----------------------------------------------------------------------------------------------------------------
# Completion-only head


@torch.no_grad()
def test_head_positions_give_the_full_logits_at_those_positions():
    model = perturbed_model()
    idx = random_tokens(3, 30)
    positions = head_positions_from_spans([(5, 30), (0, 3), (29, 30)], seq_len=30)
    assert positions.tolist() == list(range(5, 30)) + [30, 31, 32] + [89]
    sliced = model(idx, head_positions=positions)
    assert sliced.shape == (len(positions), VOCAB)
    torch.testing.assert_close(sliced, model(idx).view(-1, VOCAB)[positions], **TOL)


def test_loss_and_gradients_on_head_positions_equal_the_masked_full_logit_loss():
    model = perturbed_model()
    idx, targets = random_tokens(2, 24), random_tokens(2, 24, seed=1)
    positions = head_positions_from_spans([(10, 24), (4, 20)], seq_len=24)

    sliced = F.cross_entropy(model(idx, head_positions=positions), targets.view(-1)[positions])
    sliced.backward()
    sliced_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    masked = torch.full_like(targets, -100).view(-1)
    masked[positions] = targets.view(-1)[positions]
    full = F.cross_entropy(model(idx).view(-1, VOCAB), masked, ignore_index=-100)
    full.backward()

    torch.testing.assert_close(sliced, full, rtol=1e-6, atol=1e-6)
    for name, p in model.named_parameters():
        torch.testing.assert_close(sliced_grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")


# ----------------------------------------------------------------------------------------------------------------
# Training


def test_gradient_checkpointing_gives_the_same_gradients_with_dropout_on():
    def gradients(grad_checkpoint: bool) -> dict:
        model = perturbed_model(dropout=0.1, grad_checkpoint=grad_checkpoint).train()
        torch.manual_seed(123)  # the same dropout masks in both runs (checkpointing replays the RNG)
        model(random_tokens(2, 32)).logsumexp(-1).mean().backward()
        return {n: p.grad for n, p in model.named_parameters()}

    plain, checkpointed = gradients(False), gradients(True)
    assert all(g is not None and g.abs().sum() > 0 for g in plain.values())  # every parameter is used
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7, msg=lambda m: f"{name}: {m}")


def test_the_same_seed_builds_the_same_model_and_outputs():
    config = RWKV7Config(vocab_size=VOCAB, n_layer=2, n_embd=128, dropout=0.1)

    def run():
        torch.manual_seed(7)
        model = RWKV7(config).train()
        return model.state_dict(), model(random_tokens(1, 16))

    (weights_a, out_a), (weights_b, out_b) = run(), run()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert torch.equal(out_a, out_b)


def test_initialisation_follows_rwkv_lm():
    model = RWKV7(RWKV7Config(vocab_size=VOCAB, n_layer=4, n_embd=256))
    config = model.config
    assert (config.decay_lora, config.iclr_lora, config.value_lora, config.gate_lora) == (32, 32, 32, 64)
    assert (RWKV7Config(VOCAB, 12, 512).decay_lora, RWKV7Config(VOCAB, 12, 512).gate_lora) == (64, 128)
    weights = model.state_dict()
    for zero in ["blocks.2.att.output.weight", "blocks.2.ffn.value.weight", "blocks.2.att.w1", "blocks.2.att.g1"]:
        assert weights[zero].abs().max() == 0, zero
    assert weights["emb.weight"].abs().max() <= 1e-4
    assert weights["blocks.1.att.ln_x.weight"][0].item() == pytest.approx((2 / 4) ** 0.7)
    assert weights["blocks.0.att.x_r"][0, 0, 0].item() == 1.0  # channel 0: all previous token
    key = weights["blocks.1.att.key.weight"]
    torch.testing.assert_close(key @ key.T, 0.01 * torch.eye(256), rtol=0, atol=1e-5)  # orthogonal, gain 0.1


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints


def test_save_load_round_trip_infers_the_config_and_keeps_rwkv_lm_keys(tmp_path):
    model = perturbed_model(n_layer=3)
    path = tmp_path / "model.pth"
    save_rwkv_pth(model, path)
    saved = torch.load(path, weights_only=True)
    assert set(saved) == set(model.state_dict()) | set(UNUSED_LAYER0_KEYS)  # RWKV-LM's complete key set

    loaded = load_rwkv_pth(path).eval()
    assert loaded.config == model.config
    idx = random_tokens(1, 12)
    with torch.no_grad():
        assert torch.equal(loaded(idx), model(idx))


RWKV_PACKAGE_RUN = """
import json, sys, torch
from rwkv.model import RWKV
model_path, tokens_path, out_path = sys.argv[1:]
tokens = json.loads(open(tokens_path).read())
model = RWKV(model=model_path, strategy="cpu fp32")
seq_logits, seq_state = model.forward(tokens, None, full_output=True)
one_logits, state = [], None
for token in tokens:
    logits, state = model.forward(token, state)
    one_logits.append(logits)
torch.save({"seq": seq_logits, "seq_state": seq_state, "one": torch.stack(one_logits), "one_state": state}, out_path)
"""


def test_the_rwkv_package_runs_our_checkpoint_with_the_same_logits_and_state(tmp_path):
    model = perturbed_model()
    tokens = random_tokens(1, 40)
    torch.save(model.state_dict(), tmp_path / "model.pth")  # the training checkpoint, as it is
    (tmp_path / "tokens.json").write_text(json.dumps(tokens[0].tolist()))

    # The package reads RWKV_V7_ON and friends when imported, and sets global torch flags: a fresh process.
    env = {**os.environ, "RWKV_V7_ON": "1", "RWKV_JIT_ON": "0", "RWKV_CUDA_ON": "0"}
    subprocess.run(
        [
            sys.executable,
            "-c",
            RWKV_PACKAGE_RUN,
            str(tmp_path / "model"),
            str(tmp_path / "tokens.json"),
            str(tmp_path / "out.pt"),
        ],
        env=env,
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    theirs = torch.load(tmp_path / "out.pt", weights_only=True)

    with torch.no_grad():
        ours, state = model(tokens, return_state=True)
    torch.testing.assert_close(theirs["seq"], ours[0], **TOL)
    torch.testing.assert_close(theirs["one"], ours[0], **TOL)
    for their_state in (theirs["seq_state"], theirs["one_state"]):  # per layer: att_x, wkv, ffn_x
        for i, layer in enumerate(state):
            for j, ours_part in enumerate(layer):
                torch.testing.assert_close(their_state[3 * i + j], ours_part[0], **TOL)
