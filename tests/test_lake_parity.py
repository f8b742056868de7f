"""What the single-machine shards did that a lake now does too (docs/storage.md): retention,
`voxtox forget speaker:` / `--delete-inputs` / `--runs`, snapshot expiry on a schedule, and the
nightly's retention and review steps. Most on an embedded lake (a SQLite catalog and a local data
folder), retention and forget also on PostgreSQL + S3 (a real server and moto's, on 127.0.0.1).
"Gone" means from every data file the lake still has, read as Parquet, not only from the tables."""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prefect.artifacts import Artifact
from typer.testing import CliRunner

from tests.conftest import synthetic_clips, write_audio
from tests import test_forget, test_lake
from voxtox.files import sha256_file
from voxtox.flows.cli import app
from voxtox.settings import RetentionSettings, Settings
from voxtox.storage import lake
from voxtox.storage.lake import LakeTarget, SnapshotGoneError
from voxtox.storage.schema import HUMAN_LABELS_SCHEMA, SOURCES_SCHEMA, TRAINING_SOURCES_FILE, TRAINING_SOURCES_SCHEMA
from voxtox.tasks.retention import apply_retention

# the real PostgreSQL + S3 lake of tests/test_lake.py (s3_endpoint: tests/conftest.py)
postgres, target = test_lake.postgres, test_lake.target
NOW = datetime.now(UTC)
ERASED, DROPPED, KEPT = "e" * 64, "d" * 64, "f" * 64


def _embedded(tmp_path: Path) -> LakeTarget:
    return LakeTarget(str(tmp_path / "lake" / "catalog.sqlite"), str(tmp_path / "lake" / "data"))


def _settings(tmp_path: Path, target: LakeTarget, **overrides: object) -> Settings:
    storage = {"catalog_url": target.catalog_url, "data_url": target.data_url}
    return Settings(data_dir=tmp_path / "data", storage=storage, **overrides)


def _env(target: LakeTarget) -> dict[str, str]:
    return {"VOXTOX_STORAGE__CATALOG_URL": target.catalog_url, "VOXTOX_STORAGE__DATA_URL": target.data_url,
            "COLUMNS": "250"}


def _recording(sha: str, when: datetime, split: str = "train", n_clips: int = 4, uri: str | None = None,
               speaker: str | None = None) -> dict[str, pa.Table]:
    """A labelled recording's tables as `voxtox label` (and import-labels) commit them: clips with
    their own audio (the seed is the hash), its sources row, human labels naming `speaker`."""
    clips = synthetic_clips(n_clips, split, seed=int(sha[:6], 16) % 1000).drop_columns(["date"])
    uri = uri or f"/inbox/{sha[:8]}.wav"
    kind = "sentence" if split == "train" else "evaluation"  # val and test clips are evaluation segments
    for name, values in {"source_sha256": [sha] * n_clips, "source_uri": [uri] * n_clips,
                         "clip_id": [f"{sha[:8]}-{i}" for i in range(n_clips)], "segment_kind": [kind] * n_clips}.items():
        clips = clips.set_column(clips.schema.get_field_index(name), name, pa.array(values))
    clips = clips.set_column(clips.schema.get_field_index("labelled_at"), "labelled_at",
                             pa.array([when] * n_clips, pa.timestamp("us", tz="UTC")))
    source = {name: None for name in SOURCES_SCHEMA.names} | {
        "source_sha256": sha, "source_uri": uri, "split": split, "labelled_at": when, "n_clips": n_clips}
    tables = {"clips": clips, "sources": pa.Table.from_pylist([source], SOURCES_SCHEMA)}
    if speaker is not None:
        label = {name: None for name in HUMAN_LABELS_SCHEMA.names} | {
            "source_sha256": sha, "source_uri": uri, "start_s": 0.0, "end_s": 1.0, "labels": ["no_violation"],
            "speaker": speaker, "imported_at": when}
        tables["human_labels"] = pa.Table.from_pylist([label], HUMAN_LABELS_SCHEMA)
    return tables


