"""`voxtox query` and the command line's consistency: read-only, beside other clients of the
catalog, machine-readable output, strict choices, help text that says what it means."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
import typer
from typer.testing import CliRunner

from test_data_access import data_dir_with_sources
from voxtox.flows.cli import app

VOXTOX = str(Path(sys.executable).with_name("voxtox"))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("query-data")
    data_dir_with_sources(root, per_split=2, n=3)
    return root


def run(data_dir: Path, *args: str, stdin: str | None = None):  # noqa: ANN201
    return CliRunner().invoke(app, ["query", *args, "--data-dir", str(data_dir)], input=stdin)


def test_query_works_while_another_process_is_inside_a_write(data_dir: Path) -> None:
    """A writer holding the embedded lake's write transaction open (a label run mid-commit): the
    query answers at once, from the last whole commit."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from voxtox.storage import lake; "
                               "t = lake.embedded_target(Path(sys.argv[1])); con = lake.connect(t); "
                               "con.execute('BEGIN'); con.execute('UPDATE lake.voxtox_commits SET n = n + 1'); "
                               "con.execute('DELETE FROM lake.clips'); "
                               "print('open', flush=True); time.sleep(60)", str(data_dir)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "open"  # a write transaction, held
        result = run(data_dir, "--format", "json", "SELECT split, count(*) AS n FROM clips GROUP BY 1 ORDER BY 1")
    finally:
        holder.kill()
        holder.wait()
    assert result.exit_code == 0, result.output
    assert [json.loads(line) for line in result.stdout.splitlines()] == [
        {"split": "test", "n": 6}, {"split": "train", "n": 6}, {"split": "val", "n": 6}]


@pytest.mark.parametrize("statement", [
    "DROP VIEW clips",
    "CREATE TABLE t AS SELECT 1",
    "ATTACH 'other.duckdb' AS other",
    "COPY (SELECT * FROM clips) TO '{out}'",
    "SELECT 1; DROP VIEW clips",
])
def test_statements_that_change_anything_get_a_one_line_refusal(data_dir: Path, tmp_path: Path, statement: str) -> None:
    out = tmp_path / "leak.csv"
    result = run(data_dir, statement.format(out=out))
    assert result.exit_code == 1
    assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1, result.output
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert not out.exists() and not (Path.cwd() / "other.duckdb").exists()
    assert run(data_dir, "SELECT count(*) AS n FROM clips").exit_code == 0  # nothing was dropped


def test_json_is_json_lines_with_native_types(data_dir: Path) -> None:
    result = run(data_dir, "--format", "json",
                 "SELECT clip_id, duration_s, label_racism, text_embedding, audio, labelled_at, date "
                 "FROM clips ORDER BY clip_id LIMIT 2")
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 2
    row = rows[0]
    assert isinstance(row["duration_s"], float) and isinstance(row["label_racism"], bool)
    assert isinstance(row["text_embedding"], list) and len(row["text_embedding"]) == 16
    assert isinstance(row["text_embedding"][0], float)
    assert row["audio"]["path"].endswith(".flac") and isinstance(row["audio"]["bytes"], str)  # base64
    assert row["labelled_at"].startswith("2026-01-01T") and row["date"] == "2026-01-01"


def test_csv_appends_to_stdout_and_takes_list_columns(data_dir: Path, tmp_path: Path) -> None:
    """`voxtox query --format csv >> file` (a real shell redirection: stdout opened to append)."""
    target = tmp_path / "out.csv"
    target.write_text("kept line\n")
    with target.open("a") as stdout:
        done = subprocess.run(
            [VOXTOX, "query", "--format", "csv", "--data-dir", str(data_dir),
             "SELECT split, count(*) AS n, list(clip_id ORDER BY clip_id) AS ids FROM clips GROUP BY 1 ORDER BY 1"],
            stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=120,
        )
    assert done.returncode == 0, done.stderr
    lines = target.read_text().splitlines()
    assert lines[0] == "kept line" and lines[1] == '"split","n","ids"'
    assert len(lines) == 5 and json.loads(next(csv_cells(lines[2]))[2])[0] == "test0-000"


def csv_cells(line: str):  # noqa: ANN201
    import csv

    return csv.reader([line])


def test_sql_from_stdin(data_dir: Path) -> None:
    result = run(data_dir, "--format", "json", "-", stdin="SELECT count(*) AS n FROM clips WHERE split = 'val'\n")
    assert result.exit_code == 0 and json.loads(result.stdout) == {"n": 6}


def test_enumerated_options_are_strict_choices(data_dir: Path) -> None:
    assert run(data_dir, "--format", "xml", "SELECT 1").exit_code == 2
    assert run(data_dir, "--table", "nope").exit_code == 2
    assert CliRunner().invoke(app, ["label", "x.wav", "--split", "validation"]).exit_code == 2
    assert CliRunner().invoke(app, ["evaluate", "run", "--aggregation", "median"]).exit_code == 2
    assert CliRunner().invoke(app, ["train", "--out", "r", "--loss", "l1"]).exit_code == 2


def test_version(data_dir: Path) -> None:
    from importlib.metadata import version

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"voxtox {version('voxtox')}"


def commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    found = []
    for name, command in group.commands.items():
        found.append(((*prefix, name), command))
        if isinstance(command, click.Group):
            found += commands(command, (*prefix, name))
    return found


def test_help_shows_bracketed_text_as_written() -> None:
    """Rich markup swallowed "[train]" in `voxtox train --help`; every help text with brackets
    must come out with them."""
    root = typer.main.get_command(app)
    checked = 0
    for path, command in commands(root):
        output = re.sub(r"[\s│]+", " ", CliRunner().invoke(app, [*path, "--help"], terminal_width=400).stdout)
        for param in command.params:
            for bracketed in re.findall(r"\[[^\]]*\]", getattr(param, "help", None) or ""):
                assert bracketed in output, (path, param.name, bracketed)
                checked += 1
    assert checked >= 2  # train --config, classify --model


def test_one_name_per_concept_old_spellings_still_work() -> None:
    classify = typer.main.get_command(app).commands["classify"]
    (out,) = [p for p in classify.params if p.name == "output"]
    assert out.opts == ["--out", "--output"]  # --out as every other command says it; --output still works


def test_table_output_off_a_terminal_is_not_cut_to_80_columns(data_dir: Path) -> None:
    """In a log file or a pipe every column keeps its whole name and value (rich would otherwise
    fold the table into 80 columns and lose what does not fit)."""
    columns = ", ".join(f"'value-{i}-of-a-wide-row' AS column_number_{i}" for i in range(8))
    result = run(data_dir, f"SELECT {columns}")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) > 80
    for i in range(8):
        assert any(f"column_number_{i}" in line for line in lines)
        assert any(f"value-{i}-of-a-wide-row" in line for line in lines)
