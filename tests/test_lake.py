"""The many-machines store (storage/lake.py, docs/storage.md): a DuckLake whose catalog is a
real PostgreSQL and whose data files are on a real S3 server (moto's, on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import boto3
import duckdb
import pyarrow as pa
import pytest
import soundfile
from moto.server import ThreadedMotoServer

from conftest import spoken
from conftest import S3_TEST_KEYS as KEYS
from prefect_server import free_port, postgres_cluster
from voxtox.audio import SAMPLE_RATE
from voxtox.settings import Settings
from voxtox.storage import lake
from voxtox.storage.catalog import Catalog
from voxtox.storage.lake import LakeError, LakeTarget
from voxtox.corpus.speech_synth import Utterance

@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    with postgres_cluster() as url:  # postgresql+asyncpg://prefect@127.0.0.1:<port>/prefect
        yield url.replace("postgresql+asyncpg://", "postgresql://")


@pytest.fixture
def target(s3_endpoint: str, postgres: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> LakeTarget:
    """A fresh lake: its own bucket and its own PostgreSQL database, the AWS variables set."""
    for name, value in {**KEYS, "AWS_ENDPOINT_URL": s3_endpoint}.items():
        monkeypatch.setenv(name, value)
    name = "t" + str(abs(hash(request.node.name)))[:10]
    boto3.client("s3", endpoint_url=s3_endpoint, **_boto_keys()).create_bucket(Bucket=name)
    asyncio.run(_create_database(postgres, name))
    return LakeTarget(postgres.rsplit("/", 1)[0] + f"/{name}", f"s3://{name}/lake")


async def _create_database(url: str, name: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(f"CREATE DATABASE {name}")
    finally:
        await connection.close()


def _boto_keys() -> dict[str, str]:
    return {"aws_access_key_id": KEYS["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": KEYS["AWS_SECRET_ACCESS_KEY"],
            "region_name": KEYS["AWS_REGION"]}


def _rows(key: str, n: int, writer: str) -> pa.Table:
    return pa.table({"source_sha256": [key] * n, "i": list(range(n)), "writer": [writer] * n})


def _count(target: LakeTarget, sql: str) -> int:
    with lake.connect(target, read_only=True) as con:
        lake.define_views(con)
        return con.execute(sql).fetchone()[0]


def test_replacing_a_key_twice_keeps_one_copy_and_the_files_are_on_s3(target: LakeTarget, s3_endpoint: str) -> None:
    with lake.connect(target) as con:
        lake.replace_key(con, target, "a", {"clips": _rows("a", 3, "first")})
        lake.replace_key(con, target, "a", {"clips": _rows("a", 3, "again")})  # a rerun
        lake.replace_key(con, target, "b", {"clips": _rows("b", 2, "first")})
    assert _count(target, "SELECT count(*) FROM clips") == 5
    assert _count(target, "SELECT count(*) FROM clips WHERE source_sha256 = 'a' AND writer = 'again'") == 3
    bucket = target.data_url.split("/")[2]
    listed = boto3.client("s3", endpoint_url=s3_endpoint, **_boto_keys()).list_objects_v2(Bucket=bucket)
    assert any(o["Key"].endswith(".parquet") for o in listed.get("Contents", [])), "no data file on S3"


def test_a_commit_that_raced_another_to_the_same_new_key_conflicts(target: LakeTarget) -> None:
    """Two workers label the same new recording: both transactions start before either commits.
    DuckLake lets concurrent appends both land; the commits row makes the second one conflict."""
    rows = {"clips": _rows("shared", 4, "b"), "sources": _rows("shared", 1, "b")}
    with lake.connect(target) as first, lake.connect(target) as second:
        lake.replace_key(first, target, "other", {"clips": _rows("other", 1, "a"), "sources": _rows("other", 1, "a")})
        lake.stage_replacement(second, "shared", rows)  # open, not committed
        lake.replace_key(first, target, "shared", {"clips": _rows("shared", 4, "a"), "sources": _rows("shared", 1, "a")})
        with pytest.raises(duckdb.Error, match="(?i)conflict"):
            second.execute("COMMIT")
        assert lake.replace_key(second, target, "shared", rows) == 1  # the retry on the new snapshot
    assert _count(target, "SELECT count(*) FROM clips WHERE source_sha256 = 'shared'") == 4
    assert _count(target, "SELECT count(*) FROM sources") == 2


def _writer(target: LakeTarget, keys: list[str], writer: str, environ: dict[str, str], barrier) -> None:  # noqa: ANN001
    os.environ.update(environ)
    with lake.connect(target) as con:
        for key in keys:
            lake.replace_key(con, target, key, {"clips": _rows(key, 4, writer), "sources": _rows(key, 1, writer)})
        barrier.wait(60)  # both write the shared key at the same moment: their transactions overlap
        lake.replace_key(con, target, "shared", {"clips": _rows("shared", 4, writer), "sources": _rows("shared", 1, writer)})


def test_two_processes_writing_the_same_and_disjoint_keys_store_each_once(target: LakeTarget) -> None:
    """Concurrent commits to one table: DuckLake alone lets both first copies of `shared` land
    (appends do not conflict, and neither saw a row to delete); the commits row makes them
    conflict, and the loser retries and replaces."""
    environ = {k: os.environ[k] for k in (*KEYS, "AWS_ENDPOINT_URL")}
    context = multiprocessing.get_context("spawn")
    plans = {"w1": [f"one-{i}" for i in range(6)], "w2": [f"two-{i}" for i in range(6)]}
    barrier = context.Barrier(2)
    workers = [context.Process(target=_writer, args=(target, keys, name, environ, barrier))
               for name, keys in plans.items()]
    for worker in workers:
        worker.start()
    seen = _read_while(target, workers, "SELECT (SELECT count(*) FROM clips), (SELECT count(*) FROM sources)")
    for worker in workers:
        worker.join(180)
        assert worker.exitcode == 0
    # every commit holds a key's 4 clips and its 1 sources row: a reader never sees one without the other
    assert seen and all(clips == 4 * sources for clips, sources in seen), seen
    assert len(set(seen)) > 1  # it did read while the writers were committing
    assert _count(target, "SELECT count(*) FROM sources") == 13
    assert _count(target, "SELECT count(*) FROM clips") == 13 * 4
    assert _count(target, "SELECT count(DISTINCT writer) FROM clips WHERE source_sha256 = 'shared'") == 1


def _read_while(target: LakeTarget, workers: list, sql: str) -> list[tuple]:
    """What a reader gets from `sql`, over and over, while any worker is alive."""
    seen = []
    with lake.connect(target, read_only=True) as con:
        lake.define_views(con)
        while any(worker.is_alive() for worker in workers):
            try:
                con.execute("BEGIN")
                seen.append(con.execute(sql).fetchone())
                con.execute("COMMIT")
            except duckdb.CatalogException:  # the tables are not there yet
                con.execute("ROLLBACK")
                lake.define_views(con)
            time.sleep(0.02)
    return seen


def test_an_object_store_that_is_down_is_one_line_naming_the_endpoint(target: LakeTarget,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    with pytest.raises(LakeError) as raised:
        lake.connect(target).close()
    assert dead in str(raised.value) and "\n" not in str(raised.value)


def test_a_catalog_that_is_down_is_one_line_naming_it(target: LakeTarget) -> None:
    down = LakeTarget(f"postgresql://prefect:hunter2x@127.0.0.1:{free_port()}/lake", target.data_url)
    with pytest.raises(LakeError) as raised:
        lake.connect(down).close()
    assert down.catalog_name() in str(raised.value) and "\n" not in str(raised.value)
    assert "hunter2x" not in str(raised.value)


_KILLED_WRITER = """
import os, sys, pyarrow as pa
from voxtox.storage import lake
target = lake.LakeTarget(sys.argv[1], sys.argv[2])
con = lake.connect(target)
lake.replace_key(con, target, "kept", {"clips": pa.table({"source_sha256": ["kept"], "i": [0]})})
con.execute("BEGIN")
con.execute("INSERT INTO lake.clips VALUES ('lost', 'lost', 1)")  # data files written at once
print("written", flush=True)
sys.stdin.read()  # killed here, before COMMIT
"""


def test_a_writer_killed_before_its_commit_leaves_nothing_a_reader_sees(target: LakeTarget, s3_endpoint: str) -> None:
    writer = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, target.catalog_url, target.data_url],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "written"
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(30)
    assert _count(target, "SELECT count(*) FROM clips") == 1
    assert _count(target, "SELECT count(*) FROM clips WHERE source_sha256 = 'lost'") == 0
    # its uploaded file is an orphan: the clean-up deletes it, and only it
    assert _objects_holding(target, s3_endpoint, b"lost")
    with lake.connect(target) as con:
        assert lake.delete_orphans(con, target, older_than_s=0) == 1
    assert not _objects_holding(target, s3_endpoint, b"lost")
    assert _count(target, "SELECT count(*) FROM clips") == 1


def test_the_catalog_of_lake_settings_reads_the_lake(target: LakeTarget, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, storage={"catalog_url": target.catalog_url, "data_url": target.data_url})
    with lake.connect(target) as con:
        lake.replace_key(con, target, "k", {"sources": _rows("abc", 1, "w")})
    catalog = Catalog.from_settings(settings)
    assert catalog.known_sources() == {"abc"}
    assert catalog.read_only_query("SELECT count(*) AS n FROM sources").to_pylist() == [{"n": 1}]
    with pytest.raises(ValueError, match="together"):
        Settings(data_dir=tmp_path, storage={"catalog_url": target.catalog_url})


# --- two `voxtox label` processes on one lake ---------------------------------------------------


def _wav(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, spoken(Utterance(text, "en")), SAMPLE_RATE)
    return path


def _voxtox(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("voxtox")), *args]


def test_two_label_runs_at_once_on_one_lake_label_each_recording_once(target: LakeTarget, tmp_path: Path) -> None:
    """Disjoint inputs plus one file both were given: every source once, none lost; a rerun adds 0."""
    shared = _wav(tmp_path / "shared" / "both.wav", "good game everyone, see you tomorrow")
    inputs = {name: [_wav(tmp_path / name / f"{name}.wav", text), shared]
              for name, text in (("a", "nice shot mate, push mid with me"), ("b", "thanks for the heal, what a match"))}
    env = {**os.environ, "VOXTOX_STORAGE__CATALOG_URL": target.catalog_url,
           "VOXTOX_STORAGE__DATA_URL": target.data_url, "PREFECT_LOGGING_LEVEL": "WARNING"}
    runs = [subprocess.Popen(_voxtox("label", *map(str, files), "--data-dir", str(tmp_path / f"data-{name}")),
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for name, files in inputs.items()]
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    for run, output in zip(runs, outputs, strict=True):
        assert run.returncode == 0, output[-3000:]
    sources = "SELECT count(*) FROM sources"
    assert _count(target, sources) == 3
    assert _count(target, "SELECT count(DISTINCT source_sha256) FROM sources") == 3
    clips = _count(target, "SELECT count(*) FROM clips")
    assert clips > 0 and clips == _count(target, "SELECT count(DISTINCT clip_id) FROM clips")
    assert _count(target, "SELECT count(DISTINCT run_id) FROM clips WHERE source_uri LIKE '%both.wav'") == 1
    # the views give embeddings back as FLOAT[n] (stored as FLOAT[]), as the shards' views do
    assert _count(target, "SELECT count(*) FROM clips WHERE array_cosine_similarity(text_embedding, "
                          "text_embedding) > 0.99") == clips

    again = subprocess.run(_voxtox("label", str(tmp_path / "a"), "--data-dir", str(tmp_path / "data-a")),
                           env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert _count(target, sources) == 3 and _count(target, "SELECT count(*) FROM clips") == clips

    # forget the shared recording by its path: its rows go, and no later run labels it again
    shared_clips = _count(target, "SELECT count(*) FROM clips WHERE source_uri LIKE '%both.wav'")
    forget = subprocess.run(_voxtox("forget", str(shared), "--data-dir", str(tmp_path / "x")), env=env,
                            capture_output=True, text=True, timeout=120)
    assert forget.returncode == 0, forget.stdout + forget.stderr
    assert _count(target, "SELECT count(*) FROM sources WHERE source_uri LIKE '%both.wav'") == 0
    relabel = subprocess.run(_voxtox("label", str(shared), "--data-dir", str(tmp_path / "data-a")),
                             env=env, capture_output=True, text=True, timeout=600)
    assert relabel.returncode == 0, relabel.stdout[-3000:] + relabel.stderr[-3000:]
    assert _count(target, sources) == 2 and _count(target, "SELECT count(*) FROM clips") == clips - shared_clips
    assert _count(target, "SELECT count(*) FROM tombstones") == 1
    query = subprocess.run(_voxtox("query", "SELECT count(*) AS n FROM sources", "--data-dir", str(tmp_path / "x"),
                                   "--format", "json"), env=env, capture_output=True, text=True, timeout=120)
    assert query.returncode == 0, query.stderr
    assert json.loads(next(line for line in query.stdout.splitlines() if line.startswith("{"))) == {"n": 2}


def test_a_label_run_against_a_stopped_object_store_fails_in_one_line(target: LakeTarget, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    env = {**os.environ, "AWS_ENDPOINT_URL": dead, "VOXTOX_STORAGE__CATALOG_URL": target.catalog_url,
           "VOXTOX_STORAGE__DATA_URL": target.data_url}
    started = time.monotonic()
    run = subprocess.run(_voxtox("query", "SELECT 1", "--data-dir", str(tmp_path)), env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and dead in run.stdout + run.stderr, (run.stdout, run.stderr)
    assert time.monotonic() - started < 120


def test_an_object_store_that_stops_between_commits_fails_in_one_line_and_a_rerun_completes(
        target: LakeTarget, monkeypatch: pytest.MonkeyPatch) -> None:
    """S3 goes away mid-run: the commit in flight fails in one line naming the endpoint, nothing
    of it is committed, and once S3 is back the rerun lands every key once."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    bucket = target.data_url.split("/")[2]
    boto3.client("s3", endpoint_url=endpoint, **_boto_keys()).create_bucket(Bucket=bucket)
    try:
        with lake.connect(target) as con:
            lake.replace_key(con, target, "first", {"clips": _rows("first", 3, "w")})
            server.stop()
            with pytest.raises(LakeError) as raised:
                lake.replace_key(con, target, "second", {"clips": _rows("second", 3, "w")})
            assert endpoint in str(raised.value) and "\n" not in str(raised.value)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)  # moto keeps its buckets in-process
        server.start()
        assert _count(target, "SELECT count(*) FROM clips") == 3  # only the commit that landed
        with lake.connect(target) as con:  # the rerun
            for key in ("first", "second"):
                lake.replace_key(con, target, key, {"clips": _rows(key, 3, "w")})
        assert _count(target, "SELECT count(*) FROM clips") == 6
    finally:
        server.stop()