def _write(target: LakeTarget, recordings: dict[str, dict[str, pa.Table]]) -> dict[str, list[bytes]]:
    """One commit per recording; returns each recording's clips' audio bytes."""
    with lake.connect(target) as con:
        for sha, tables in recordings.items():
            lake.replace_key(con, target, sha, tables)
    return {sha: [row["audio"]["bytes"] for row in tables["clips"].to_pylist()] for sha, tables in recordings.items()}


def _unreadable_reject(target: LakeTarget, uri: str, when: datetime) -> None:
    """A rejected input with no hash (it could not be read at all), keyed by its path."""
    row = pa.table({"source_sha256": pa.array([None], pa.string()), "source_uri": [uri], "reason": ["unreadable"],
                    "rejected_at": pa.array([when], pa.timestamp("us", tz="UTC"))})
    with lake.connect(target) as con:
        lake.replace_key(con, target, uri, {"rejects": row})


def _count(target: LakeTarget, sql: str) -> int:
    with lake.connect(target, read_only=True) as con:
        lake.define_views(con)
        return con.execute(sql).fetchone()[0]


def _data_files(target: LakeTarget) -> dict[str, bytes]:
    """Every file under the lake's data path (on disk or on S3), by name."""
    if not target.on_s3:
        return {str(p): p.read_bytes() for p in Path(target.data_url).rglob("*") if p.is_file()}
    bucket = target.data_url.split("/")[2]
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], **test_lake._boto_keys())
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    return {key: s3.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}


def _holding(target: LakeTarget, needles: list[bytes]) -> list[str]:
    """Data files holding any needle: in their raw bytes, or in any value once read as Parquet
    (but the tombstones', which keep the hashes of what was erased, by design)."""
    found = []
    for name, raw in _data_files(target).items():
        if f"/{lake.TOMBSTONES}/" in name:
            continue
        rows = pq.read_table(io.BytesIO(raw)).to_pylist() if name.endswith(".parquet") else []
        values = [v if isinstance(v, bytes) else v.encode() for v in test_forget.cells(rows)]
        if any(needle in raw or any(needle in v for v in values) for needle in needles):
            found.append(name)
    return found


def _tombstones(target: LakeTarget) -> set[str]:
    with lake.connect(target, read_only=True) as con:
        return lake.forgotten(con)


def _first_snapshot_is_gone(target: LakeTarget) -> bool:
    try:
        lake.connect_at(target, 1).close()
    except SnapshotGoneError:
        return True
    return False


# --- retention ------------------------------------------------------------------------------------


def _retention_world(target: LakeTarget) -> dict[str, list[bytes]]:
    """A recording past delete_days (90 days old), one past audio_days only (45), one fresh (5),
    and an unreadable input rejected 90 days ago."""
    audio = _write(target, {ERASED: _recording(ERASED, NOW - timedelta(days=90), speaker="alice"),
                            DROPPED: _recording(DROPPED, NOW - timedelta(days=45)),
                            KEPT: _recording(KEPT, NOW - timedelta(days=5), split="val")})
    _unreadable_reject(target, "/inbox/broken.wav", NOW - timedelta(days=90))
    return audio


