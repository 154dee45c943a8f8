"""The n-gram baseline: interpolated modified Kneser-Ney against a plain dictionary implementation of the formulas,
normalisation, order selection, counting overlapping windows once, sampling through the grammar-masked engine,
the stage end to end on tiny windows (fit, choose the order, save, load, complete), and both baselines (n-gram and
same-size Transformer) built by the workflow beside the run."""

from __future__ import annotations

import json
from collections import Counter

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from midi_factory import make_piano_score, write_midi
from test_complete import check_samples
from workflow_helpers import TINY_TRAIN, copy_workflow, snakemake, write_tiny_run_overrides

from pianomuse.cli import main
from pianomuse.complete import Completer, Sampling
from pianomuse.ngram import (
    NgramCounts,
    NgramDecoder,
    NgramModel,
    choose_order,
    discounts,
    fit_ngram,
    fresh_starts,
    seeded_subset,
)
from pianomuse.remi import tokenize_score
from pianomuse.tokenizer import load_tokenizer
from pianomuse.windows import build_windows

BOUNDARY = 0
V = 12


def markov_corpus(n_sequences: int, order: int, seed: int, noise: float = 0.1) -> list[np.ndarray]:
    """Sequences over ids 1..V-1 whose next token is a fixed function of the `order` tokens before it, replaced by a
    random token with probability `noise`."""
    rng = np.random.default_rng(seed)
    table = np.random.default_rng(99).integers(1, V, size=(V,) * order)
    sequences = []
    for _ in range(n_sequences):
        s = list(rng.integers(1, V, size=order))
        for _ in range(int(rng.integers(20, 60))):
            s.append(int(table[tuple(s[-order:])]) if rng.random() > noise else int(rng.integers(1, V)))
        sequences.append(np.array(s))
    return sequences


def reference_probs(sequences: list[np.ndarray], order: int, history: list[int]) -> np.ndarray:
    """P(. | history) by the formulas of the module docstring, with dictionaries and loops."""
    padded = [[BOUNDARY] * (order - 1) + list(s) for s in sequences]
    raw = {k: Counter() for k in range(1, order + 1)}
    for s in padded:
        for t in range(order - 1, len(s)):
            for k in range(1, order + 1):
                raw[k][tuple(s[t - k + 1 : t + 1])] += 1
    adjusted = {order: raw[order]}
    for k in range(order - 1, 0, -1):
        left_extensions = Counter(gram[1:] for gram in raw[k + 1])
        adjusted[k] = Counter({g: raw[k][g] if g[0] == BOUNDARY else left_extensions[g] for g in raw[k]})
    discount = {k: discounts(np.array(list(adjusted[k].values()), dtype=float)) for k in adjusted}

    def d(k, a):
        return discount[k][min(a, 3)]

    def p(w, k):
        if k == 1:
            total = sum(adjusted[1].values())
            gamma = sum(d(1, a) for a in adjusted[1].values()) / total
            return (adjusted[1][(w,)] - d(1, adjusted[1][(w,)])) / total + gamma / V
        context = tuple(([BOUNDARY] * order + history)[len(history) + order - k + 1 :])
        children = {g: a for g, a in adjusted[k].items() if g[:-1] == context and a > 0}
        total = sum(children.values())
        if total == 0:
            return p(w, k - 1)
        a = children.get(context + (w,), 0)
        gamma = sum(d(k, c) for c in children.values()) / total
        return (a - d(k, a)) / total + gamma * p(w, k - 1)

    return np.array([p(w, order) for w in range(V)])


