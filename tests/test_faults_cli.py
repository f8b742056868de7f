"""Fault injection, round 2 (issue 31, faults 4, 6, 8 and 9), through the command line.

Each test reproduces what a hostile or unlucky user did and asserts what must hold, through the
CLI and query results rather than file layouts, so the rows stay valid when the table layer
changes. docs/reliability.md lists them. Fault 1 (a file name that is not UTF-8) needs a whole
labelling run: it is in tests/test_label_flow.py, whose run already has such a file.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import soundfile
from typer.testing import CliRunner

from voxtox.audio import SAMPLE_RATE
from voxtox.files import sha256_file
from voxtox.flows.cli import app


def _cli(*args: str):  # noqa: ANN202
    return CliRunner().invoke(app, list(args))


def _count(data_dir: Path, sql: str) -> int:
    result = _cli("query", sql, "--data-dir", str(data_dir), "--format", "json")
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if line.startswith("{"))
    return next(iter(json.loads(row).values()))


def _tone(path: Path, hz: float = 220.0, seconds: float = 2.0) -> Path:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    soundfile.write(path, (0.2 * np.sin(2 * np.pi * hz * t)).astype(np.float32), SAMPLE_RATE, format="WAV")
    return path


def test_forget_keeps_a_trailing_space_and_fails_on_a_name_that_matched_nothing(tmp_path: Path) -> None:
    """Fault 9: `voxtox forget "<path ending in a space>"` stripped the space, exited 0 with "no
    data held", and the recording's data stayed. An erasure request must never pass for done."""
    data = tmp_path / "data"
    recording = _tone(tmp_path / "rec.wav ")  # the space is part of the file's name
    kept = _tone(tmp_path / "rec.wav", hz=330.0)  # what the name without its space would be
    truth = tmp_path / "truth.jsonl"
    truth.write_text("".join(
        json.dumps({"audio": path.name, "start_s": 0.0, "end_s": 1.5, "labels": ["profanity"]}) + "\n"
        for path in (recording, kept)
    ))
    assert _cli("import-labels", str(truth), "--data-dir", str(data)).exit_code == 0
    sha = sha256_file(recording)
    held = f"SELECT count(*) AS n FROM human_labels WHERE source_sha256 = '{sha}'"
    assert _count(data, held) == 1

    missing = str(tmp_path / "never-labelled.wav")
    result = _cli("forget", str(recording), missing, "--data-dir", str(data))
    assert result.exit_code == 1, result.output
    assert "never-labelled.wav" in result.output and "matched no data held" in result.output
    assert _count(data, held) == 0  # what was named and held is erased all the same
    assert _count(data, "SELECT count(*) AS n FROM human_labels") == 1  # and nothing else

    alone = _cli("forget", missing, "--data-dir", str(data))
    assert alone.exit_code == 1 and "no data held for" in alone.output


def _catalog_answers(data_dir: Path, sql: str) -> int:
    """What another DuckDB client gets from the catalog file (opened read-only from the data dir)."""
    with duckdb.connect(str(data_dir / "catalog.duckdb"), read_only=True,
                        config={"file_search_path": str(data_dir)}) as con:
        return con.sql(sql).fetchone()[0]


def test_a_catalog_file_of_garbage_is_rebuilt_by_query_and_by_compact(tmp_path: Path) -> None:
    """Fault 8: `catalog.duckdb` filled with garbage. Before: `label` warned to run `voxtox query`
    later, `query` never rebuilt it, and `compact` exited 1 after merging."""
    data = tmp_path / "data"
    truth = tmp_path / "truth.jsonl"
    truth.write_text(json.dumps({"audio": _tone(tmp_path / "a.wav").name, "start_s": 0.0, "end_s": 1.5,
                                 "labels": ["bullying"]}) + "\n")
    assert _cli("import-labels", str(truth), "--data-dir", str(data)).exit_code == 0
    catalog = data / "catalog.duckdb"
    count = "SELECT count(*) FROM human_labels"
    assert _catalog_answers(data, count) == 1

    catalog.write_bytes(np.random.default_rng(0).bytes(300_000))
    assert _count(data, count) == 1  # the query itself never needed the file
    assert _catalog_answers(data, count) == 1  # and it was rebuilt on the way

    catalog.write_bytes(b"\0garbage" * 1000)
    result = _cli("compact", "--data-dir", str(data))
    assert result.exit_code == 0, result.output
    assert _catalog_answers(data, count) == 1
