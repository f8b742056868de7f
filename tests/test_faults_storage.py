"""Fault injection, round 2 (issue 31), storage faults: a damaged shard, kills in a row, kills
during compaction, and what erasure leaves in compacted files.

The tests speak to the data through `voxtox query`, `compact` and `forget` (and the write path
`replace_source`, what a label run calls per source), so they stay valid when the table layer
changes; only the faults themselves (truncating a file, a SIGKILL at the moment a process
renames or deletes a data file) reach below it. docs/reliability.md lists them.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile
from typer.testing import CliRunner

from conftest import spoken
from test_data_access import clips_of
from voxtox.audio import SAMPLE_RATE
from voxtox.flows.cli import app
from voxtox.storage.schema import SOURCES_SCHEMA
from voxtox.storage.shards import replace_source, write_partitioned
from voxtox.corpus.speech_synth import Utterance

SHA = [hashlib.sha256(f"recording {i}".encode()).hexdigest() for i in range(4)]
CLIPS_PER_SOURCE = 3


def _source_tables(sha: str, n: int = CLIPS_PER_SOURCE) -> tuple[pa.Table, pa.Table, pa.Table]:
    """What a label run writes for one recording: its clips, no rejects, its `sources` row."""
    clips = clips_of(sha, "train", n, int(sha[:6], 16) % 1000)
    clips = clips.set_column(clips.schema.get_field_index("clip_id"), "clip_id",
                             pa.array([f"clip-{sha[:8]}-{i}" for i in range(n)]))
    rejects = pa.table({"date": pa.array([], pa.string())})
    record = {name: None for name in SOURCES_SCHEMA.names} | {
        "source_sha256": sha, "source_uri": f"/audio/{sha[:4]}.wav", "split": "train", "n_clips": n}
    source = pa.Table.from_pylist([record], SOURCES_SCHEMA).append_column("date", pa.array(["2026-01-01"]))
    return clips, rejects, source


def label(data_dir: Path, sha: str) -> None:
    replace_source(data_dir / "shards", sha[:24], *_source_tables(sha))


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


def leftovers(data_dir: Path) -> list[Path]:
    """Temporary files and journals of unfinished work anywhere in the data dir."""
    return [p for p in data_dir.rglob("*") if p.is_file() and (p.name.endswith(".tmp") or "swap" in p.name)]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """Three labelled recordings, compacted: one clips file holds all their clips."""
    for sha in SHA[:3]:
        label(tmp_path, sha)
    assert cli(tmp_path, "compact").exit_code == 0
    return tmp_path


def clips_file(data_dir: Path) -> Path:
    (path,) = (data_dir / "shards" / "clips").rglob("*.parquet")
    return path


# --- 2. a damaged shard -----------------------------------------------------------------------


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _zero_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    third = len(data) // 3
    data[third : 2 * third] = bytes(third)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _zero_middle], ids=["truncated", "mid-file"])
def test_a_damaged_shard_is_named_and_other_tables_still_answer(data_dir: Path, damage) -> None:  # noqa: ANN001
    """Before: every query, of any table, failed with a 116-line ArrowInvalid naming no file
    (truncated); DuckDB's own error for a file damaged mid-way is "Invalid data", naming none."""
    damaged = clips_file(data_dir)
    damage(damaged)
    assert query(data_dir, "SELECT count(*) AS n FROM sources") == [{"n": 3}]
    result = cli(data_dir, "query", "SELECT * FROM clips")
    assert result.exit_code == 1
    message = one_line(result.output)
    assert str(damaged) in message and "damaged" in message and "sources" in message  # what still answers


