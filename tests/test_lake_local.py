"""The embedded lake (storage/lake.py, docs/storage.md): a DuckLake whose catalog is a SQLite file
and whose data is a local folder, which several processes of one host write and read at once
(a DuckDB-file catalog admits one process). No server: nothing but the files."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import time
from pathlib import Path

import pyarrow as pa

from test_lake import _count, _rows, _voxtox, _wav
from voxtox.storage import lake
from voxtox.storage.lake import LakeTarget
from voxtox.storage.schema import SOURCES_SCHEMA


def _target(tmp_path: Path) -> LakeTarget:
    return LakeTarget(str(tmp_path / "lake" / "catalog.sqlite"), str(tmp_path / "lake" / "data"))


def _writer(target: LakeTarget, keys: list[str], writer: str, barrier) -> None:  # noqa: ANN001
    with lake.connect(target) as con:
        for key in keys:
            lake.replace_key(con, target, key, {"clips": _rows(key, 4, writer), "sources": _rows(key, 1, writer)})
        barrier.wait(60)  # both write the shared key at the same moment
        lake.replace_key(con, target, "shared", {"clips": _rows("shared", 4, writer),
                                                  "sources": _rows("shared", 1, writer)})


def test_a_sqlite_catalog_is_a_lake_that_two_writer_processes_and_a_reader_share(tmp_path: Path) -> None:
    """SQLite lets one writer at a time: a commit that finds the file locked is retried like a
    conflict, so both writers land, the shared key once; a reader sees whole commits only."""
    target = _target(tmp_path)
    assert target.catalog_attach().startswith("ducklake:sqlite:")
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    workers = [context.Process(target=_writer, args=(target, [f"{name}-{i}" for i in range(8)], name, barrier))
               for name in ("w1", "w2")]
    for worker in workers:
        worker.start()
    seen = []
    with lake.connect(target, read_only=True) as con:
        while any(worker.is_alive() for worker in workers):
            if {"clips", "sources"} <= set(lake.tables(con)):
                con.execute("BEGIN")
                seen.append(con.execute("SELECT (SELECT count(*) FROM lake.clips), "
                                        "(SELECT count(*) FROM lake.sources)").fetchone())
                con.execute("COMMIT")
            time.sleep(0.02)
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    assert seen and all(clips == 4 * sources for clips, sources in seen), seen
    assert _count(target, "SELECT count(*) FROM sources") == 17
    assert _count(target, "SELECT count(*) FROM clips") == 17 * 4
    assert _count(target, "SELECT count(DISTINCT writer) FROM clips WHERE source_sha256 = 'shared'") == 1


def test_two_label_runs_and_a_query_at_once_on_an_embedded_lake(tmp_path: Path) -> None:
    """Two `voxtox label` processes (disjoint inputs plus one file both were given) and `voxtox
    query` reading meanwhile, on one SQLite-catalog lake: every recording once, the query answers."""
    target = _target(tmp_path)
    shared = _wav(tmp_path / "shared" / "both.wav", "good game everyone, see you tomorrow")
    inputs = {name: [_wav(tmp_path / name / f"{name}.wav", text), shared]
              for name, text in (("a", "nice shot mate, push mid with me"), ("b", "thanks for the heal, what a match"))}
    env = {**os.environ, "VOXTOX_STORAGE__CATALOG_URL": target.catalog_url,
           "VOXTOX_STORAGE__DATA_URL": target.data_url, "PREFECT_LOGGING_LEVEL": "WARNING"}
    with lake.connect(target) as con:  # a recording labelled before: the query has a table to read
        lake.replace_key(con, target, "earlier", {"sources": _sources_row("e" * 64)})
    runs = [subprocess.Popen(_voxtox("label", *map(str, files), "--data-dir", str(tmp_path / f"data-{name}")),
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for name, files in inputs.items()]
    answers = []
    while any(run.poll() is None for run in runs):
        query = subprocess.run(_voxtox("query", "SELECT count(*) AS n FROM sources", "--data-dir",
                                       str(tmp_path / "reader"), "--format", "json"),
                               env=env, capture_output=True, text=True, timeout=300)
        answers.append((query.returncode, query.stdout + query.stderr))
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    for run, output in zip(runs, outputs, strict=True):
        assert run.returncode == 0, output[-3000:]
    # every query answered while both runs were writing: a count of whole recordings
    assert answers and all(code == 0 for code, _ in answers), answers
    assert all(1 <= _json_n(text) <= 4 for _, text in answers), answers
    assert _count(target, "SELECT count(*) FROM sources") == 4
    assert _count(target, "SELECT count(DISTINCT source_sha256) FROM sources") == 4
    assert _count(target, "SELECT count(DISTINCT run_id) FROM clips WHERE source_uri LIKE '%both.wav'") == 1
    clips = _count(target, "SELECT count(*) FROM clips")
    assert clips > 0 and clips == _count(target, "SELECT count(DISTINCT clip_id) FROM clips")
    query = subprocess.run(_voxtox("query", "SELECT count(*) AS n FROM sources", "--data-dir", str(tmp_path / "x"),
                                   "--format", "json"), env=env, capture_output=True, text=True, timeout=120)
    assert query.returncode == 0, query.stderr
    assert _json_n(query.stdout) == 4


def _json_n(output: str) -> int:
    return json.loads(next(line for line in output.splitlines() if line.startswith("{")))["n"]


def _sources_row(sha: str) -> pa.Table:
    """A `sources` row as the labelling flow writes it (its schema plus the `date` column)."""
    row = {field.name: None for field in SOURCES_SCHEMA} | {"source_sha256": sha, "source_uri": "earlier.wav"}
    return pa.Table.from_pylist([row], SOURCES_SCHEMA).append_column("date", pa.array(["2026-01-01"]))


def test_the_embedded_lake_loads_only_the_extensions_it_needs_and_commits_rerun_to_one_copy(tmp_path: Path) -> None:
    """Each LOAD costs a `voxtox label` run time at every connection (benchmarks/label_lake.py): the
    embedded lake loads DuckLake and the SQLite scanner, not PostgreSQL's or S3's."""
    target = _target(tmp_path)
    assert target.extensions() == ("ducklake", "sqlite_scanner")
    assert LakeTarget("postgresql://u@db:5432/l", "s3://b/l").extensions() == ("ducklake", "postgres_scanner", "httpfs")
    assert LakeTarget(str(tmp_path / "l.ducklake"), str(tmp_path / "d")).extensions() == ("ducklake",)
    with lake.connect(target) as con:
        loaded = {name for (name,) in con.execute("SELECT extension_name FROM duckdb_extensions() WHERE loaded").fetchall()}
        assert {"ducklake", "sqlite_scanner"} <= loaded and not {"postgres_scanner", "httpfs"} & loaded
        for _ in range(2):  # the tables are made by the first commit; the second replaces its rows
            lake.replace_key(con, target, "k", {"clips": _rows("k", 3, "w"), "sources": _rows("k", 1, "w")})
        assert con.execute(f"SELECT n FROM lake.{lake.COMMITS_TABLE}").fetchall() == [(2,)]
    assert _count(target, "SELECT count(*) FROM clips") == 3
    assert _count(target, "SELECT count(*) FROM sources") == 1
