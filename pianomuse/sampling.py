"""Sampling REMI tokens that always decode: a grammar mask over the vocabulary, and temperature / top-k / top-p.

The grammar is miditok's own table of which token type may follow which (`tokenizer.tokens_types_graph`, what
`tokens_errors` checks), made stricter where miditok's table allows what its encoder never writes:
a TimeSig only right after a Bar, and nothing but a Position or the next Bar right after a TimeSig.
On top of the types it tracks values, per stream:
    the time signature stays the one in force where the stream was picked up (MAESTRO's MIDI states 4/4
    throughout, so a model trained on it knows no meter: left free, it turns every 3/4 prompt into 4/4);
    positions strictly rise within a bar and stay below the bar's length (numerator x positions per beat);
    a pitch is not played twice at one position (miditok would drop the duplicate);
    special tokens (PAD, BOS, EOS) and token types outside the table (PitchDrum) never come out.
A stream also has a token budget per bar: past it, the next Bar is forced as soon as the grammar allows one, so a
stream always ends (Pedal -> Pedal, for one, could loop forever).

Each stream draws from its own generator (seeded from the seed and the stream's index), one uniform number per
token, so a stream's tokens do not depend on how many streams run beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from miditok import REMI


@dataclass(frozen=True)
class GrammarTables:
    """Per-vocabulary lookups for the grammar, built once from the tokenizer."""

    token_type: torch.Tensor  # [V] long: index of the token's type, or -1 for a type the grammar never emits
    may_follow: torch.Tensor  # [types, V] bool: the ids that may follow a token of each type (by type alone)
    position: torch.Tensor  # [V] long: the value of a Position token, -1 elsewhere
    bar_positions: torch.Tensor  # [V] long: positions per bar of a TimeSig token, -1 elsewhere
    is_pitch: torch.Tensor  # [V] bool
    pitch_class: torch.Tensor  # [V] long: the pitch class (0 = C) of a Pitch token, -1 elsewhere
    bar_id: int
    type_ids: dict[str, int]  # type name -> index

    @classmethod
    def of(cls, tokenizer: REMI) -> GrammarTables:
        # Drum notes never come out: the stream is one piano track.
        never = {token.split("_")[0] for token in tokenizer.special_tokens} | {"PitchDrum"}
        graph = {
            source: targets - never for source, targets in tokenizer.tokens_types_graph.items() if source not in never
        }
        for source, targets in graph.items():
            if source != "Bar":
                targets.discard("TimeSig")
        graph["TimeSig"] &= {"Position", "Bar"}
        type_ids = {name: i for i, name in enumerate(sorted(graph))}
        follows = torch.zeros(len(type_ids), len(type_ids), dtype=torch.bool)
        for source, targets in graph.items():
            for target in targets:
                follows[type_ids[source], type_ids[target]] = True

        vocab_size = len(tokenizer.vocab)
        token_type = torch.full((vocab_size,), -1, dtype=torch.long)
        position = torch.full((vocab_size,), -1, dtype=torch.long)
        bar_positions = torch.full((vocab_size,), -1, dtype=torch.long)
        pitch_class = torch.full((vocab_size,), -1, dtype=torch.long)
        for token, i in tokenizer.vocab.items():
            kind, _, value = token.partition("_")
            if kind not in type_ids:
                continue
            token_type[i] = type_ids[kind]
            if kind == "Position":
                position[i] = int(value)
            elif kind == "Pitch":
                pitch_class[i] = int(value) % 12
            elif kind == "TimeSig":
                # A bar of n/d holds n beats of the denominator's note value, each max_num_pos_per_beat positions.
                bar_positions[i] = int(value.split("/")[0]) * tokenizer.config.max_num_pos_per_beat
        return cls(
            token_type=token_type,
            may_follow=follows[:, token_type.clamp(min=0)] & (token_type >= 0),
            position=position,
            bar_positions=bar_positions,
            is_pitch=token_type == type_ids["Pitch"],
            pitch_class=pitch_class,
            bar_id=tokenizer.vocab["Bar_None"],
            type_ids=type_ids,
        )


@dataclass
class GrammarState:
    """Where each of K streams stands: [K] tensors, [K, V] for the pitches already at the current position."""

    last_type: torch.Tensor  # type index of the last token
    position: torch.Tensor  # current position in the bar, -1 right after a Bar
    bar_positions: torch.Tensor  # positions in the current bar (from its TimeSig)
    time_signature: torch.Tensor  # the id of the TimeSig in force, -1 before any
    pitches_here: torch.Tensor  # [K, V] bool: Pitch ids already played at the current position
    bars: torch.Tensor  # Bar tokens seen
    tokens_in_bar: torch.Tensor  # tokens since the last Bar

    @classmethod
    def after(cls, tables: GrammarTables, ids: list[int]) -> GrammarState:
        """The state of one stream after `ids`, which must start with a Bar (a prompt, as `complete` builds it)."""
        if not ids or ids[0] != tables.bar_id:
            raise ValueError("a REMI stream to continue must start with a Bar token")
        vocab_size = len(tables.token_type)
        state = cls(
            last_type=torch.tensor([tables.type_ids["Bar"]]),
            position=torch.tensor([-1]),
            bar_positions=torch.tensor([0]),
            time_signature=torch.tensor([-1]),
            pitches_here=torch.zeros(1, vocab_size, dtype=torch.bool),
            bars=torch.tensor([1]),
            tokens_in_bar=torch.tensor([0]),
        )
        for token in ids[1:]:
            advance(tables, state, torch.tensor([token]))
        return state

    def repeat(self, k: int) -> GrammarState:
        """Each stream k times, rows in the order of `model.state_repeat`."""
        return GrammarState(**{f.name: getattr(self, f.name).repeat_interleave(k, dim=0) for f in fields(self)})

    def select(self, rows: torch.Tensor) -> GrammarState:
        """The streams of the rows a [K] bool mask keeps."""
        return GrammarState(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})


def allowed(tables: GrammarTables, state: GrammarState, max_tokens_per_bar: int) -> torch.Tensor:
    """[K, V] bool: the ids each stream may take next."""
    mask = tables.may_follow[state.last_type]
    is_position = tables.position >= 0
    position_ok = (tables.position > state.position[:, None]) & (tables.position < state.bar_positions[:, None])
    mask &= ~is_position | position_ok
    is_signature = tables.bar_positions >= 0
    in_force = torch.arange(len(is_signature), device=is_signature.device) == state.time_signature[:, None]
    mask &= ~is_signature | in_force | (state.time_signature[:, None] < 0)
    mask &= ~state.pitches_here
    over_budget = (state.tokens_in_bar >= max_tokens_per_bar) & mask[:, tables.bar_id]
    if over_budget.any():
        mask[over_budget] = False
        mask[over_budget, tables.bar_id] = True
    return mask


def advance(tables: GrammarTables, state: GrammarState, ids: torch.Tensor) -> None:
    """Move every stream past its token ids[k] (in place)."""
    token_type = tables.token_type[ids]
    is_bar = ids == tables.bar_id
    is_position = tables.position[ids] >= 0
    is_timesig = tables.bar_positions[ids] >= 0
    state.last_type = token_type
    state.position = torch.where(is_bar, -1, state.position)
    state.position = torch.where(is_position, tables.position[ids], state.position)
    state.bar_positions = torch.where(is_timesig, tables.bar_positions[ids], state.bar_positions)
    state.time_signature = torch.where(is_timesig, ids, state.time_signature)
    state.pitches_here[is_bar | is_position] = False
    played = tables.is_pitch[ids]
    state.pitches_here[played.nonzero()[:, 0], ids[played]] = True
    state.bars += is_bar.long()
    state.tokens_in_bar = torch.where(is_bar, 0, state.tokens_in_bar + 1)


def key_penalty(tables: GrammarTables, in_key: torch.Tensor, strength: float) -> torch.Tensor:
    """[V] logit offsets that lower every Pitch token outside a key by `strength` (in nats, before temperature):
    `in_key` is the key's (12,) pitch-class mask. Other tokens, in-key pitches included, keep their logits."""
    outside = tables.is_pitch & ~in_key[tables.pitch_class.clamp(min=0)]
    return torch.where(outside, -strength, 0.0)


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float) -> torch.Tensor:
    """Probabilities [K, V] from masked logits (-inf where not allowed): temperature, then top-k, then top-p."""
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        # Keep a token while the mass before it is under top_p: the most likely one always stays.
        drop_sorted = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= top_p
        probs = probs.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), 0.0)
    return probs