@pytest.fixture(scope="module")
def corpus() -> list[np.ndarray]:
    return markov_corpus(40, order=2, seed=0, noise=0.3)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_probabilities_follow_the_kneser_ney_formulas_and_sum_to_one(corpus, order):
    model = NgramModel.from_counts(NgramCounts.fit(corpus, 5, V, BOUNDARY), order)
    seen = list(corpus[3][:6])
    histories = [seen, seen[:1], [], [5, 5, 5, 5, 5, 5], [1, 11, 1, 11, 1, 11]]  # seen, at the start, never seen
    for history in histories:
        last = ([BOUNDARY] * (order - 1) + history)[len(history) :]  # the n-1 tokens the model reads
        probs = model.next_token_probs(np.array(last, dtype=np.int64).reshape(1, order - 1))[0]
        assert probs.sum() == pytest.approx(1.0, abs=1e-12)
        assert (probs > 0).all()
        np.testing.assert_allclose(probs, reference_probs(corpus, order, history), rtol=1e-10)


def test_window_nll_scores_the_completion_token_by_token(corpus):
    model = NgramModel.from_counts(NgramCounts.fit(corpus, 3, V, BOUNDARY), 3)
    context, completion = list(corpus[5][:7]), list(corpus[5][7:15])
    expected, history = 0.0, [BOUNDARY, BOUNDARY] + context
    for token in completion:
        expected -= np.log(model.next_token_probs(np.array([history[-2:]]))[0, token])
        history.append(token)
    totals = model.window_nll([context, context[:2]], [completion, completion[:3]])
    assert totals[0] == pytest.approx(expected, rel=1e-12)
    assert len(totals) == 2 and 0 < totals[1] < totals[0]


def test_discounts_are_chen_and_goodmans_and_stay_in_range():
    counts = np.array([1] * 10 + [2] * 5 + [3] * 3 + [4] * 2 + [9])
    y = 10 / (10 + 2 * 5)
    np.testing.assert_allclose(discounts(counts), [0, 1 - 2 * y * 5 / 10, 2 - 3 * y * 3 / 5, 3 - 4 * y * 2 / 3])
    assert (discounts(np.array([3, 3, 3, 5]))[1:] >= 0.1).all()  # no singletons: the estimate collapses, kept positive


def test_structure_beats_the_unigram_and_order_selection_finds_the_needed_context():
    train, valid = markov_corpus(300, order=3, seed=1), markov_corpus(40, order=3, seed=2)
    counts = NgramCounts.fit(train, 6, V, BOUNDARY)
    contexts, completions = [list(s[:10]) for s in valid], [list(s[10:]) for s in valid]
    tokens = sum(map(len, completions))
    frequencies = np.bincount(np.concatenate(train), minlength=V) + 1.0
    unigram = -np.log(frequencies / frequencies.sum())[np.concatenate(completions)].mean()
    model, nll = choose_order(counts, [2, 3, 4, 6], contexts, completions)
    assert model.order == 4  # three tokens of context decide the next one
    assert nll[4] < nll[3] < nll[2] < unigram and nll[4] < unigram - 1.5
    assert nll[4] == pytest.approx(model.window_nll(contexts, completions).sum() / tokens)
    # A first-order chain: longer contexts only dilute the counts.
    train, valid = markov_corpus(30, order=1, seed=3, noise=0.5), markov_corpus(40, order=1, seed=4, noise=0.5)
    model, nll = choose_order(NgramCounts.fit(train, 6, V, BOUNDARY), [2, 6], [list(s[:5]) for s in valid],
                              [list(s[5:]) for s in valid])  # fmt: skip
    assert model.order == 2, nll


def test_overlapping_windows_count_each_bar_once():
    bar = 1
    piece = np.array([bar, 2, 3, bar, 4, 5, bar, 2, 3, bar, 6, 7, bar, 8, 9])  # five bars
    windows = [piece[0:9], piece[6:15], piece[3:12]]  # bars 0-2, 2-4, 1-3 (three-bar windows, step 1)
    rows = {"piece_id": ["p"] * 3, "start_bar": [0, 2, 1], "transpose": [0, 0, 0]}
    fresh = fresh_starts(rows, windows, bar)
    assert fresh.tolist() == [0, 6, 6]  # the 1-3 window adds bar 3 (its last), then 2-4 adds bar 4 only
    once = NgramCounts.fit(windows, 3, 10, BOUNDARY, fresh)
    whole = NgramCounts.fit([piece], 3, 10, BOUNDARY)
    for k in range(3):
        assert once.counts[k].sum() == whole.counts[k].sum() == len(piece)
    by_token = [dict(zip(c.keys[0].tolist(), c.counts[0].tolist())) for c in (once, whole)]
    assert by_token[0] == by_token[1]
    twice = NgramCounts.fit(windows, 3, 10, BOUNDARY)
    assert twice.counts[0].sum() == 27