def _assert_retention_applied(target: LakeTarget, audio: dict[str, list[bytes]]) -> None:
    assert _count(target, "SELECT count(*) FROM clips WHERE source_sha256 = '" + ERASED + "'") == 0
    for table in ("sources", "human_labels"):
        assert _count(target, f"SELECT count(*) FROM {table} WHERE source_sha256 = '{ERASED}'") == 0, table
    assert _count(target, "SELECT count(*) FROM rejects") == 0  # the unreadable input's row too
    assert _count(target, "SELECT count(*) FROM tombstones") == 1
    assert _count(target, f"SELECT count(*) FROM tombstones WHERE source_sha256 = '{ERASED}' "
                          "AND forgotten_on = current_date") == 1
    # the dropped recording keeps its labels, transcripts and embeddings, not its audio
    assert _count(target, f"SELECT count(*) FROM clips WHERE source_sha256 = '{DROPPED}' AND audio IS NULL "
                          "AND transcript IS NOT NULL AND len(text_embedding) > 0") == 4
    assert _count(target, f"SELECT count(*) FROM clips WHERE source_sha256 = '{KEPT}' AND audio IS NOT NULL") == 4
    # and no file the lake still has holds the erased or dropped bytes, nor the erased hash
    assert _holding(target, audio[ERASED] + audio[DROPPED] + [ERASED.encode()]) == []
    assert _holding(target, audio[KEPT][:1])  # (in two files after the nightly's compaction: time travel's)
    assert _first_snapshot_is_gone(target)  # time travel cannot bring them back either


def test_retention_on_an_embedded_lake_erases_drops_audio_purges_bytes_and_reruns_to_nothing(tmp_path: Path) -> None:
    target = _embedded(tmp_path)
    settings = _settings(tmp_path, target, retention=RetentionSettings(audio_days=30, delete_days=60))
    audio = _retention_world(target)
    assert len(_holding(target, audio[ERASED][:1] + audio[DROPPED][:1])) == 2  # the check sees bytes while there

    report = apply_retention(settings, NOW)

    assert (report.recordings_erased, report.clips_audio_dropped) == (1, 4)
    assert report.rows_erased == {"clips": 4, "sources": 1, "human_labels": 1, "rejects": 1}
    _assert_retention_applied(target, audio)
    again = apply_retention(settings, NOW)
    assert (again.recordings_erased, again.clips_audio_dropped, again.rows_erased) == (0, 0, {})
    assert _count(target, "SELECT count(*) FROM clips") == 8 and _count(target, "SELECT count(*) FROM tombstones") == 1


def test_retention_on_postgresql_and_s3_purges_the_bytes_from_the_object_store(
        target: LakeTarget, tmp_path: Path) -> None:
    settings = _settings(tmp_path, target, retention=RetentionSettings(audio_days=30, delete_days=60))
    audio = _retention_world(target)
    assert len(_holding(target, audio[ERASED][:1])) == 1

    report = apply_retention(settings, NOW)

    assert (report.recordings_erased, report.clips_audio_dropped) == (1, 4)
    _assert_retention_applied(target, audio)
    assert apply_retention(settings, NOW).clips_audio_dropped == 0


# --- the nightly: retention and the review step on a lake -----------------------------------------


def test_the_nightly_on_a_lake_applies_retention_and_sends_a_review_batch(tmp_path: Path,
                                                                           prefect_harness: None) -> None:
    from voxtox.flows.nightly import nightly_flow

    target = _embedded(tmp_path)
    settings = _settings(tmp_path, target, retention=RetentionSettings(audio_days=30, delete_days=60),
                         review={"nightly": True, "budget": 3, "split": "val", "strategy": "random"})
    audio = _retention_world(target)
    (tmp_path / "inbox").mkdir()

    report = nightly_flow(inbox=str(tmp_path / "inbox"), settings=settings, night="2026-12-01")

    _assert_retention_applied(target, audio)
    assert report.train_clips == 0 and not report.trained_now  # no training clip kept its audio
    retention = Artifact.get("retention")
    assert retention is not None and "**recordings_erased**: 1" in retention.data
    assert "**clips_audio_dropped**: 4" in retention.data
    assert report.review == "3 sent"
    tasks = json.loads((settings.data_dir / "review" / "export-2026-12-01" / "tasks.json").read_text())
    assert len(tasks) == 3 and {t["data"]["clip_id"][:8] for t in tasks} == {KEPT[:8]}  # the lake's val clips
    batch = (settings.data_dir / "review" / "batch-2026-12-01.jsonl").read_text().splitlines()
    assert len(batch) == 3
    again = nightly_flow(inbox=str(tmp_path / "inbox"), settings=settings, night="2026-12-02")
    assert again.review == "1 sent"  # the val clip not sent the night before; the rerun erased nothing
    assert _count(target, "SELECT count(*) FROM clips") == 8