@pytest.mark.parametrize("damage", [_truncate, _zero_middle], ids=["truncated", "mid-file"])
def test_compact_refuses_a_damaged_shard_and_names_it(data_dir: Path, damage) -> None:  # noqa: ANN001
    """Before: compaction skipped the truncated file's partition silently, and said
    `ValueError: write to closed file` of a file damaged mid-way."""
    label(data_dir, SHA[3])  # something to merge beside the damaged file
    damaged = clips_file_named(data_dir, exclude=SHA[3][:24])
    damage(damaged)
    before = damaged.read_bytes()
    result = cli(data_dir, "compact")
    assert result.exit_code != 0
    assert str(damaged) in one_line(result.output) and "damaged" in result.output
    assert damaged.read_bytes() == before  # refused, not rewritten or removed
    assert query(data_dir, "SELECT count(*) AS n FROM sources") == [{"n": 4}]


def clips_file_named(data_dir: Path, exclude: str) -> Path:
    (path,) = (p for p in (data_dir / "shards" / "clips").rglob("*.parquet") if exclude not in p.name)
    return path


def test_forget_refuses_while_a_shard_is_damaged(data_dir: Path) -> None:
    """An erasure must not report done while a file that may hold the recording cannot be read."""
    damaged = clips_file(data_dir)
    _truncate(damaged)
    result = cli(data_dir, "forget", SHA[0])
    assert result.exit_code != 0 and str(damaged) in one_line(result.output)
    assert query(data_dir, f"SELECT count(*) AS n FROM sources WHERE source_sha256 = '{SHA[0]}'") == [{"n": 1}]


def test_writing_a_source_goes_on_beside_a_damaged_file_and_leaves_it_alone(data_dir: Path) -> None:
    """The write path of a label run (per source): before, every source failed on the damaged
    file's footer. The new recording is written; the damaged file stays byte for byte."""
    damaged = clips_file(data_dir)
    _truncate(damaged)
    before = damaged.read_bytes()
    label(data_dir, SHA[3])
    assert query(data_dir, "SELECT count(*) AS n FROM sources") == [{"n": 4}]
    assert damaged.read_bytes() == before
    damaged.unlink()  # the user moves it away, as the message says: the rest reads
    assert clip_counts(data_dir) == {"rows": CLIPS_PER_SOURCE, "ids": CLIPS_PER_SOURCE}


def _label_cli(data_dir: Path, inputs: Path, cache: Path):  # noqa: ANN202
    return CliRunner().invoke(app, ["label", str(inputs), "--data-dir", str(data_dir)],
                              env={"VOXTOX_MODEL_CACHE_DIR": str(cache)})


def test_label_names_a_damaged_clips_file_and_labels_beside_it(data_dir: Path, tmp_path: Path, model_cache: Path) -> None:
    """Before: `voxtox label` failed before labelling anything. Now one warning line names the
    file, the new recording is labelled, and the damaged file is left byte for byte."""
    damaged = clips_file(data_dir)
    _truncate(damaged)
    before = damaged.read_bytes()
    inputs = tmp_path / "inbox"
    inputs.mkdir()
    soundfile.write(inputs / "hello.wav", spoken(Utterance("good game everyone, see you tomorrow", "en")), SAMPLE_RATE)
    result = _label_cli(data_dir, inputs, model_cache)
    assert result.exit_code == 0, result.output
    assert str(damaged) in one_line(result.output) and "goes on" in result.output
    assert query(data_dir, "SELECT count(*) AS n FROM sources WHERE source_uri LIKE '%hello.wav'") == [{"n": 1}]
    assert damaged.read_bytes() == before


def test_label_refuses_a_damaged_sources_file_in_one_line(data_dir: Path, tmp_path: Path, model_cache: Path) -> None:
    """Without its `sources` rows a run cannot tell which recordings are done: it stops, naming the file."""
    (damaged,) = (data_dir / "shards" / "sources").rglob("*.parquet")
    _truncate(damaged)
    result = _label_cli(data_dir, data_dir, model_cache)
    assert result.exit_code == 2 and str(damaged) in one_line(result.output)


# --- 3 and 5. kills -------------------------------------------------------------------------------

