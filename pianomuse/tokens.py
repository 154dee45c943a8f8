"""Tokenize stage: raw MIDI files -> Parquet token shards (one row per piece) plus a rejects table per shard."""

from __future__ import annotations

import pyarrow as pa

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
