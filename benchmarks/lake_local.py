"""The embedded lake (storage/lake.py, docs/storage.md): several processes of one host writing one
lake at once, by catalog, and what a year of nightly commits leaves in files per table.

- `writers`: W writer processes, each committing K sources (one commit of 50 clips each, as the
  labelling flow commits them, voxtox's commits row included), while one reader process counts
  clips and sources in a loop; catalogs: SQLite file (the embedded lake), PostgreSQL (the
  many-machines one, here with a local data folder), and a DuckDB file (one process only: the
  reader cannot attach while the writer holds it, which is why the embedded lake is SQLite). Reports commits per
  second over all writers, the median and 95th percentile commit latency, retried commits, and
  the reader's queries (all must answer).
- `nights`: N simulated nights on the SQLite lake, each one commit per source (S sources), then
  `voxtox compact`'s merge (lake.compact); reports data files per table before and after, and the
  count's latency before and after.

    python benchmarks/lake_local.py --writers 2 --commits 40 --nights 365 --sources 4
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from prefect_server import postgres_cluster  # noqa: E402

from voxtox.storage import lake  # noqa: E402

CLIPS_PER_SOURCE = 50


def source_rows(key: str, seed: int) -> dict[str, pa.Table]:
    """One source's clips (narrow columns) and its `sources` row, as one commit writes them."""
    rng = np.random.default_rng(seed)
    clips = pa.table({"clip_id": [f"{key}-{i}" for i in range(CLIPS_PER_SOURCE)],
                      "source_sha256": [key] * CLIPS_PER_SOURCE,
                      "split": np.array(["train", "val", "test"])[rng.integers(0, 3, CLIPS_PER_SOURCE)],
                      "lang": np.array(["en", "es", "de"])[rng.integers(0, 3, CLIPS_PER_SOURCE)],
                      "prob": rng.random(CLIPS_PER_SOURCE, dtype=np.float32)})
    return {"clips": clips, "sources": pa.table({"source_sha256": [key], "n_clips": [CLIPS_PER_SOURCE]})}


def writer(target: lake.LakeTarget, name: str, k: int, start, results) -> None:  # noqa: ANN001
    """Commit `k` sources; put (latencies, attempts) or the error's first line on `results`."""
    try:
        with lake.connect(target) as con:
            start.wait(120)
            latencies, attempts = [], 0
            for i in range(k):
                began = time.perf_counter()
                attempts += lake.replace_key(con, target, f"{name}-{i}", source_rows(f"{name}-{i}", i))
                latencies.append(time.perf_counter() - began)
        results.put((latencies, attempts))
    except (duckdb.Error, lake.LakeError) as error:
        results.put(str(error).strip().splitlines()[0])


def reader(target: lake.LakeTarget, stop, results) -> None:  # noqa: ANN001
    """Count clips and sources in one transaction, over and over, on one connection (attached
    again after a failure); put (answers, failures, torn: counts of half a commit)."""
    answers = failures = torn = 0
    while not stop.is_set():
        try:
            with lake.connect(target, read_only=True) as con:
                while not stop.is_set():
                    con.execute("BEGIN")
                    clips, sources = con.execute("SELECT (SELECT count(*) FROM lake.clips), "
                                                 "(SELECT count(*) FROM lake.sources)").fetchone()
                    con.execute("COMMIT")
                    answers += 1
                    torn += clips != CLIPS_PER_SOURCE * sources
                    time.sleep(0.05)
        except (duckdb.Error, lake.LakeError):
            failures += 1
            time.sleep(0.05)
    results.put((answers, failures, torn))


def concurrent(target: lake.LakeTarget, writers: int, k: int) -> dict[str, object]:
    """`writers` processes committing `k` sources each, and a reader, on one lake."""
    with lake.connect(target) as con:  # the tables exist before the clock starts
        lake.replace_key(con, target, "first", source_rows("first", 0))
    context = multiprocessing.get_context("spawn")
    start, stop, results, read = context.Barrier(writers + 1), context.Event(), context.Queue(), context.Queue()
    procs = [context.Process(target=writer, args=(target, f"w{w}", k, start, results)) for w in range(writers)]
    watcher = context.Process(target=reader, args=(target, stop, read))
    for proc in [*procs, watcher]:
        proc.start()
    start.wait(120)
    began = time.perf_counter()
    outcomes = [results.get(timeout=900) for _ in procs]
    wall = time.perf_counter() - began
    stop.set()
    answers, failures, torn = read.get(timeout=120)
    for proc in [*procs, watcher]:
        proc.join(60)
    errors = [o for o in outcomes if isinstance(o, str)]
    latencies = sorted(x for o in outcomes if not isinstance(o, str) for x in o[0])
    attempts = sum(o[1] for o in outcomes if not isinstance(o, str))
    return {"errors": errors, "commits": len(latencies), "per_s": len(latencies) / wall if latencies else 0.0,
            "median_ms": 1000 * statistics.median(latencies) if latencies else None,
            "p95_ms": 1000 * latencies[int(0.95 * (len(latencies) - 1))] if latencies else None,
            "retries": attempts - len(latencies), "reads": answers, "read_failures": failures, "torn": torn}