def test_erasing_a_recording_removes_its_bytes_from_s3_and_from_old_snapshots(target: LakeTarget,
                                                                               s3_endpoint: str) -> None:
    secret = b"voxtox-erase-me-0123456789"
    with lake.connect(target) as con:
        lake.replace_key(con, target, "gone", {"clips": pa.table({"source_sha256": ["gone", "gone"],
                                                                  "blob": [secret, b"a"]})})
        lake.replace_key(con, target, "kept", {"clips": pa.table({"source_sha256": ["kept"], "blob": [b"b"]})})
        con.execute("CALL ducklake_merge_adjacent_files('lake')")  # the secret now shares a file with `kept`
        assert _objects_holding(target, s3_endpoint, secret)
        assert lake.erase(con, target, {"gone"}) == 2
    assert not _objects_holding(target, s3_endpoint, secret)
    assert _count(target, "SELECT count(*) FROM clips") == 1
    with lake.connect(target, read_only=True) as con:  # no snapshot left that reaches it
        first = con.execute("SELECT min(snapshot_id) FROM lake.snapshots()").fetchone()[0]
        assert con.execute(f"SELECT count(*) FROM lake.clips AT (VERSION => {first}) "
                           "WHERE source_sha256 = 'gone'").fetchone()[0] == 0