# --- forget speaker:, --delete-inputs, --runs -------------------------------------------------------


def _forget_world(tmp_path: Path, target: LakeTarget) -> dict:
    """Two input files labelled into the lake (alice speaks in one, bob in the other), a run
    outside <runs_dir> that trained on alice's and cached scores of both's clips."""
    rng = np.random.default_rng(5)
    files = {who: write_audio(tmp_path / "inbox" / f"{who}.wav", 0.1 * rng.normal(size=16000).astype(np.float32))
             for who in ("alice", "bob")}
    shas = {who: sha256_file(path) for who, path in files.items()}
    audio = _write(target, {shas[who]: _recording(shas[who], NOW, uri=str(files[who].resolve()), speaker=who)
                            for who in files})
    run = tmp_path / "elsewhere" / "run-1"
    (run / "evaluation" / "scores").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{"source_sha256": shas["alice"], "split": "train", "n_clips": 4}],
                                        TRAINING_SOURCES_SCHEMA), run / TRAINING_SOURCES_FILE)
    scores = pa.table({"clip_id": [f"{shas[w][:8]}-{i}" for w in files for i in range(4)], "score": [0.5] * 8})
    pq.write_table(scores, run / "evaluation" / "scores" / "val-best.parquet")
    return {"files": files, "shas": shas, "audio": audio, "run": run}


def _forget(target: LakeTarget, data_dir: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["forget", *args, "--data-dir", str(data_dir)], env=_env(target))
    return result.exit_code, result.output


def _assert_alice_forgotten(target: LakeTarget, world: dict, output: str) -> None:
    alice, bob = world["shas"]["alice"], world["shas"]["bob"]
    assert "1 recording(s) erased" in output and alice in output and bob not in output
    assert f"{world['run']} (train)" in output  # --runs: the run that learnt from her recording
    assert f"deleted input file {world['files']['alice'].resolve()}" in output
    assert not world["files"]["alice"].exists() and world["files"]["bob"].exists()
    for table in ("clips", "sources", "human_labels"):
        assert _count(target, f"SELECT count(*) FROM {table} WHERE source_sha256 = '{alice}'") == 0, table
        assert _count(target, f"SELECT count(*) FROM {table} WHERE source_sha256 = '{bob}'") > 0, table
    assert _count(target, "SELECT list(source_sha256) FROM tombstones") == [alice]
    assert _holding(target, world["audio"][alice] + [alice.encode(), b"alice"]) == []
    assert len(_holding(target, world["audio"][bob][:1])) == 1
    cached = pq.read_table(world["run"] / "evaluation" / "scores" / "val-best.parquet")["clip_id"].to_pylist()
    assert cached == [f"{bob[:8]}-{i}" for i in range(4)]  # her clips' cached scores went too


def test_forget_a_speaker_with_delete_inputs_and_runs_on_an_embedded_lake(tmp_path: Path) -> None:
    target = _embedded(tmp_path)
    world = _forget_world(tmp_path, target)
    data_dir = tmp_path / "data"
    code, dry = _forget(target, data_dir, "speaker:alice", "--dry-run", "--runs", str(world["run"]))
    assert code == 0, dry
    assert "would be erased" in dry and world["shas"]["alice"] in dry and world["files"]["alice"].exists()
    assert _count(target, "SELECT count(*) FROM clips") == 8 and _tombstones(target) == set()

    code, output = _forget(target, data_dir, "speaker:alice", "--delete-inputs", "--runs", str(world["run"]))

    assert code == 0, output
    _assert_alice_forgotten(target, world, output)
    code, again = _forget(target, data_dir, "speaker:alice")  # her labels are gone: nothing names her now
    assert code == 1 and "no data held for speaker:alice" in again
    code, by_path = _forget(target, data_dir, str(world["files"]["bob"]), "--dry-run")  # a path finds bob's
    assert code == 0 and world["shas"]["bob"] in by_path
    assert _count(target, "SELECT count(*) FROM clips") == 4 and _tombstones(target) == {world["shas"]["alice"]}