def nights(target: lake.LakeTarget, n: int, sources: int) -> list[tuple[str, str]]:
    """`n` nights of `sources` commits each, then the merge: files per table and the count."""
    count = "SELECT split, lang, count(*) FROM lake.clips GROUP BY ALL"
    with lake.connect(target) as con:
        began = time.perf_counter()
        for night in range(n):
            for s in range(sources):
                key = f"n{night}-s{s}"
                lake.replace_key(con, target, key, source_rows(key, night * sources + s))
        filled = time.perf_counter() - began
        before_ms = 1000 * min(_timed(con, count) for _ in range(5))
        began = time.perf_counter()
        files = lake.compact(con, target)
        merge_s = time.perf_counter() - began
        after_ms = 1000 * min(_timed(con, count) for _ in range(5))
        on_disk = _files_on_disk(target)
        # what a scheduled snapshot expiry would do (not scheduled yet: docs/storage.md)
        con.execute(f"CALL ducklake_expire_snapshots('{lake.ALIAS}', older_than => now())")
        con.execute(f"CALL ducklake_cleanup_old_files('{lake.ALIAS}', cleanup_all => true)")
    rows = [(f"{n} nights x {sources} commits", f"{filled:.1f} s ({1000 * filled / (n * sources):.0f} ms/commit)")]
    rows += [(f"data files of {table} the snapshot reads: before -> after merge", f"{b} -> {a}")
             for table, (b, a) in files.items()]
    rows += [("merge (voxtox compact)", f"{merge_s:.1f} s"),
             ("count per split and language, before -> after", f"{before_ms:.0f} ms -> {after_ms:.0f} ms"),
             ("Parquet files on disk after the merge -> after expiring old snapshots",
              f"{on_disk} -> {_files_on_disk(target)}")]
    return rows


def _files_on_disk(target: lake.LakeTarget) -> int:
    return sum(1 for _ in Path(target.data_url).rglob("*.parquet"))


def _timed(con: duckdb.DuckDBPyConnection, sql: str) -> float:
    began = time.perf_counter()
    con.execute(sql).fetchall()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument("--commits", type=int, default=40, help="commits per writer")
    parser.add_argument("--nights", type=int, default=365)
    parser.add_argument("--sources", type=int, default=4, help="commits per night")
    parser.add_argument("--only-nights", action="store_true", help="skip the writers' part")
    args = parser.parse_args()
    rows: list[tuple[str, str]] = []
    if args.only_nights:
        with tempfile.TemporaryDirectory() as tmp:
            rows = nights(lake.LakeTarget(str(Path(tmp) / "year.sqlite"), str(Path(tmp) / "year")), args.nights,
                          args.sources)
        _print(rows)
        return
    with tempfile.TemporaryDirectory() as tmp, postgres_cluster() as url:
        base = Path(tmp)
        pg = url.replace("postgresql+asyncpg://", "postgresql://")
        asyncio.run(_create_database(pg, "bench"))
        catalogs = {"SQLite file (embedded lake)": lake.LakeTarget(str(base / "c.sqlite"), str(base / "d1")),
                    "PostgreSQL": lake.LakeTarget(pg.rsplit("/", 1)[0] + "/bench", str(base / "d2")),
                    "DuckDB file": lake.LakeTarget(str(base / "c.ducklake"), str(base / "d3"))}
        for label, target in catalogs.items():
            # a DuckDB-file catalog admits one process: a second writer could not even attach
            for w in [1] if label == "DuckDB file" else sorted({1, args.writers}):
                found = concurrent(target, w, args.commits)
                rows.append((f"{label}, {w} writer(s) + 1 reader", _describe(found)))
                print(rows[-1], flush=True)
        rows += nights(lake.LakeTarget(str(base / "year.sqlite"), str(base / "year")), args.nights, args.sources)
    print(f"\n{args.commits} commits of {CLIPS_PER_SOURCE} clips per writer")
    _print(rows)


def _print(rows: list[tuple[str, str]]) -> None:
    print("\n| measure | result |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")


def _describe(found: dict[str, object]) -> str:
    if found["errors"]:
        return f"{found['commits']} commits; writer failed: {found['errors'][0][:160]}"
    return (f"{found['per_s']:.1f} commits/s, median {found['median_ms']:.0f} ms, p95 {found['p95_ms']:.0f} ms, "
            f"{found['retries']} retried; reader {found['reads']} counts, {found['read_failures']} failed, "
            f"{found['torn']} torn")


async def _create_database(url: str, name: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(url)
    try:
        await connection.execute(f"CREATE DATABASE {name}")
    finally:
        await connection.close()


if __name__ == "__main__":
    main()
