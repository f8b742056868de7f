"""`voxtox migrate` (storage/migrate.py) and `voxtox export-dataset` (storage/export.py): a data
dir's shards into a lake, the same rows and audio after as before; and the clips out as a plain
Parquet folder that `datasets` reads with its splits, from the shards or from the lake."""

from __future__ import annotations

import hashlib
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import old_shards
from conftest import synthetic_clips
from voxtox.flows.cli import app
from voxtox.settings import Settings
from voxtox.storage import lake
from voxtox.storage import migrate as migration
from voxtox.storage.catalog import Catalog
from voxtox.storage.lake import LakeTarget
from voxtox.storage.lake import embedded_target
from voxtox.storage.migrate import migrate
from voxtox.storage.schema import HUMAN_LABELS_SCHEMA, REJECTS_SCHEMA, SOURCES_SCHEMA
from old_shards import compact, replace_human_labels, replace_source
from voxtox.storage.tombstones import add_tombstones, tombstones_file

SPLITS = ("train", "val", "test")
LANGS = ("en", "es")


def _sha(i: int) -> str:
    return hashlib.sha256(f"recording {i}".encode()).hexdigest()


def _clips(sha: str, split: str, lang: str, n: int, seed: int) -> pa.Table:
    table = synthetic_clips(n, split, seed)
    replace = {"clip_id": [f"{sha[:8]}-{i}" for i in range(n)], "source_sha256": [sha] * n,
               "source_uri": [f"/in/{sha[:8]}.wav"] * n, "lang": [lang] * n}
    for name, values in replace.items():
        table = table.set_column(table.schema.get_field_index(name), name, pa.array(values, pa.string()))
    return table


def _row(schema: pa.Schema, **values: object) -> pa.Table:
    row = {field.name: None for field in schema} | values
    return pa.Table.from_pylist([row], schema).append_column("date", pa.array(["2026-01-01"]))


def data_dir_of_every_kind(data_dir: Path, sources: int = 6) -> Path:
    """A data dir as the single-machine commands leave it: sources in every split and two
    languages (a part file per source and partition), some compacted together, rejects, human
    labels and a tombstone."""
    root = data_dir / "shards"
    for i in range(sources):
        sha, split = _sha(i), SPLITS[i % 3]
        clips = pa.concat_tables([_clips(sha, split, lang, 2 + i % 2, 10 * i + k) for k, lang in enumerate(LANGS)])
        clips = clips.set_column(clips.schema.get_field_index("clip_id"), "clip_id",
                                 pa.array([f"{sha[:8]}-{k}" for k in range(clips.num_rows)]))
        rejects = _row(REJECTS_SCHEMA, source_uri=f"/in/{sha[:8]}.wav", source_sha256=sha, stage="sentence",
                       reason="no_speech")
        source = _row(SOURCES_SCHEMA, source_sha256=sha, source_uri=f"/in/{sha[:8]}.wav", split=split)
        replace_source(root, sha[:24], clips, rejects, source)
        if i == 2:
            compact(root)  # the first three sources' files merged: keys found by the footers
    replace_human_labels(root, _sha(0), _row(HUMAN_LABELS_SCHEMA, source_sha256=_sha(0), start_s=0.0, end_s=1.0))
    add_tombstones(tombstones_file(root), {_sha(99)}, date(2026, 1, 2))
    return data_dir


def audio_hashes(con_query) -> dict[str, str]:  # noqa: ANN001
    rows = con_query("SELECT clip_id, audio.bytes AS audio FROM clips").to_pylist()
    return {row["clip_id"]: hashlib.sha256(row["audio"]).hexdigest() for row in rows}


COUNTS = "SELECT '{table}' AS t, count(*) AS n FROM {table}"


def table_counts(query) -> dict[str, int]:  # noqa: ANN001
    sql = " UNION ALL ".join(COUNTS.format(table=t) for t in ("clips", "rejects", "sources", "human_labels"))
    return {row["t"]: row["n"] for row in query(sql).to_pylist()}


def shards_of(data_dir: Path):  # noqa: ANN201
    """A query over the old shards of `data_dir` (what a migration reads)."""
    return lambda sql: old_shards.query(data_dir / "shards", sql)


