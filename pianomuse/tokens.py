"""Tokenize stage: raw MIDI files -> Parquet token shards (one row per piece) plus a rejects table per shard."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from miditok import REMI
from symusic import Score

from pianomuse.files import write_parquet_atomic
from pianomuse.maestro import read_manifest
from pianomuse.remi import RejectedPiece, list_array, tokenize_score
from pianomuse.tokenizer import load_tokenizer

# Contract of a token shard (results/tokens/{split}/shard-{k}.parquet); the augment shards share it.
TOKEN_SHARD_SCHEMA = pa.schema(
    [
        ("piece_id", pa.string()),  # MAESTRO midi_filename without extension, e.g. "2004/MIDI-Unprocessed_..."
        ("split", pa.string()),
        ("composer", pa.string()),
        ("title", pa.string()),
        ("year", pa.int32()),
        ("duration", pa.float64()),  # seconds, from maestro-v3.0.0.csv
        ("transpose", pa.int8()),  # semitones; 0 for the original
        ("ids", pa.list_(pa.uint16())),
        ("bar_offsets", pa.list_(pa.uint32())),  # index in `ids` of every Bar token
        ("n_notes", pa.int32()),
    ]
)

# Contract of a rejects table (results/tokens/{split}/shard-{k}.rejects.parquet).
REJECTS_SCHEMA = pa.schema([("piece_id", pa.string()), ("path", pa.string()), ("reason", pa.string())])


def shard_index(piece_id: str, n_shards: int) -> int:
    """The shard of a piece, from a hash of its id alone: adding or removing pieces moves no other piece."""
    digest = hashlib.sha1(piece_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % n_shards


def tokenize_piece(tokenizer: REMI, midi_path: str | Path) -> tuple[np.ndarray, np.ndarray, int]:
    """REMI ids (uint16), the index of every Bar token in them (uint32), and the number of notes encoded.

    Raises RejectedPiece when the file is not readable MIDI, holds no piano notes, or encodes to no notes.
    """
    # Any failure in symusic or miditok is the file's fault as far as the shard goes: quarantine, go on.
    try:
        score = Score(str(midi_path))
    except Exception as error:
        raise RejectedPiece(f"not a readable MIDI file: {type(error).__name__}: {error}") from error
    return tokenize_score(tokenizer, score)


def tokenize_shard(
    tokenizer_path: str | Path,
    manifest_path: str | Path,
    shard: int,
    n_shards: int,
    outputs: Mapping[str, tuple[str | Path, str | Path]],
) -> dict[str, dict]:
    """Tokenize the pieces that fall in `shard`, for every split in `outputs` (split -> (shard path, rejects path)).

    One job covers every split so that each job carries a similar load and the process start-up is paid once.
    Rows are sorted by piece_id. Each file is written whole or not at all. Returns counts and timing per split.
    """
    if not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} is not in 0..{n_shards - 1}")
    tokenizer = load_tokenizer(tokenizer_path)
    manifest = read_manifest(manifest_path)
    in_shard = np.array([shard_index(piece_id, n_shards) == shard for piece_id in manifest["piece_id"]], dtype=bool)
    manifest = manifest[in_shard]
    return {
        split: tokenize_pieces(tokenizer, manifest[manifest["split"] == split], shard_path, rejects_path)
        for split, (shard_path, rejects_path) in outputs.items()
    }


def tokenize_pieces(tokenizer: REMI, pieces: pd.DataFrame, shard_path: str | Path, rejects_path: str | Path) -> dict:
    """Tokenize manifest rows into one token shard and its rejects table."""
    start = time.perf_counter()
    pieces = pieces.sort_values("piece_id", ignore_index=True)
    kept, ids, bar_offsets, n_notes = [], [], [], []
    rejects = {"piece_id": [], "path": [], "reason": []}
    for row, (piece_id, midi_path) in enumerate(zip(pieces["piece_id"], pieces["midi_path"])):
        try:
            piece_ids, piece_bars, piece_notes = tokenize_piece(tokenizer, midi_path)
        except RejectedPiece as rejected:
            rejects["piece_id"].append(piece_id)
            rejects["path"].append(midi_path)
            rejects["reason"].append(rejected.reason)
            continue
        kept.append(row)
        ids.append(piece_ids)
        bar_offsets.append(piece_bars)
        n_notes.append(piece_notes)

    tokenized = pieces.iloc[kept]
    columns = {name: tokenized[name] for name in ["piece_id", "split", "composer", "title", "year", "duration"]}
    columns["transpose"] = np.zeros(len(kept), dtype=np.int8)
    columns["ids"] = list_array(ids, pa.uint16())
    columns["bar_offsets"] = list_array(bar_offsets, pa.uint32())
    columns["n_notes"] = np.array(n_notes, dtype=np.int32)
    write_parquet_atomic(pa.Table.from_pydict(columns, schema=TOKEN_SHARD_SCHEMA), shard_path)
    write_parquet_atomic(pa.Table.from_pydict(rejects, schema=REJECTS_SCHEMA), rejects_path)
    return {
        "pieces": len(kept),
        "rejected": len(rejects["piece_id"]),
        "notes": int(sum(n_notes)),
        "tokens": int(sum(len(a) for a in ids)),
        "seconds": round(time.perf_counter() - start, 3),
    }