# ----------------------------------------------------------------------------------------------------------------
# REMI: the stage end to end, and sampling through the grammar-masked engine


@pytest.fixture(scope="module")
def ngram_run(tmp_path_factory, tokenizer_path):
    """Windows of a few figured pieces (4/4 and 3/4) cut by the windows stage, and the n-gram stage run on them."""
    root = tmp_path_factory.mktemp("ngram")
    tokenizer = load_tokenizer(tokenizer_path)
    # Figures in registers of their own (also when transposed by the seed): a pitch says which figure it is in.
    figures = [([60, 64, 67, 72], (4, 4)), ([36, 43, 40, 43], (4, 4)), ([76, 79, 83], (3, 4)), ([48, 52, 55], (3, 4))]
    for split, seeds in [("train", range(3)), ("validation", [7])]:
        rows = {"piece_id": [], "transpose": [], "ids": [], "bar_offsets": []}
        for seed in seeds:
            for f, (figure, meter) in enumerate(figures):
                score = make_piano_score(14, 2 * len(figure), time_signature=meter, pitches=[p + seed for p in figure],
                                         velocities=[80], seed=seed)  # fmt: skip
                ids, bar_offsets, _ = tokenize_score(tokenizer, score)
                rows["piece_id"].append(f"{split}-{seed}-{f}")
                rows["transpose"].append(0)
                rows["ids"].append(ids.astype(np.uint16))
                rows["bar_offsets"].append(bar_offsets.astype(np.uint32))
        pq.write_table(pa.table(rows), root / f"{split}.parquet")
        build_windows(tokenizer_path, [root / f"{split}.parquet"], 4, 2, 2, 4096, root / split)
    info = fit_ngram(root / "train", root / "validation", tokenizer_path, root / "run", [1, 2, 4, 8], None, None, 0)
    return root / "run", info


def test_a_subset_of_the_windows_leaves_their_folder_untouched(ngram_run):
    """The windows are another stage's output (and a training run's resume fingerprint): no cache file beside them."""
    train_dir = ngram_run[0].parent / "train"
    before = sorted(path.name for path in train_dir.iterdir())
    windows = datasets.load_from_disk(str(train_dir))
    subset = seeded_subset(windows, len(windows) - 1, seed=0, stream=1)
    assert len(subset) == len(windows) - 1 and subset[0]["context_ids"] in windows["context_ids"]
    assert sorted(path.name for path in train_dir.iterdir()) == before


def test_the_stage_chooses_an_order_and_records_every_orders_nll(ngram_run):
    run_dir, info = ngram_run
    saved = json.loads((run_dir / "model.json").read_text())
    assert saved == info and saved["arch"] == "ngram"
    assert sorted(saved["validation_nll"]) == ["1", "2", "4", "8"]
    assert saved["order"] == int(min(saved["validation_nll"], key=saved["validation_nll"].get))
    assert saved["validation_nll"][str(saved["order"])] < saved["validation_nll"]["1"] - 1  # figures are predictable
    assert (run_dir / "tokenizer.json").is_file()


def test_a_saved_model_loads_with_the_same_probabilities(ngram_run):
    run_dir, _ = ngram_run
    model = NgramModel.load(run_dir / "model.npz")
    again = NgramModel.load(run_dir / "model.npz")
    model.save(run_dir.parent / "copy.npz")
    copy = NgramModel.load(run_dir.parent / "copy.npz")
    history = np.full((1, model.order - 1), model.boundary)
    for other in (again, copy):
        assert other.order == model.order
        np.testing.assert_array_equal(other.next_token_probs(history), model.next_token_probs(history))