def _objects_holding(target: LakeTarget, endpoint: str, needle: bytes) -> list[str]:
    s3 = boto3.client("s3", endpoint_url=endpoint, **_boto_keys())
    bucket = target.data_url.split("/")[2]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    return [k for k in keys if needle in s3.get_object(Bucket=bucket, Key=k)["Body"].read()]


def test_compact_merges_a_lake_s_small_files_and_keeps_every_row(target: LakeTarget, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from voxtox.flows.cli import app

    with lake.connect(target) as con:
        for i in range(8):  # one commit, so one file, per recording
            lake.replace_key(con, target, f"k{i}", {"clips": _rows(f"k{i}", 3, "w")})
        assert lake.data_files(con, "clips") == 8
    env = {"VOXTOX_STORAGE__CATALOG_URL": target.catalog_url, "VOXTOX_STORAGE__DATA_URL": target.data_url}
    result = CliRunner().invoke(app, ["compact", "--data-dir", str(tmp_path)], env=env)
    assert result.exit_code == 0, result.output
    with lake.connect(target) as con:
        assert lake.data_files(con, "clips") == 1
    assert _count(target, "SELECT count(*) FROM clips") == 24
    assert _count(target, "SELECT count(DISTINCT source_sha256) FROM clips") == 8


def test_a_write_of_a_recording_forgotten_meanwhile_is_not_committed(target: LakeTarget) -> None:
    """`forget` on one host while another host's label run is writing that recording: the write
    either conflicts and retries (seeing the tombstone) or sees it at once; the rows stay gone."""
    with lake.connect(target) as con:
        lake.replace_key(con, target, "k", {"clips": _rows("sha-gone", 2, "w")})
        assert lake.erase(con, target, {"sha-gone"}) == 2
        assert lake.replace_key(con, target, "k", {"clips": _rows("sha-gone", 2, "w")}, unless_forgotten="sha-gone") == 0
        assert lake.replace_key(con, target, "k2", {"clips": _rows("sha-kept", 2, "w")}, unless_forgotten="sha-kept") == 1
    assert _count(target, "SELECT count(*) FROM clips") == 2
    assert _count(target, "SELECT count(*) FROM tombstones WHERE source_sha256 = 'sha-gone'") == 1



def test_a_dask_cluster_s_two_worker_processes_write_one_lake(target: LakeTarget, tmp_path: Path,
                                                              prefect_harness) -> None:
    """The write tasks run in two Dask worker processes (the lake target travels with each task,
    the AWS variables with the workers' environment): every recording once, a rerun adds 0."""
    from prefect_dask import DaskTaskRunner

    from voxtox.flows.label import label_flow

    inbox = tmp_path / "inbox"
    for i, text in enumerate(("good game everyone", "nice shot mate", "thanks for the heal", "see you tomorrow")):
        _wav(inbox / f"r{i}.wav", text)
    settings = Settings(data_dir=tmp_path / "data", storage={"catalog_url": target.catalog_url,
                                                             "data_url": target.data_url})
    settings = settings.model_copy(update={"pipeline": settings.pipeline.model_copy(update={"unit_speech_s": 1.0})})
    runner = DaskTaskRunner(cluster_kwargs={"n_workers": 2, "threads_per_worker": 1, "processes": True})
    report = label_flow.with_options(task_runner=runner)(inputs=[str(inbox)], split="train", settings=settings)
    assert report.n_sources == 4
    assert _count(target, "SELECT count(*) FROM sources") == 4
    clips = _count(target, "SELECT count(*) FROM clips")
    assert clips == report.n_clips == _count(target, "SELECT count(DISTINCT clip_id) FROM clips")
    again = label_flow.with_options(task_runner=runner)(inputs=[str(inbox)], split="train", settings=settings)
    assert again.n_sources == 0 and _count(target, "SELECT count(*) FROM clips") == clips


class _RestartablePostgres:
    """A PostgreSQL cluster of its own that a test can kill (immediate shutdown: what a crash
    leaves) and start again on the same port and data."""

    def __init__(self, root: Path) -> None:
        from prefect_server import postgres_bin_dir

        self.bin_dir, self.root, self.port = postgres_bin_dir(), root, free_port()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            import shutil

            shutil.chown(root, "postgres", "postgres")

    def _pg(self, tool: str, *args: str) -> None:
        subprocess.run([*self.as_user, str(self.bin_dir / tool), *args], check=True, capture_output=True,
                       cwd=self.root)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._pg("pg_ctl", "-D", str(self.root / "data"), "-o", options, "-l", str(self.root / "log"), "-w", "start")

    def kill(self) -> None:
        self._pg("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")


@pytest.fixture
def restartable_postgres() -> Iterator[_RestartablePostgres]:
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="voxtox-pg-kill-"))  # outside pytest's root-only tmp: postgres owns it
    cluster = _RestartablePostgres(root)
    cluster._pg("initdb", "-D", str(root / "data"), "-U", "prefect", "--auth=trust", "-E", "UTF8", "--no-sync")
    cluster.start()
    try:
        cluster._pg("createdb", "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "prefect", "lake")
        yield cluster
    finally:
        subprocess.run([*cluster.as_user, str(cluster.bin_dir / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate",
                        "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_postgres_dying_mid_run_fails_in_one_line_leaves_no_partial_commit_and_a_rerun_completes(
        restartable_postgres: _RestartablePostgres, tmp_path: Path) -> None:
    """The catalog's server is killed between two commits of a run, and again while a commit's
    transaction is open (its data files written, the catalog not yet told): each failure is one
    line naming the catalog; once PostgreSQL is back, a reader sees only what was committed and
    the rerun lands every recording once."""
    target = LakeTarget(f"postgresql://prefect@127.0.0.1:{restartable_postgres.port}/lake", str(tmp_path / "data"))
    rows = {key: {"clips": _rows(key, 3, "w"), "sources": _rows(key, 1, "w")} for key in ("first", "second", "third")}
    with lake.connect(target) as con:
        lake.replace_key(con, target, "first", rows["first"])
        restartable_postgres.kill()
        with pytest.raises(LakeError) as between:
            lake.replace_key(con, target, "second", rows["second"])
    restartable_postgres.start()
    with lake.connect(target) as con:
        lake.stage_replacement(con, "second", rows["second"])  # open: its rows written, not committed
        restartable_postgres.kill()
        with pytest.raises(LakeError) as during, lake.lake_errors(target):
            con.execute("COMMIT")
    for raised in (between, during):
        message = str(raised.value)
        assert target.catalog_name() in message and "\n" not in message, message
    restartable_postgres.start()
    assert _count(target, "SELECT count(*) FROM clips") == 3  # only the commit that landed
    assert _count(target, "SELECT count(*) FROM sources") == 1
    with lake.connect(target) as con:  # the rerun
        for key, tables in rows.items():
            lake.replace_key(con, target, key, tables)
    assert _count(target, "SELECT count(*) FROM clips") == 9
    assert _count(target, "SELECT count(*), count(DISTINCT source_sha256) FROM sources") == 3
