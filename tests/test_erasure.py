"""Erasing rows from shared Parquet files (storage/erasure.py), tombstones, and readers that
located a clip before its file was rewritten."""

from __future__ import annotations

import threading
import time
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from voxtox.storage.clips import ShardChangedError, read_audio_bytes
from voxtox.storage.erasure import RecordingRows, erase_rows, shards_lock
from voxtox.storage.schema import REJECTS_SCHEMA, SCHEMA_VERSION
from voxtox.storage.parquet import write_parquet_atomic
from voxtox.storage.shards import shard_files
from voxtox.storage.tombstones import add_tombstones, forgotten_sha256s, read_tombstones

SHA_X, SHA_Y = "a" * 64, "b" * 64


def rejects(rows: list[tuple[str | None, str]]) -> pa.Table:
    """Rejects rows (source_sha256, source_uri), in the table's schema with its metadata."""
    records = [{"source_sha256": sha, "source_uri": uri, "stage": "ingest", "reason": "x"} for sha, uri in rows]
    return pa.Table.from_pylist(records, REJECTS_SCHEMA)


def test_only_the_recordings_rows_go_and_only_files_holding_them_change(tmp_path: Path) -> None:
    root = tmp_path / "rejects"
    merged = write_parquet_atomic(rejects([(SHA_X, "x.wav"), (SHA_Y, "y.wav"), (None, "x.wav")]), root / "merged.parquet")
    only_x = write_parquet_atomic(rejects([(SHA_X, "x.wav")]), root / "part-x.parquet")
    # Same URI, another recording's hash: a URI matches only rows that have no hash.
    other = write_parquet_atomic(rejects([(SHA_Y, "x.wav"), (None, "z.wav")]), root / "part-y.parquet")
    untouched = other.stat()

    done = erase_rows(shard_files(tmp_path, "rejects"), RecordingRows(frozenset({SHA_X}), frozenset({"x.wav"})))

    assert done.rows == {str(merged): 2, str(only_x): 1}
    assert done.deleted == [str(only_x)] and not only_x.exists()
    assert done.rewritten == [str(merged)]
    kept = pq.ParquetFile(merged)
    assert kept.read().select(["source_sha256", "source_uri"]).to_pylist() == [{"source_sha256": SHA_Y, "source_uri": "y.wav"}]
    assert kept.schema_arrow.metadata[b"voxtox.schema_version"] == SCHEMA_VERSION.encode()
    assert (other.stat().st_ino, other.stat().st_mtime_ns) == (untouched.st_ino, untouched.st_mtime_ns)
    assert not list(root.glob(".*"))  # no temporary file left behind


def test_tables_keyed_by_clip_only_are_matched_by_clip_id(tmp_path: Path) -> None:
    scores = tmp_path / "scores.parquet"
    table = pa.table({"clip_id": ["c1", "c2"], "window_probs": [[[0.1]], [[0.2]]]})
    write_parquet_atomic(table.replace_schema_metadata({b"voxtox.scores_key": b"{}"}), scores)
    done = erase_rows([scores], RecordingRows(frozenset({SHA_X}), clip_ids=frozenset({"c1"})))
    assert done.n_rows == 1
    assert pq.read_table(scores)["clip_id"].to_pylist() == ["c2"]
    assert pq.ParquetFile(scores).schema_arrow.metadata[b"voxtox.scores_key"] == b"{}"
    # A file without any column a recording can be found by is left alone.
    assert erase_rows([scores], RecordingRows(frozenset({SHA_X}))).n_rows == 0


def test_tombstones_keep_the_hash_and_the_first_day_only(tmp_path: Path) -> None:
    path = tmp_path / "tombstones.txt"
    assert forgotten_sha256s(path) == frozenset()
    assert add_tombstones(path, {SHA_X}, date(2026, 12, 1)) == 1
    assert add_tombstones(path, {SHA_X, SHA_Y}, date(2026, 12, 2)) == 1
    assert read_tombstones(path) == {SHA_X: "2026-12-01", SHA_Y: "2026-12-02"}
    body = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    assert body == [f"{SHA_X} 2026-12-01", f"{SHA_Y} 2026-12-02"]
    path.write_text(path.read_text() + "not a tombstone\n")
    with pytest.raises(ValueError, match="tombstones.txt:4: not a tombstone line"):
        read_tombstones(path)


def test_an_eraser_waits_for_writers_and_writers_wait_for_it(tmp_path: Path) -> None:
    order: list[str] = []

    def erase() -> None:
        with shards_lock(tmp_path, exclusive=True):
            order.append("erase")

    with shards_lock(tmp_path, exclusive=False), shards_lock(tmp_path, exclusive=False):  # writers share it
        eraser = threading.Thread(target=erase)
        eraser.start()
        time.sleep(0.3)
        order.append("write done")
    eraser.join(5)
    assert order == ["write done", "erase"]


def test_a_reader_never_gets_another_clips_audio_after_a_rewrite(tmp_path: Path) -> None:
    audio = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({
        "clip_id": ["c0", "c1", "c2"], "source_sha256": [SHA_X, SHA_Y, SHA_Y],
        "audio": pa.array([{"bytes": f"flac{i}".encode(), "path": f"c{i}.flac"} for i in range(3)], audio),
    })
    shard = write_parquet_atomic(table, tmp_path / "clips" / "part.parquet")
    assert read_audio_bytes(str(shard), 1, "c1") == b"flac1"  # located: c1 is row 1
    erase_rows([shard], RecordingRows(frozenset({SHA_X})))  # c0 goes, c1 moves to row 0
    with pytest.raises(ShardChangedError, match="no longer holds clip c1"):
        read_audio_bytes(str(shard), 1, "c1")
    assert read_audio_bytes(str(shard), 0, "c1") == b"flac1"  # located again, it is found
    erase_rows([shard], RecordingRows(frozenset({SHA_Y})))
    with pytest.raises(ShardChangedError, match="is gone"):
        read_audio_bytes(str(shard), 0, "c1")
