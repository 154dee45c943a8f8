"""The same-size Transformer baseline: parameter count matched to RWKV-7, KV-cache decoding against the parallel
forward, training through `pianomuse.train.train`, checkpoints that name their arch, and completion through the same
grammar-masked engine."""

from __future__ import annotations

import json

import pytest
import torch
from midi_factory import make_piano_score
from test_complete import check_samples
from test_train import deterministic_columns, run, run_config, synthetic_data  # noqa: F401 (a fixture)
from workflow_helpers import REPO

from pianomuse.complete import Completer, CompletionError, Sampling
from pianomuse.config import load_config
from pianomuse.model import RWKV7
from pianomuse.models import arch_of, build_model, matched_mlp_hidden, model_config
from pianomuse.run_log import read_metrics
from pianomuse.tokenizer import load_tokenizer
from pianomuse.transformer import KVCache, Transformer, TransformerConfig, TransformerDecoder


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("preset", ["default", "demo", "full"])
def test_parameter_count_is_within_ten_percent_of_rwkv7_at_every_preset_size(preset, tokenizer_path):
    model = load_config(REPO / "config.yaml", {"preset": preset})["model"]
    vocab_size = len(load_tokenizer(tokenizer_path).vocab)
    sizes = {}
    for arch in ["rwkv7", "transformer"]:
        config = model_config(arch, vocab_size, model["n_layer"], model["n_embd"], model["head_size"])
        with torch.device("meta"):
            sizes[arch] = n_params(build_model(config))
    assert abs(sizes["transformer"] / sizes["rwkv7"] - 1) < 0.10, sizes
    assert abs(sizes["transformer"] / sizes["rwkv7"] - 1) < 0.02, sizes  # the rule matches closer than required


def test_the_matched_mlp_width_follows_rwkv7_not_a_fixed_ratio():
    # RWKV-7's LoRAs are a larger share of a narrow model: the matched MLP is relatively wider there.
    narrow, wide = matched_mlp_hidden(389, 4, 128, 64) / 128, matched_mlp_hidden(389, 6, 256, 64) / 256
    assert narrow > wide > 4