#: A child process that runs `action` and SIGKILLs itself at a step: just before or just after it
#: first renames a file whose name holds `marker` into place (`replace`) or deletes one
#: (`unlink`), or just before it first forces a written file to disk (`fsync`: written, not yet
#: in place). `.parquet` marks a data file; `voxtox-swap-` a compaction's journal.
#: A real kill at that step: no clean-up code runs.
_KILL_AT = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[6])
    step, when, marker, data_dir, action = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4]), sys.argv[5]
    real = getattr(os, step)

    def kill_at_step(*args, **kwargs):
        target = {"unlink": str(args[0]), "replace": str(args[-1]), "fsync": marker}[step]
        if marker in target and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        done = real(*args, **kwargs)
        if marker in target:
            os.kill(os.getpid(), signal.SIGKILL)
        return done

    setattr(os, step, kill_at_step)
    if action == "compact":
        from voxtox.settings import Settings
        from voxtox.tasks.compact import compact_shards
        compact_shards(Settings(data_dir=data_dir))
    else:
        from test_faults_storage import label
        label(data_dir, action)
    print("finished without being killed")
    """
)


def run_killed(data_dir: Path, step: str, when: str, action: str, marker: str = ".parquet") -> None:
    """Run `action` (`compact`, or a recording's hash to label it) in a child killed at a step."""
    tests = str(Path(__file__).parent)
    done = subprocess.run([sys.executable, "-c", _KILL_AT, step, when, marker, str(data_dir), action, tests],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, done.stdout + done.stderr


def test_two_faults_in_a_row_leave_no_duplicate_clips(tmp_path: Path) -> None:
    """Issue 31, item 3: clips written but the `sources` row missing (a disk-full run), a
    compaction, a label run killed right after it renamed a rewritten clips file; then a clean
    relabel, a compaction and a full relabel. Before: 12 rows for 7 distinct clip ids, for good."""
    for sha in SHA[:2]:
        label(tmp_path, sha)
    clips, _, _ = _source_tables(SHA[2])
    write_partitioned(tmp_path / "shards", "clips", clips, SHA[2][:24])  # its `sources` row never came
    assert cli(tmp_path, "compact").exit_code == 0
    run_killed(tmp_path, "replace", "after", SHA[2])
    counts = clip_counts(tmp_path)
    assert counts["rows"] == counts["ids"]
    label(tmp_path, SHA[2])
    assert cli(tmp_path, "compact").exit_code == 0
    for sha in SHA[:3]:
        label(tmp_path, sha)
    assert clip_counts(tmp_path) == {"rows": 3 * CLIPS_PER_SOURCE, "ids": 3 * CLIPS_PER_SOURCE}


def test_compaction_heals_duplicate_clip_ids_however_they_came(data_dir: Path) -> None:
    """A copy of a clips file beside it (a backup restored over a relabelled source, a crash in
    an older version): the next compaction keeps one row per clip id."""
    original = clips_file(data_dir)
    (original.parent / "part-restored-copy.parquet").write_bytes(original.read_bytes())
    assert clip_counts(data_dir) == {"rows": 18, "ids": 9}
    assert cli(data_dir, "compact").exit_code == 0
    assert clip_counts(data_dir) == {"rows": 9, "ids": 9}
    assert query(data_dir, "SELECT count(*) AS n, count(DISTINCT source_sha256) AS d FROM sources") == [{"n": 3, "d": 3}]


@pytest.mark.parametrize(("step", "when", "marker"), [
    ("fsync", "before", ".parquet"), ("replace", "before", "voxtox-swap-"), ("replace", "before", ".parquet"),
    ("unlink", "after", ".parquet"),
], ids=["writing", "recording-the-swap", "before-rename", "after-rename"])
def test_a_killed_compaction_never_shows_double_rows_nor_leaves_files(
    tmp_path: Path, step: str, when: str, marker: str
) -> None:
    """Issue 31, item 5: SIGKILL during `compact`. Before: every kill left a hidden
    `.compact-*.parquet.*.tmp` that nothing removed, and a kill after the rename, before the
    merged files were deleted, made `query` count every row twice until the next compaction."""
    for sha in SHA:
        label(tmp_path, sha)
    whole = {"rows": 4 * CLIPS_PER_SOURCE, "ids": 4 * CLIPS_PER_SOURCE}
    run_killed(tmp_path, step, when, "compact", marker)
    assert clip_counts(tmp_path) == whole
    assert query(tmp_path, "SELECT count(*) AS n FROM sources") == [{"n": 4}]
    assert cli(tmp_path, "compact").exit_code == 0
    assert leftovers(tmp_path) == []
    assert clip_counts(tmp_path) == whole


_LIVE_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from voxtox.storage.shards import shards_lock
    from voxtox.storage.swaps import locked_temporary
    target = Path(sys.argv[1])
    with shards_lock(Path(sys.argv[2])):
        temporary = locked_temporary(target)
        path, handle = temporary.__enter__()
    handle.write(b"half a shard")
    print(path, flush=True)
    time.sleep(600)
    """
)


def test_a_live_writers_temporary_file_is_left_alone(data_dir: Path) -> None:
    """The sweep of dead runs' temporary files must not take a running writer's."""
    target = clips_file(data_dir).parent / "part-being-written.parquet"
    writer = subprocess.Popen([sys.executable, "-c", _LIVE_WRITER, str(target), str(data_dir / "shards")],
                              stdout=subprocess.PIPE, text=True)
    try:
        temporary = Path(writer.stdout.readline().strip())
        assert temporary.exists()
        assert cli(data_dir, "compact").exit_code == 0
        assert temporary.exists()
    finally:
        writer.kill()
        writer.wait()
    assert cli(data_dir, "compact").exit_code == 0  # its writer is dead now
    assert not temporary.exists()


# --- 7. erasure leaves only the tombstone -------------------------------------------------------------


def _traces(data_dir: Path, sha: str) -> list[str]:
    """Files under the data dir (the tombstones aside) that hold the hash or its 24-digit key, in
    their bytes or in a Parquet file's decoded metadata (the Arrow schema is stored base64)."""
    needles = (sha, sha[:24])
    found = []
    for path in data_dir.rglob("*"):
        if not path.is_file() or path.name == "tombstones.txt":
            continue
        texts = [path.read_bytes().decode("latin-1")]
        if path.suffix == ".parquet":
            texts += [repr(pq.read_schema(path).metadata), repr(pq.read_metadata(path).metadata)]
        found += [f"{path}: {needle}" for needle in needles for text in texts if needle in text]
    return found


def test_forgetting_after_compaction_leaves_only_the_tombstone(data_dir: Path) -> None:
    """Before: the compacted files' `voxtox.replaces` footer kept `part-<first 24 hex>` of it."""
    result = cli(data_dir, "forget", SHA[1])
    assert result.exit_code == 0, result.output
    assert query(data_dir, f"SELECT count(*) AS n FROM clips WHERE source_sha256 = '{SHA[1]}'") == [{"n": 0}]
    assert _traces(data_dir, SHA[1]) == []
    assert SHA[1] in (data_dir / "shards" / "tombstones.txt").read_text()
    assert cli(data_dir, "compact").exit_code == 0
    assert _traces(data_dir, SHA[1]) == []


def test_forgetting_clears_the_names_an_older_version_kept_in_compacted_footers(data_dir: Path) -> None:
    """Data compacted by a version before this one: its footers list the files they replaced,
    `part-<key>` of each recording. Erasure drops that list from every file it rewrites."""
    path = clips_file(data_dir)
    table = pq.read_table(path)
    replaced = json.dumps([f"part-{sha[:24]}.parquet" for sha in SHA[:3]]).encode()
    pq.write_table(table.replace_schema_metadata(table.schema.metadata | {b"voxtox.replaces": replaced}), path)
    assert _traces(data_dir, SHA[1])  # the old footer names it
    assert cli(data_dir, "forget", SHA[1]).exit_code == 0
    assert _traces(data_dir, SHA[1]) == []