def test_forget_a_speaker_on_postgresql_and_s3(target: LakeTarget, tmp_path: Path) -> None:
    world = _forget_world(tmp_path, target)

    code, output = _forget(target, tmp_path / "data", "speaker:alice", "--delete-inputs", "--runs", str(world["run"]))

    assert code == 0, output
    assert target.catalog_name() in output
    _assert_alice_forgotten(target, world, output)


# --- snapshot expiry on a schedule --------------------------------------------------------------------


def _compact(target: LakeTarget, data_dir: Path, keep_days: str | None = None) -> str:
    env = _env(target) | ({"VOXTOX_STORAGE__KEEP_SNAPSHOTS_DAYS": keep_days} if keep_days is not None else {})
    result = CliRunner().invoke(app, ["compact", "--data-dir", str(data_dir)], env=env)
    assert result.exit_code == 0, result.output
    return result.output


def _unreferenced(target: LakeTarget) -> set[str]:
    """Data files on disk that the latest snapshot does not read."""
    with lake.connect(target, read_only=True) as con:
        read = {Path(p).name for name in [*lake.tables(con), lake.COMMITS_TABLE]
                for row in con.execute("SELECT data_file, delete_file FROM ducklake_list_files('lake', ?)",
                                       [name]).fetchall() for p in row if p}
    return {p.name for p in Path(target.data_url).rglob("*.parquet")} - read


def test_compact_expires_snapshots_older_than_keep_snapshots_days_and_deletes_what_none_reads(
        tmp_path: Path) -> None:
    target = _embedded(tmp_path)
    _write(target, {ERASED: _recording(ERASED, NOW)})
    with lake.connect(target, read_only=True) as con:
        old = lake.snapshot_id(con)  # the first recording's commit
    _write(target, {sha: _recording(sha, NOW) for sha in (DROPPED, KEPT)})

    default = _compact(target, tmp_path / "data")  # keep_snapshots_days = 7: every snapshot is younger

    assert "keep_snapshots_days) expired: 0" in default
    assert _unreferenced(target)  # the merged-away files: an old snapshot still reads them
    with lake.connect_at(target, old) as con:
        assert con.execute("SELECT count(*) FROM lake.clips").fetchone()[0] == 4
    expired = _compact(target, tmp_path / "data", keep_days="0")
    assert "keep_snapshots_days) expired: 0" not in expired
    assert _unreferenced(target) == set()
    with pytest.raises(SnapshotGoneError, match=f"no snapshot {old}"):
        lake.connect_at(target, old)
    assert _count(target, "SELECT count(DISTINCT clip_id) FROM clips") == 12
    with lake.connect(target, read_only=True) as con:
        assert len(lake.snapshots(con)) == 1


# --- calibrate and ablate read one snapshot --------------------------------------------------------


def test_calibrate_reads_the_run_s_snapshot_unless_told_the_latest(tmp_path: Path, tiny_whisper: Path) -> None:
    from tests.test_lake_training import _fill, _settings as _train_settings, _write as _write_one
    from voxtox.tasks.ablate import AblationPlan, Grid, pin_snapshot
    from voxtox.tasks.calibrate import calibrate_thresholds
    from voxtox.tasks.train import train_model

    target = _embedded(tmp_path)
    _fill(target)  # 12 val clips among others
    settings = _train_settings(tmp_path, target, tiny_whisper)
    run = Path(train_model(settings, tmp_path / "runs" / "run").run_dir)
    late = synthetic_clips(5, "val", 9).drop_columns(["source_sha256", "clip_id", "date"])
    _write_one(target, "val-late", late.append_column("source_sha256", pa.array(["val-late"] * 5))
               .append_column("clip_id", pa.array([f"late-val-{i}" for i in range(5)])))

    pinned = calibrate_thresholds(run, settings)
    latest = calibrate_thresholds(run, settings, snapshot="latest")

    recorded = json.loads((run / "config.json").read_text())["lake"]["snapshot_id"]
    assert (pinned["n_segments"], pinned["lake_snapshot"]) == (12, recorded)
    assert latest["n_segments"] == 17 and latest["lake_snapshot"] > recorded
    # an ablation grid pins one snapshot for all its cells: the one its trained cells recorded
    plan = pin_snapshot(AblationPlan(grid=Grid(), settings=settings, out=tmp_path / "runs", source="grid.toml"))
    assert plan.settings.storage.snapshot == recorded
    fresh = pin_snapshot(AblationPlan(grid=Grid(), settings=settings, out=tmp_path / "new-grid", source="grid.toml"))
    assert fresh.settings.storage.snapshot == latest["lake_snapshot"]