def test_migrate_moves_every_row_and_audio_byte_and_a_rerun_adds_nothing(tmp_path: Path) -> None:
    data_dir = data_dir_of_every_kind(tmp_path / "data")
    shards = shards_of(data_dir)
    target = embedded_target(data_dir)
    results = {r.table: r for r in migrate(data_dir / "shards", target)}
    in_lake = Catalog.from_settings(Settings(data_dir=data_dir))  # the default: the embedded lake
    assert table_counts(in_lake.query) == table_counts(shards) == {"clips": 30, "rejects": 6, "sources": 6,
                                                                   "human_labels": 1}
    assert results["clips"].added == 30 and results["clips"].keys == 6
    before = audio_hashes(shards)
    assert len(before) == 30 and audio_hashes(in_lake.query) == before
    # the folders' values are columns, as a label run writes them to a lake
    assert in_lake.query("SELECT DISTINCT split, lang FROM clips ORDER BY ALL").to_pylist() == \
        shards("SELECT DISTINCT split, lang FROM clips ORDER BY ALL").to_pylist()
    assert in_lake.forgotten() == {_sha(99)}
    assert in_lake.known_sources() == set(shards("SELECT source_sha256 FROM sources")["source_sha256"].to_pylist())
    # the embedding is FLOAT[n] again in the lake's views
    assert in_lake.query("SELECT DISTINCT typeof(text_embedding) AS t FROM clips")["t"].to_pylist() == ["FLOAT[16]"]

    again = migrate(data_dir / "shards", target)
    assert sum(r.added for r in again) == 0 and all(r.keys_kept == r.keys for r in again)
    assert table_counts(in_lake.query) == table_counts(shards)


