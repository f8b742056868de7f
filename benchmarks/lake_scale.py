"""The many-machines store (storage/lake.py) against the alternatives, to choose it by numbers
(docs/storage.md):

- `count`: clips per split and language (what `voxtox query` answers most) over N clips written
  as many commits (one per night of sources), after the engine's own file merging; the peer is
  plain DuckDB over ONE Parquet file of the same rows (local, and on the S3 server);
- `commit`: the latency of one small write (one source's 50 clips) as the labelling flow commits
  it, many in a row: DuckLake (PostgreSQL catalog + S3 data, and a local catalog file + folder),
  and Delta Lake (`deltalake`,
  local and on S3) when it is installed (`pip install deltalake==1.6.6`; it is not a dependency).

Rows are the clips schema's narrow columns (ids, split, lang, duration, one probability per
class): the count reads only split and lang, and the commit cost is per transaction.

    python benchmarks/lake_scale.py --clips 1000000 --commits 200

Starts its own PostgreSQL (Debian's binaries, as the tests do) and moto S3 server on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from prefect_server import free_port, postgres_cluster  # noqa: E402

from voxtox.labels import CLASSES  # noqa: E402
from voxtox.storage import lake  # noqa: E402

COUNT_SQL = "SELECT split, lang, count(*) AS n FROM {table} GROUP BY ALL ORDER BY ALL"
SPLITS, LANGS = ("train", "val", "test"), ("en", "es", "de", "fr", "pt")
CLIPS_PER_SOURCE = 50


def clips(n: int, seed: int, key: str = "k") -> pa.Table:
    rng = np.random.default_rng(seed)
    columns: dict[str, object] = {
        "clip_id": [f"{key}-{seed}-{i}" for i in range(n)],
        "source_sha256": [f"{key}-{seed}-{i // CLIPS_PER_SOURCE}" for i in range(n)],
        "split": np.array(SPLITS)[rng.integers(0, 3, n)],
        "lang": np.array(LANGS)[rng.integers(0, 5, n)],
        "duration_s": rng.uniform(1, 10, n),
    }
    columns |= {f"prob_{c}": rng.random(n, dtype=np.float32) for c in CLASSES}
    return pa.table(columns)


def timed(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def fill_lake(target: lake.LakeTarget, n: int, commits: int) -> None:
    """N clips in `commits` appends (a night's sources each), then DuckLake's file merging."""
    with lake.connect(target) as con:
        per = n // commits
        for night in range(commits):
            rows = clips(per, night)
            con.register("rows", rows)
            if night == 0:
                con.execute("CREATE TABLE lake.clips AS SELECT * FROM rows")
            else:
                con.execute("INSERT INTO lake.clips SELECT * FROM rows")
            con.unregister("rows")
        con.execute("CALL ducklake_merge_adjacent_files('lake')")


def count_lake(target: lake.LakeTarget, repeats: int) -> float:
    """Median seconds of the count on an open read-only connection (a reader that stays open,
    as `voxtox query` in one process: extension loading and ATTACH are not in the figure)."""
    with lake.connect(target, read_only=True) as con:
        return timed(lambda: con.execute(COUNT_SQL.format(table="lake.clips")).fetchall(), repeats)


def count_parquet(path: str, repeats: int) -> float:
    with duckdb.connect() as con:
        if path.startswith("s3://"):
            lake.load_extensions(con)
            con.execute(lake.s3_secret_sql())
        return timed(lambda: con.execute(COUNT_SQL.format(table=f"read_parquet('{path}')")).fetchall(), repeats)


def lake_commits(target: lake.LakeTarget, k: int) -> float:
    """Median seconds per replace_key of one source's clips, as the labelling flow commits."""
    with lake.connect(target) as con:
        times = []
        for i in range(k):
            start = time.perf_counter()
            lake.replace_key(con, target, f"s{i}", {"clips": clips(CLIPS_PER_SOURCE, i, "c")})
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def delta_commits(uri: str, k: int, storage: dict[str, str] | None) -> float | None:
    try:
        from deltalake import write_deltalake
    except ImportError:
        return None
    times = []
    for i in range(k):
        rows = clips(CLIPS_PER_SOURCE, i, "c")
        start = time.perf_counter()
        write_deltalake(uri, rows, mode="append", storage_options=storage)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def delta_count(uri: str, n: int, commits: int, storage: dict[str, str] | None, repeats: int) -> float | None:
    try:
        from deltalake import DeltaTable, write_deltalake
    except ImportError:
        return None
    per = n // commits
    for night in range(commits):
        write_deltalake(uri, clips(per, night), mode="append", storage_options=storage)
    table = DeltaTable(uri, storage_options=storage)
    table.optimize.compact()

    with duckdb.connect() as con:
        def run() -> object:
            data = DeltaTable(uri, storage_options=storage).to_pyarrow_dataset()  # noqa: F841 (DuckDB reads it by name)
            return con.execute(COUNT_SQL.format(table="data")).fetchall()
        return timed(run, repeats)


def count_rows(base: Path, pg: str, s3: object, delta_s3: dict[str, str], args: argparse.Namespace) -> list[tuple[str, str]]:
    """The count at `args.clips` clips: one Parquet file (local, S3), DuckLake (local, PG + S3), Delta."""
    big_pg = lake.LakeTarget(pg.rsplit("/", 1)[0] + "/big", "s3://lake/clips")
    big_local = lake.LakeTarget(str(base / "big.ducklake"), str(base / "big-data"))
    whole = pa.concat_tables(clips(args.clips // args.nights, night) for night in range(args.nights))
    pq.write_table(whole, base / "one.parquet")
    s3.upload_file(str(base / "one.parquet"), "peer", "one.parquet")
    del whole
    for label, target in (("local catalog file + folder", big_local), ("PostgreSQL + S3", big_pg)):
        start = time.perf_counter()
        fill_lake(target, args.clips, args.nights)
        print(f"filled DuckLake ({label}): {time.perf_counter() - start:.1f} s", flush=True)
    peer_local = count_parquet(str(base / "one.parquet"), args.repeats)
    peer_s3 = count_parquet("s3://peer/one.parquet", args.repeats)
    lake_local = count_lake(big_local, args.repeats)
    lake_s3 = count_lake(big_pg, args.repeats)
    rows = [("count, one Parquet file, local (peer)", f"{peer_local * 1000:.0f} ms"),
            ("count, DuckLake local", f"{lake_local * 1000:.0f} ms ({lake_local / peer_local:.2f}x)"),
            ("count, one Parquet file on S3 (peer)", f"{peer_s3 * 1000:.0f} ms"),
            ("count, DuckLake PostgreSQL + S3", f"{lake_s3 * 1000:.0f} ms ({lake_s3 / peer_s3:.2f}x)")]
    for label, uri, storage in (("local", str(base / "delta"), None), ("S3", "s3://delta/clips", delta_s3)):
        found = delta_count(uri, args.clips, args.nights, storage, args.repeats)
        if found is not None:
            rows.append((f"count, Delta Lake {label} (deltalake -> DuckDB)", f"{found * 1000:.0f} ms"))
    return rows


def commit_rows(base: Path, pg: str, delta_s3: dict[str, str], args: argparse.Namespace) -> list[tuple[str, str]]:
    """The median latency of one small commit in each store."""
    small_pg = lake.LakeTarget(pg.rsplit("/", 1)[0] + "/small", "s3://small/clips")
    small_local = lake.LakeTarget(str(base / "small.ducklake"), str(base / "small-data"))
    rows = []
    for label, seconds in (
        ("commit, DuckLake local catalog file", lake_commits(small_local, args.commits)),
        ("commit, DuckLake PostgreSQL + S3", lake_commits(small_pg, args.commits)),
        ("commit, Delta Lake local", delta_commits(str(base / "delta-small"), args.commits, None)),
        ("commit, Delta Lake S3", delta_commits("s3://delta/small", args.commits, delta_s3)),
    ):
        if seconds is not None:
            rows.append((label, f"{seconds * 1000:.1f} ms median"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=1_000_000)
    parser.add_argument("--nights", type=int, default=100, help="appends that build the table")
    parser.add_argument("--commits", type=int, default=200, help="small commits timed")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from moto.server import ThreadedMotoServer
    import boto3

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    keys = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    os.environ.update(keys)
    s3 = boto3.client("s3", endpoint_url=keys["AWS_ENDPOINT_URL"], region_name="us-east-1",
                      aws_access_key_id="bench", aws_secret_access_key="bench")
    for bucket in ("lake", "peer", "delta", "small"):
        s3.create_bucket(Bucket=bucket)
    delta_s3 = {"AWS_ENDPOINT_URL": keys["AWS_ENDPOINT_URL"], "AWS_ACCESS_KEY_ID": "bench",
                "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true",
                "aws_conditional_put": "etag"}
    with tempfile.TemporaryDirectory() as tmp, postgres_cluster() as url:
        pg = url.replace("postgresql+asyncpg://", "postgresql://")
        asyncio.run(_create_databases(pg, ["big", "small"]))
        rows = count_rows(Path(tmp), pg, s3, delta_s3, args) + commit_rows(Path(tmp), pg, delta_s3, args)
    server.stop()
    print(f"\n{args.clips:,} clips in {args.nights} appends; {args.commits} commits of {CLIPS_PER_SOURCE} clips\n")
    print("| measure | result |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")


async def _create_databases(url: str, names: list[str]) -> None:
    import asyncpg

    connection = await asyncpg.connect(url)
    try:
        for name in names:
            await connection.execute(f"CREATE DATABASE {name}")
    finally:
        await connection.close()


if __name__ == "__main__":
    main()
