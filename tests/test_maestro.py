"""MAESTRO source stage: download and verify the archive, use an existing copy, read the metadata into a manifest."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from workflow_helpers import MAESTRO_CSV_HEADER, fake_maestro, serve_as_maestro_zip

from pianomuse.maestro import MANIFEST_SCHEMA, ensure_maestro, read_manifest, read_metadata, write_manifest

PIECES = [
    ["Frédéric Chopin", "Ballade No. 1", "train", 2004, "2004/ballade.midi", "2004/ballade.wav", 540.5],
    ["Johann Sebastian Bach", "Prelude in C", "test", 2006, "2006/prelude.midi", "2006/prelude.wav", 120.25],
]


@pytest.fixture(scope="module")
def served_zip(tmp_path_factory):
    """(url, sha256) of a fake MAESTRO zipped like the official one (top-level maestro-v3.0.0/), on loopback HTTP."""
    source = fake_maestro(tmp_path_factory.mktemp("source"), PIECES)
    yield from serve_as_maestro_zip(source, tmp_path_factory.mktemp("served"))


def test_missing_folder_is_downloaded_verified_and_unpacked(served_zip, tmp_path):
    url, sha256 = served_zip
    maestro_dir = ensure_maestro(tmp_path / "resources/maestro-v3.0.0", url, sha256)

    assert maestro_dir == (tmp_path / "resources/maestro-v3.0.0").resolve()
    assert sorted(p.name for p in maestro_dir.iterdir()) == ["2004", "2006", "maestro-v3.0.0.csv"]
    assert (maestro_dir / "2004/ballade.midi").is_file()
    # Nothing temporary is left beside it.
    assert [p.name for p in (tmp_path / "resources").iterdir()] == ["maestro-v3.0.0"]


def test_checksum_mismatch_is_a_clear_error_and_leaves_nothing(served_zip, tmp_path):
    url, sha256 = served_zip
    wrong = "0" * 64
    with pytest.raises(ValueError, match=f"expected sha256 {wrong}, got {sha256}"):
        ensure_maestro(tmp_path / "maestro-v3.0.0", url, wrong)
    assert list(tmp_path.iterdir()) == []


def test_failed_download_is_a_clear_error_and_leaves_nothing(served_zip, tmp_path):
    url, sha256 = served_zip
    with pytest.raises(RuntimeError, match="could not download .*404"):
        ensure_maestro(tmp_path / "maestro-v3.0.0", url.replace(".zip", "-missing.zip"), sha256)
    assert list(tmp_path.iterdir()) == []


def test_existing_folder_is_used_as_is_without_network(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        pytest.fail("ensure_maestro went to the network for a folder that exists")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    maestro_dir = fake_maestro(tmp_path / "maestro", PIECES)
    assert ensure_maestro(maestro_dir, "http://127.0.0.1:9/unused.zip", "0" * 64) == maestro_dir.resolve()


def test_existing_folder_without_the_csv_is_an_error(tmp_path):
    (tmp_path / "maestro").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no maestro-v3.0.0.csv"):
        ensure_maestro(tmp_path / "maestro", "http://127.0.0.1:9/unused.zip", "0" * 64)


def test_metadata_becomes_a_manifest(tmp_path):
    maestro_dir = fake_maestro(tmp_path / "maestro", PIECES)
    metadata = read_metadata(maestro_dir)
    write_manifest(metadata, tmp_path / "manifest.parquet")
    manifest = read_manifest(tmp_path / "manifest.parquet")

    assert list(manifest.columns) == MANIFEST_SCHEMA.names
    assert manifest.to_dict("records") == [
        {
            "piece_id": "2006/prelude",
            "split": "test",
            "composer": "Johann Sebastian Bach",
            "title": "Prelude in C",
            "year": 2006,
            "duration": 120.25,
            "midi_path": str((maestro_dir / "2006/prelude.midi").resolve()),
        },
        {
            "piece_id": "2004/ballade",
            "split": "train",
            "composer": "Frédéric Chopin",
            "title": "Ballade No. 1",
            "year": 2004,
            "duration": 540.5,
            "midi_path": str((maestro_dir / "2004/ballade.midi").resolve()),
        },
    ]


def test_pieces_per_split_keeps_the_same_subset_for_a_seed(tmp_path):
    rows = [
        ["C", f"T{i}", split, 2004, f"2004/{split}-{i}.midi", "", 1.0] for split in ["train", "test"] for i in range(6)
    ]
    maestro_dir = fake_maestro(tmp_path / "maestro", rows)

    subset = read_metadata(maestro_dir, pieces_per_split=2, seed=3)
    assert subset["split"].value_counts().to_dict() == {"train": 2, "test": 2}
    assert subset.equals(read_metadata(maestro_dir, pieces_per_split=2, seed=3))
    assert len(read_metadata(maestro_dir, pieces_per_split=10)) == 12


@pytest.mark.parametrize(
    ("csv_text", "message"),
    [
        ("canonical_composer,split\nBach,train\n", "lacks the columns"),
        (",".join(MAESTRO_CSV_HEADER) + "\nBach,Prelude,holdout,2004,2004/a.midi,2004/a.wav,1.0\n", "has splits"),
        (
            ",".join(MAESTRO_CSV_HEADER) + "\nBach,Prelude,train,last year,2004/a.midi,2004/a.wav,1.0\n",
            "malformed year",
        ),
        ("", "not a readable csv"),
    ],
)
def test_malformed_csv_is_a_clear_error(tmp_path, csv_text, message):
    (tmp_path / "maestro-v3.0.0.csv").write_text(csv_text)
    with pytest.raises(ValueError, match=message):
        read_metadata(tmp_path)


def test_missing_csv_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no maestro-v3.0.0.csv"):
        read_metadata(tmp_path)


@pytest.mark.maestro
def test_real_maestro_metadata(maestro_dir):
    metadata = read_metadata(maestro_dir)
    assert len(metadata) == 1276
    assert metadata["split"].value_counts().to_dict() == {"train": 962, "validation": 137, "test": 177}
    assert metadata["piece_id"].is_unique
    assert all(Path(p).is_file() for p in metadata["midi_path"].head(20))