def test_a_lake_that_already_holds_a_recording_keeps_its_rows(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A source labelled into the lake before the migration (the lake's rows win), and a
    migration that died after its first commits: the rerun adds the rest, nothing twice."""
    data_dir = data_dir_of_every_kind(tmp_path / "data")
    target = embedded_target(data_dir)
    with lake.connect(target) as con:
        relabelled = _clips(_sha(1), "val", "en", 1, 5)  # with its split and date columns
        lake.replace_key(con, target, _sha(1)[:24], {"clips": relabelled})
    monkeypatch.setattr(migration, "BATCH_BYTES", 1)  # one commit per key
    commits = []
    add = lake.add_missing_keys

    def dies_at_the_third(*args: object) -> int:
        if len(commits) == 3:  # the tombstones and two recordings' clips are in
            raise KeyboardInterrupt  # killed between two commits
        commits.append(args[2])
        return add(*args)

    monkeypatch.setattr(lake, "add_missing_keys", dies_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        migrate(data_dir / "shards", target)
    monkeypatch.setattr(lake, "add_missing_keys", add)
    results = {r.table: r for r in migrate(data_dir / "shards", target)}
    # source 1 has 6 clips in the shards: the lake's one stays; of the others, those of the first
    # commits (all of their keys' rows) are not added again
    assert results["clips"].keys_kept == 1 + 2 and results["clips"].keys == 6
    with lake.connect(target, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM lake.clips WHERE source_sha256 = ?", [_sha(1)]).fetchone()[0] == 1
        assert con.execute("SELECT count(*), count(DISTINCT clip_id) FROM lake.clips").fetchone() == (25, 25)
        assert lake.row_count(con, "sources") == 6


def test_migrate_on_the_command_line_and_the_hint_an_old_data_dir_gets(tmp_path: Path) -> None:
    data_dir = data_dir_of_every_kind(tmp_path / "data")
    target = LakeTarget(str(tmp_path / "lake.sqlite"), str(tmp_path / "lake-data"))
    env = {"VOXTOX_STORAGE__CATALOG_URL": target.catalog_url, "VOXTOX_STORAGE__DATA_URL": target.data_url}
    runner = CliRunner()
    query = runner.invoke(app, ["query", "SELECT 1 AS one", "--data-dir", str(data_dir)], env=env)
    assert query.exit_code == 0, query.output
    hint = [line for line in query.output.splitlines() if "voxtox migrate" in line]
    assert len(hint) == 1 and str(data_dir / "shards") in hint[0]

    moved = runner.invoke(app, ["migrate", "--data-dir", str(data_dir)], env=env)
    assert moved.exit_code == 0, moved.output
    counted = runner.invoke(app, ["query", "SELECT count(*) AS n FROM clips", "--data-dir", str(data_dir),
                                  "--format", "json"], env=env)
    assert counted.exit_code == 0 and '{"n": 30}' in counted.output and "voxtox migrate" not in counted.output

    # Without [storage]: the embedded lake, which every command then reads; before, one line says so
    other = data_dir_of_every_kind(tmp_path / "other")
    before = runner.invoke(app, ["query", "SELECT 1 AS one", "--data-dir", str(other)], env={})
    assert before.exit_code == 0 and len([line for line in before.output.splitlines() if "voxtox migrate" in line]) == 1
    embedded = runner.invoke(app, ["migrate", "--data-dir", str(other)], env={})
    assert embedded.exit_code == 0, embedded.output
    after = runner.invoke(app, ["query", "SELECT count(*) AS n FROM clips", "--data-dir", str(other),
                                "--format", "json"], env={})
    assert after.exit_code == 0 and '{"n": 30}' in after.output and "voxtox migrate" not in after.output


def test_a_damaged_shard_stops_the_migration_before_anything_is_written(tmp_path: Path) -> None:
    data_dir = data_dir_of_every_kind(tmp_path / "data")
    victim = next((data_dir / "shards" / "sources").glob("**/*.parquet"))
    victim.write_bytes(victim.read_bytes()[:40])
    result = CliRunner().invoke(app, ["migrate", "--data-dir", str(data_dir)], env={})
    assert result.exit_code == 2 and "damaged shard" in result.output and str(victim) in result.output.replace("\n", "")
    with lake.connect(embedded_target(data_dir), read_only=True) as con:
        assert lake.tables(con) == []


# --- export-dataset ------------------------------------------------------------------------------


def _load(out: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN202
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")  # a pinned test dependency (pyproject.toml [test])
    return datasets, datasets.load_dataset(str(out), cache_dir=str(tmp_path / "hf-cache"))


def test_export_dataset_writes_a_folder_datasets_loads_with_splits_and_audio(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = data_dir_of_every_kind(tmp_path / "data")
    env: dict[str, str] = {}
    migrate(data_dir / "shards", embedded_target(data_dir))
    (data_dir / "shards").rename(data_dir / "shards-gone")  # the export reads the lake, nothing else
    out = tmp_path / "export"
    result = CliRunner().invoke(app, ["export-dataset", str(out), "--data-dir", str(data_dir)], env=env)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "data").iterdir()) == ["test-00000.parquet", "train-00000.parquet",
                                                                "validation-00000.parquet"]
    # 6 sources of 4 or 6 clips, two per split: 10 each
    assert {p.stem: pq.read_metadata(p).num_rows for p in (out / "data").iterdir()} == \
        {"train-00000": 10, "validation-00000": 10, "test-00000": 10}
    datasets, loaded = _load(out, tmp_path, monkeypatch)
    assert {name: len(split) for name, split in loaded.items()} == {"train": 10, "validation": 10, "test": 10}
    assert loaded["train"].features["audio"] == datasets.Audio(sampling_rate=16_000)
    assert loaded["train"].features["text_embedding"].length == 16
    assert "split" not in loaded["train"].column_names and set(loaded["test"]["lang"]) == set(LANGS)
    raw = loaded["validation"].cast_column("audio", datasets.Audio(decode=False))
    exported = {row["clip_id"]: hashlib.sha256(row["audio"]["bytes"]).hexdigest() for row in raw}
    expected = audio_hashes(shards_of(data_dir_of_every_kind(tmp_path / "reference")))
    assert len(exported) == 10 and all(expected[clip] == digest for clip, digest in exported.items())

    again = CliRunner().invoke(app, ["export-dataset", str(out), "--data-dir", str(data_dir)], env=env)
    assert again.exit_code == 2 and "not an empty folder" in again.output
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export")]  # no half-written folder left


def _review(clip_id: str, sha: str, status: str) -> dict[str, object]:
    from datetime import datetime, timezone

    from voxtox.storage.schema import REVIEWS_SCHEMA

    now = datetime(2026, 1, 3, tzinfo=timezone.utc)
    row: dict[str, object] = {field.name: None for field in REVIEWS_SCHEMA}
    return row | {"clip_id": clip_id, "source_sha256": sha, "split": "train", "lang": "en", "status": status,
                  "n_annotations": 1, "reviewed_at": now, "imported_at": now}


def test_a_review_imported_after_the_migration_replaces_the_migrated_one(tmp_path: Path) -> None:
    """The shards hold every review in one file, the lake keys each by its clip: a migrated
    review must be replaced, not joined, by a later import of the same clip's review."""
    from old_shards import write_reviews

    from voxtox.storage.reviews import write_reviews_to_lake

    data_dir = data_dir_of_every_kind(tmp_path / "data", sources=3)
    clip = f"{_sha(0)[:8]}-0"
    write_reviews(data_dir / "shards", [_review(clip, _sha(0), "agreed"), _review(f"{_sha(0)[:8]}-1", _sha(0), "agreed")])
    target = embedded_target(data_dir)
    migrate(data_dir / "shards", target)
    write_reviews_to_lake(target, [_review(clip, _sha(0), "majority")])
    in_lake = Catalog.from_settings(Settings(data_dir=data_dir, storage={"catalog_url": target.catalog_url,
                                                                         "data_url": target.data_url}))
    rows = in_lake.query("SELECT clip_id, status FROM reviews ORDER BY clip_id").to_pylist()
    assert rows == [{"clip_id": clip, "status": "majority"}, {"clip_id": f"{_sha(0)[:8]}-1", "status": "agreed"}]
    assert sum(r.added for r in migrate(data_dir / "shards", target)) == 0  # a rerun still adds nothing