class StreamUniforms:
    """One uniform number per token for each stream, from the stream's own generator (seeded from the seed and the
    stream's index). Drawn in blocks: the same numbers as one draw per token, without a generator call per token."""

    BLOCK = 256

    def __init__(self, seed: int, streams: list[int]):
        self.generators = [torch.Generator().manual_seed(seed * 1_000_003 + stream) for stream in streams]
        self.block = torch.empty(len(streams), 0, dtype=torch.float64)
        self.used = 0  # every live stream draws once per step, so one cursor serves them all

    def next(self, rows: list[int]) -> torch.Tensor:
        """The next number of each listed stream, [len(rows)] float64; rows are positions in the constructor's
        `streams`."""
        if self.used == self.block.shape[1]:
            self.block = torch.stack(
                [torch.rand(self.BLOCK, generator=g, dtype=torch.float64) for g in self.generators]
            )
            self.used = 0
        self.used += 1
        return self.block[rows, self.used - 1]


def draw(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """One id per row of probs [K, V] by inverse CDF at the row's uniform number in [0, 1)."""
    cdf = probs.double().cumsum(dim=-1)
    picked = torch.searchsorted(cdf, (uniforms * cdf[:, -1])[:, None], right=True)[:, 0]
    # A uniform of exactly the total mass would land past the end; the last id with mass is the right answer then.
    last_with_mass = probs.shape[-1] - 1 - (probs > 0).flip(-1).long().argmax(dim=-1)
    return torch.minimum(picked, last_with_mass)
