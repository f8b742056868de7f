"""Fault injection, round 2 (issue 31), storage faults, on the embedded lake every data dir
holds: a damaged data file, and what erasure leaves after compaction.

The tests speak to the data through `voxtox query`, `compact` and `forget` (and the write path
`lake.replace_key`, what a label run commits per source), so they stay valid when the table
layer changes; only the faults themselves (truncating a file) reach below it. Kills mid-commit
and mid-compaction are the lake's own (tests/test_lake.py, tests/test_lake_local.py: a writer
killed before its commit leaves nothing any reader sees; DuckLake's compaction is one commit).
docs/reliability.md lists them.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from contextlib import closing
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from test_data_access import clips_of
from voxtox.flows.cli import app
from voxtox.storage import lake
from voxtox.storage.schema import SOURCES_SCHEMA

SHA = [hashlib.sha256(f"recording {i}".encode()).hexdigest() for i in range(4)]
CLIPS_PER_SOURCE = 3


def _source_tables(sha: str, n: int = CLIPS_PER_SOURCE) -> dict[str, pa.Table]:
    """What a label run commits for one recording: its clips and its `sources` row."""
    clips = clips_of(sha, "train", n, int(sha[:6], 16) % 1000)
    clips = clips.set_column(clips.schema.get_field_index("clip_id"), "clip_id",
                             pa.array([f"clip-{sha[:8]}-{i}" for i in range(n)]))
    record = {name: None for name in SOURCES_SCHEMA.names} | {
        "source_sha256": sha, "source_uri": f"/audio/{sha[:4]}.wav", "split": "train", "n_clips": n}
    source = pa.Table.from_pylist([record], SOURCES_SCHEMA).append_column("date", pa.array(["2026-01-01"]))
    return {"clips": clips, "sources": source}


def label(data_dir: Path, sha: str) -> None:
    target = lake.embedded_target(data_dir)
    with closing(lake.connect(target)) as con:
        lake.replace_key(con, target, sha[:24], _source_tables(sha))


def cli(data_dir: Path, *args: str):  # noqa: ANN201
    return CliRunner().invoke(app, [*args, "--data-dir", str(data_dir)])


def query(data_dir: Path, sql: str) -> list[dict]:
    result = cli(data_dir, "query", "--format", "json", sql)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def clip_counts(data_dir: Path) -> dict:
    return query(data_dir, "SELECT count(*) AS rows, count(DISTINCT clip_id) AS ids FROM clips")[0]


def one_line(output: str) -> str:
    """The CLI's error as one line (the terminal wraps it), after checking it is no traceback."""
    assert "Traceback" not in output, output
    return "".join(output.split())


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """Three labelled recordings, compacted: one clips file holds all their clips."""
    for sha in SHA[:3]:
        label(tmp_path, sha)
    assert cli(tmp_path, "compact").exit_code == 0
    return tmp_path


def data_files(data_dir: Path, table: str) -> list[Path]:
    """The data files of `table` the lake's current snapshot reads."""
    with closing(lake.connect(lake.embedded_target(data_dir), read_only=True)) as con:
        return [Path(p) for (p,) in con.execute(f"SELECT data_file FROM ducklake_list_files('lake', '{table}')").fetchall()]


def clips_file(data_dir: Path) -> Path:
    (path,) = data_files(data_dir, "clips")
    return path


# --- 2. a damaged data file ----------------------------------------------------------------------


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _zero_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    third = len(data) // 3
    data[third : 2 * third] = bytes(third)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _zero_middle], ids=["truncated", "mid-file"])
def test_a_damaged_data_file_is_named_and_other_tables_still_answer(data_dir: Path, damage) -> None:  # noqa: ANN001
    """DuckDB's own error for a file damaged mid-way is "Invalid data", naming none; a damaged
    clips file must not stop queries of the other tables either."""
    damaged = clips_file(data_dir)
    damage(damaged)
    assert query(data_dir, "SELECT count(*) AS n FROM sources") == [{"n": 3}]
    result = cli(data_dir, "query", "SELECT * FROM clips")
    assert result.exit_code == 1
    message = one_line(result.output)
    assert "".join(str(damaged).split()) in message and "damaged" in message and "sources" in message


def _label_cli(data_dir: Path, inputs: Path, cache: Path):  # noqa: ANN202
    return CliRunner().invoke(app, ["label", str(inputs), "--data-dir", str(data_dir)],
                              env={"VOXTOX_MODEL_CACHE_DIR": str(cache)})


def test_label_refuses_a_damaged_sources_file_in_one_line(data_dir: Path, tmp_path: Path, model_cache: Path) -> None:
    """Without its `sources` rows a run cannot tell which recordings are done: it stops, naming the file."""
    (damaged,) = data_files(data_dir, "sources")
    _truncate(damaged)
    result = _label_cli(data_dir, data_dir, model_cache)
    assert result.exit_code == 2 and "".join(str(damaged).split()) in one_line(result.output)


# --- 7. erasure leaves only the tombstone -------------------------------------------------------------


def _traces(data_dir: Path, sha: str) -> list[str]:
    """Files under the data dir that hold the hash or its 24-digit key, but the tombstones table's
    own data files; in the SQLite catalog, rows that hold it but the tombstones table's stats."""
    needles = (sha, sha[:24])
    found = []
    for path in data_dir.rglob("*"):
        if not path.is_file() or "tombstones" in path.parts or path.name.startswith("catalog.sqlite"):
            continue
        text = path.read_bytes().decode("latin-1")
        found += [f"{path}: {needle}" for needle in needles if needle in text]
    with closing(sqlite3.connect(data_dir / "lake" / "catalog.sqlite")) as database:
        (tombstones,) = database.execute("SELECT coalesce(max(table_id), -1) FROM ducklake_table "
                                         "WHERE table_name = 'tombstones' AND end_snapshot IS NULL").fetchone()
        for table, column in (("ducklake_table_column_stats", "min_value"), ("ducklake_table_column_stats", "max_value"),
                              ("ducklake_file_column_stats", "min_value"), ("ducklake_file_column_stats", "max_value")):
            rows = database.execute(f"SELECT count(*) FROM {table} WHERE table_id <> ? AND ({column} = ? OR {column} = ?)",
                                    [tombstones, *needles]).fetchone()
            found += [f"catalog {table}.{column}"] if rows and rows[0] else []
    return found


def test_forgetting_after_compaction_leaves_only_the_tombstone(data_dir: Path) -> None:
    """No data file, no catalog statistic, keeps the hash or its key; only the tombstone does."""
    assert _traces(data_dir, SHA[1])  # the search finds it while it is there
    result = cli(data_dir, "forget", SHA[1])
    assert result.exit_code == 0, result.output
    assert query(data_dir, f"SELECT count(*) AS n FROM clips WHERE source_sha256 = '{SHA[1]}'") == [{"n": 0}]
    assert _traces(data_dir, SHA[1]) == []
    assert query(data_dir, "SELECT source_sha256 FROM tombstones") == [{"source_sha256": SHA[1]}]
    assert cli(data_dir, "compact").exit_code == 0
    assert _traces(data_dir, SHA[1]) == []