def tiny_transformer(seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    config = TransformerConfig(**{"vocab_size": 60, "n_layer": 2, "n_embd": 64, "mlp_hidden": 96, "head_size": 16,
                                  **overrides})  # fmt: skip
    model = Transformer(config).eval()
    with torch.no_grad():  # GPT-2's small init makes every position's logits nearly alike; spread them out
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model


@torch.inference_mode()
def test_kv_cache_steps_give_the_parallel_forward_logits_at_every_position():
    model = tiny_transformer()
    tokens = torch.randint(0, 60, (3, 70), generator=torch.Generator().manual_seed(1))  # past the 64-slot capacity
    full = model(tokens)
    decoder = TransformerDecoder(model)
    cache = KVCache.empty(model.config, 3, "cpu", torch.float32)
    prefix = model(tokens[:, :5], cache=cache)
    torch.testing.assert_close(prefix, full[:, :5], rtol=1e-5, atol=1e-5)
    for t in range(5, 70):
        logits, cache = decoder.step(tokens[:, t], cache)
        torch.testing.assert_close(logits, full[:, t], rtol=1e-5, atol=1e-5)
    assert cache.length == 70


@torch.inference_mode()
def test_a_chunk_after_the_cache_and_forked_rows_match_the_parallel_forward():
    model = tiny_transformer(seed=2)
    tokens = torch.randint(0, 60, (1, 40), generator=torch.Generator().manual_seed(3))
    full = model(tokens)
    cache = KVCache.empty(model.config, 1, "cpu", torch.float32)
    model(tokens[:, :17], cache=cache)
    torch.testing.assert_close(model(tokens[:, 17:30], cache=cache), full[:, 17:30], rtol=1e-5, atol=1e-5)
    # Forked three ways, then rows leave: each remaining row goes on as the unforked stream would.
    forked = TransformerDecoder(model).repeat(cache, 3)
    forked = TransformerDecoder(model).select(forked, torch.tensor([True, False, True]))
    logits, _ = TransformerDecoder(model).step(tokens[0, 30].repeat(2), forked)
    torch.testing.assert_close(logits, full[:, 30].expand(2, -1), rtol=1e-5, atol=1e-5)


def test_the_head_sees_only_the_past():
    model = tiny_transformer(seed=4)
    tokens = torch.randint(0, 60, (2, 30), generator=torch.Generator().manual_seed(5))
    changed = tokens.clone()
    changed[:, 20:] = (changed[:, 20:] + 1) % 60
    with torch.no_grad():
        torch.testing.assert_close(model(tokens)[:, :20], model(changed)[:, :20])
        assert not torch.allclose(model(tokens)[:, 20:], model(changed)[:, 20:])


def test_head_positions_and_gradient_checkpointing_behave_as_rwkv7s():
    model = tiny_transformer(seed=6).train()
    tokens = torch.randint(0, 60, (2, 12), generator=torch.Generator().manual_seed(7))
    positions = torch.tensor([3, 4, 15, 23])
    with torch.no_grad():
        torch.testing.assert_close(model(tokens, head_positions=positions), model(tokens).view(24, -1)[positions])
    grads = []
    for grad_checkpoint in (False, True):
        model.config.grad_checkpoint = grad_checkpoint
        model.zero_grad()
        model(tokens).logsumexp(-1).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for plain, checkpointed in zip(*grads, strict=True):
        torch.testing.assert_close(plain, checkpointed)


def test_a_tiny_transformer_trains_through_train_and_completes_valid_remi(synthetic_data, tmp_path):  # noqa: F811
    config = run_config(max_steps=12, dropout=0.0)
    config["model"]["arch"] = "transformer"
    summary = run(config, synthetic_data, tmp_path)
    losses = [float(row["train_loss"]) for row in read_metrics(tmp_path / "metrics.csv")]
    assert losses[-1] < losses[0] - 0.5  # it learns the synthetic pattern
    assert summary["val_nll"] < summary["unigram_nll"]
    info = json.loads((tmp_path / "best.json").read_text())
    assert info["arch"] == "transformer" and info["model"]["mlp_hidden"] == matched_mlp_hidden(389, 2, 64, 64)

    completer = Completer.load(tmp_path / "best.pth")
    assert arch_of(completer.model) == "transformer" and isinstance(completer.decoder, TransformerDecoder)
    prompt = completer.prompt_ids(make_piano_score(4, 6, time_signature=(3, 4), seed=3), None)
    sampling = Sampling(bars=3, samples=4, temperature=1.3, top_p=1.0, seed=9, max_tokens_per_bar=64)
    continuations = completer.generate(prompt, sampling, progress=False)
    check_samples(completer, prompt, continuations, bars=3)
    assert completer.generate(prompt, sampling, progress=False) == continuations  # deterministic for a seed


def test_a_transformer_run_is_deterministic_and_resumes_bit_exactly(synthetic_data, tmp_path):  # noqa: F811
    config = run_config()
    config["model"]["arch"] = "transformer"
    torch.use_deterministic_algorithms(True)
    try:
        run(config, synthetic_data, tmp_path / "straight")
        run(config, synthetic_data, tmp_path / "resumed", stop_at_step=4)
        run(config, synthetic_data, tmp_path / "resumed")
    finally:
        torch.use_deterministic_algorithms(False)
    rows = [deterministic_columns(read_metrics(tmp_path / name / "metrics.csv")) for name in ["straight", "resumed"]]
    assert rows[0] == rows[1] and len(rows[0]) == 8
    a, b = (torch.load(tmp_path / name / "last.pth") for name in ["straight", "resumed"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_rwkv7_runs_name_their_arch_and_a_wrong_arch_is_a_clear_error(synthetic_data, tmp_path):  # noqa: F811
    run(run_config(max_steps=2), synthetic_data, tmp_path)
    info = json.loads((tmp_path / "best.json").read_text())
    assert info["arch"] == "rwkv7"
    assert isinstance(Completer.load(tmp_path / "best.pth").model, RWKV7)
    (tmp_path / "best.json").write_text(json.dumps({**info, "arch": "transformer"}))
    with pytest.raises(CompletionError, match="is not a transformer checkpoint"):
        Completer.load(tmp_path / "best.pth")
    config = run_config(max_steps=2)
    config["model"]["arch"] = "lstm"
    with pytest.raises(ValueError, match="unknown model.arch 'lstm'"):
        run(config, synthetic_data, tmp_path / "other")