# --- a real `voxtox label` losing its PostgreSQL catalog mid-run ------------------------------------

restartable_postgres = test_lake.restartable_postgres

TEXTS = ["good game everyone, see you tomorrow", "nice shot mate, push mid with me", "thanks for the heal, what a match",
         "rotate to the bomb site now", "we need one more smoke here", "great round, keep it up team"]


def _wait_for_a_commit(target: LakeTarget, run: subprocess.Popen, timeout_s: float = 600) -> int:
    """Sources committed once the run has committed its first recording (polled while it runs)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and run.poll() is None:
        try:
            with lake.connect(target, read_only=True) as con:
                if (n := lake.row_count(con, "sources")) > 0:
                    return n
        except lake.LakeError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"voxtox label ended (exit {run.poll()}) or timed out before its first commit")


def test_a_label_process_that_loses_postgresql_fails_in_one_line_and_its_rerun_completes(
        restartable_postgres, tmp_path: Path) -> None:  # noqa: ANN001 (tests/test_lake.py's fixture)
    """`voxtox label` on six recordings, one commit each; PostgreSQL is killed after the first
    commit: the run fails naming the catalog, a reader sees whole recordings only (every sources
    row with all its clips), and once PostgreSQL is back the rerun labels the rest: 0 duplicates."""
    target = LakeTarget(f"postgresql://prefect@127.0.0.1:{restartable_postgres.port}/lake", str(tmp_path / "lake"))
    files = [test_lake._wav(tmp_path / "inbox" / f"r{i}.wav", text) for i, text in enumerate(TEXTS)]
    env = {**os.environ, **_env(target), "PREFECT_LOGGING_LEVEL": "WARNING", "VOXTOX_PIPELINE__UNIT_SPEECH_S": "0.5"}
    command = test_lake._voxtox("label", str(tmp_path / "inbox"), "--data-dir", str(tmp_path / "data"))
    run = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for_a_commit(target, run)
        restartable_postgres.kill()
        output = run.communicate(timeout=600)[0]
    finally:
        run.kill()
    assert run.returncode == 1, output[-3000:]
    # the run ends on one line naming the catalog (not the CLI's traceback of the LakeError)
    last = output.strip().splitlines()[-1]
    assert last.startswith(f"error: lake catalog {target.catalog_name()} unreachable"), output[-3000:]
    assert "password" not in output
    restartable_postgres.start()
    landed = _count(target, "SELECT count(*) FROM sources")
    assert 1 <= landed < len(files)
    assert _count(target, "SELECT count(*) FROM sources s WHERE n_clips <> (SELECT count(*) FROM clips c "
                          "WHERE c.source_sha256 = s.source_sha256)") == 0  # nothing half-committed

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)

    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert _count(target, "SELECT count(DISTINCT source_sha256) FROM sources") == len(files)
    assert _count(target, "SELECT count(*) FROM sources") == len(files)
    clips = _count(target, "SELECT count(*) FROM clips")
    assert clips >= len(files) and clips == _count(target, "SELECT count(DISTINCT clip_id) FROM clips")