def test_samples_are_valid_remi_with_m_bars_and_deterministic_for_a_seed(ngram_run):
    run_dir, info = ngram_run
    completer = Completer.load(run_dir / "model.npz")
    assert isinstance(completer.decoder, NgramDecoder) and completer.model.order == info["order"]
    for meter in [(4, 4), (3, 4)]:
        prompt = completer.prompt_ids(make_piano_score(4, 6, time_signature=meter, seed=5), None)
        for seed in range(3):
            sampling = Sampling(bars=3, samples=4, temperature=1.2, top_p=1.0, seed=seed, max_tokens_per_bar=80)
            continuations = completer.generate(prompt, sampling, progress=False)
            check_samples(completer, prompt, continuations, bars=3)
            assert completer.generate(prompt, sampling, progress=False) == continuations
        other = completer.generate(prompt, Sampling(bars=3, samples=4, seed=11), progress=False)
        assert other != continuations


def test_the_complete_command_takes_an_ngram_checkpoint(ngram_run, tmp_path, capsys):
    run_dir, _ = ngram_run
    prompt = write_midi(make_piano_score(4, 6, seed=2), tmp_path / "prompt.mid")
    args = ["complete", str(prompt), "--checkpoint", str(run_dir / "model.npz"), "--bars", "2", "--samples", "2"]
    assert main([*args, "-o", str(tmp_path / "out")]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2 and (tmp_path / "out/sample-1.mid").is_file()


def test_a_figure_prompt_is_continued_with_its_pitches(ngram_run):
    """The train pieces repeat figures: after one of them, the model's notes come from it (it learned something)."""
    run_dir, _ = ngram_run
    completer = Completer.load(run_dir / "model.npz")
    figure = [61, 65, 68, 73]  # the train pieces' first figure a semitone up (seed 1)
    prompt = completer.prompt_ids(make_piano_score(4, 8, pitches=figure, velocities=[80]), None)
    completion = completer.complete_ids(prompt, Sampling(bars=2, samples=2, temperature=0.5, seed=0), progress=False)
    for continuation in completion.continuations:
        pitches = [note.pitch for track in continuation.tracks for note in track.notes]
        assert pitches and np.isin(pitches, figure).mean() > 0.8


@pytest.mark.slow
@pytest.mark.maestro
def test_the_workflow_builds_both_baselines_beside_the_run(tmp_path, maestro_dir):
    workdir = copy_workflow(tmp_path)
    write_tiny_run_overrides(workdir, maestro_dir, {
        "windows": {"context_bars": 2, "completion_bars": 1, "step": 1, "max_tokens": 512},
        "train": {**TINY_TRAIN, "run": "tiny"},
        "ngram": {"orders": [2, 3], "max_windows": 50, "validation_windows": 20},
    })  # fmt: skip
    snakemake(workdir, "baselines", "--configfile", "overrides.yaml")
    checkpoints = workdir / "results/checkpoints"
    assert not (checkpoints / "tiny").exists()  # the RWKV-7 run is not needed for its baselines, nor overwritten
    transformer = json.loads((checkpoints / "tiny-transformer/best.json").read_text())
    assert transformer["arch"] == "transformer" and transformer["model"]["n_layer"] == 2
    ngram = json.loads((checkpoints / "tiny-ngram/model.json").read_text())
    assert ngram["train_windows"] == 50 and ngram["validation_windows"] == 20 and ngram["order"] in (2, 3)
    assert "chose order" in (workdir / "results/logs/ngram/tiny.log").read_text()
    for checkpoint in [checkpoints / "tiny-transformer/best.pth", checkpoints / "tiny-ngram/model.npz"]:
        completer = Completer.load(checkpoint)
        prompt = completer.prompt_ids(make_piano_score(3, 4, seed=1), None)
        check_samples(completer, prompt, completer.generate(prompt, Sampling(bars=2, samples=2), progress=False), 2)
    assert "Nothing to be done" in snakemake(workdir, "baselines", "--configfile", "overrides.yaml").stderr
