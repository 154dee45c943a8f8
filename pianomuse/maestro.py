"""MAESTRO source stage: a verified copy of MAESTRO v3.0.0 (MIDI) and the manifest of pieces the later stages read."""

from __future__ import annotations

import hashlib
import os
import urllib.request
import zipfile
from pathlib import Path
from typing import BinaryIO

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from pianomuse.files import atomic_folder, write_parquet_atomic

# SHA-256 of the official MIDI-only zip (58,416,533 bytes), as MusPy's MAESTRODatasetV3 pins it.
MAESTRO_V3_MIDI_SHA256 = "70470ee253295c8d2c71e6d9d4a815189e35c89624b76d22fce5a019d5dde12c"
METADATA_CSV = "maestro-v3.0.0.csv"
SPLITS = ("train", "validation", "test")  # the csv's `split` values; the workflow's split list (common.smk) too
CSV_COLUMNS = ["canonical_composer", "canonical_title", "split", "year", "midi_filename", "duration"]

MANIFEST_SCHEMA = pa.schema(
    [
        ("piece_id", pa.string()),  # midi_filename without extension, e.g. "2004/MIDI-Unprocessed_..."
        ("split", pa.string()),
        ("composer", pa.string()),
        ("title", pa.string()),
        ("year", pa.int32()),
        ("duration", pa.float64()),  # seconds
        ("midi_path", pa.string()),  # absolute
    ]
)

DOWNLOAD_CHUNK_BYTES = 1 << 20


def download_maestro(url: str, sha256: str, dest_dir: str | Path) -> Path:
    """Download the MAESTRO zip, check its SHA-256 and unpack it so that `dest_dir` holds the csv and year folders.

    Everything happens in a temporary folder beside `dest_dir`, which appears by one rename at the end:
    a failed or interrupted run leaves no half folder behind.
    """
    dest_dir = Path(dest_dir)
    if dest_dir.exists():
        raise FileExistsError(f"{dest_dir} already exists; remove it to download MAESTRO again")

    def download_and_unpack(staging: Path) -> Path:
        zip_path = staging / "download.zip"
        with open(zip_path, "wb") as zip_file:
            actual = stream_to_file(url, zip_file)
        if actual != sha256.lower():
            raise ValueError(
                f"checksum mismatch for {url}: expected sha256 {sha256.lower()}, got {actual}; "
                f"the download was discarded and {dest_dir} not created"
            )
        with zipfile.ZipFile(zip_path) as archive:
            archive.extractall(staging / "unpacked")
        return dataset_root(staging / "unpacked", url)

    atomic_folder(dest_dir, download_and_unpack)
    return dest_dir


def stream_to_file(url: str, file: BinaryIO) -> str:
    """Copy `url` into the open binary `file` chunk by chunk; returns the SHA-256 of what was written."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url) as response:
            size = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=size, unit="B", unit_scale=True, desc="MAESTRO", disable=None) as progress:
                while chunk := response.read(DOWNLOAD_CHUNK_BYTES):
                    file.write(chunk)
                    digest.update(chunk)
                    progress.update(len(chunk))
    except OSError as error:  # urllib's URLError and HTTPError are OSErrors
        raise RuntimeError(f"could not download {url}: {error}") from error
    return digest.hexdigest()


def dataset_root(unpack_dir: Path, url: str) -> Path:
    """The folder holding the csv: the official zip wraps everything in a top-level maestro-v3.0.0/ folder."""
    for folder in [unpack_dir, *sorted(p for p in unpack_dir.iterdir() if p.is_dir())]:
        if (folder / METADATA_CSV).is_file():
            return folder
    raise ValueError(f"the archive from {url} holds no {METADATA_CSV} at its top or one folder down")


def ensure_maestro(maestro_dir: str | Path, url: str, sha256: str) -> Path:
    """`maestro_dir` as is when it exists (it must hold the csv); downloaded and verified when it is missing."""
    maestro_dir = Path(maestro_dir)
    if not maestro_dir.exists():
        download_maestro(url, sha256, maestro_dir)
    elif not (maestro_dir / METADATA_CSV).is_file():
        raise FileNotFoundError(
            f"{maestro_dir} exists but holds no {METADATA_CSV}: point maestro_dir at a MAESTRO v3.0.0 folder, "
            "or remove it to have it downloaded"
        )
    return maestro_dir.resolve()


def read_metadata(maestro_dir: str | Path, pieces_per_split: int | None = None, seed: int = 0) -> pd.DataFrame:
    """The pieces listed in maestro-v3.0.0.csv, sorted by split and piece_id, with MANIFEST_SCHEMA's columns.

    `pieces_per_split` keeps that many pieces of each split, drawn with `seed` (the same ones on every run).
    """
    maestro_dir = Path(maestro_dir).resolve()
    csv_path = maestro_dir / METADATA_CSV
    if not csv_path.is_file():
        raise FileNotFoundError(f"no {METADATA_CSV} in {maestro_dir}")
    try:
        csv = pd.read_csv(csv_path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ValueError(f"{csv_path} is not a readable csv: {error}") from error
    missing = [column for column in CSV_COLUMNS if column not in csv.columns]
    if missing:
        raise ValueError(f"{csv_path} lacks the columns {missing} (it has {list(csv.columns)})")
    unknown_splits = set(csv["split"]) - set(SPLITS)
    if unknown_splits:
        raise ValueError(f"{csv_path} has splits {sorted(map(str, unknown_splits))}, expected only {list(SPLITS)}")

    if pieces_per_split is not None:
        csv = csv.sample(frac=1.0, random_state=seed).groupby("split", sort=False).head(pieces_per_split)
    filenames = csv["midi_filename"].astype(str)
    try:
        metadata = pd.DataFrame(
            {
                "piece_id": [os.path.splitext(name)[0] for name in filenames],
                "split": csv["split"].astype(str),
                "composer": csv["canonical_composer"].astype(str),
                "title": csv["canonical_title"].astype(str),
                "year": csv["year"].astype("int32"),
                "duration": csv["duration"].astype("float64"),
                "midi_path": [str(maestro_dir / name) for name in filenames],
            }
        )
    except (ValueError, TypeError) as error:
        raise ValueError(f"{csv_path} has a malformed year or duration: {error}") from error
    return metadata.sort_values(["split", "piece_id"], ignore_index=True)


def write_manifest(metadata: pd.DataFrame, path: str | Path) -> None:
    write_parquet_atomic(pa.Table.from_pandas(metadata, schema=MANIFEST_SCHEMA, preserve_index=False), path)


def read_manifest(path: str | Path) -> pd.DataFrame:
    return pq.read_table(path, schema=MANIFEST_SCHEMA).to_pandas()
