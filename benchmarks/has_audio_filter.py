"""Which clips still have their audio (retention drops it): testing the whole `audio` struct for
NULL against testing its small `path` field (storage/schema.py HAS_AUDIO), on clips shards with
incompressible audio bytes, in one run. Prints a Markdown table for docs/benchmarks.md.

    python benchmarks/has_audio_filter.py                       # 8 files x 2,000 clips x 40 kB
    python benchmarks/has_audio_filter.py --clips 500 --files 2 # quick
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from voxtox.storage.schema import AUDIO_TYPE, HAS_AUDIO
from voxtox.storage.parquet import write_parquet_atomic

CONDITIONS = {"audio IS NOT NULL (the whole struct)": "audio IS NOT NULL", f"{HAS_AUDIO} (voxtox)": HAS_AUDIO}


def write_shards(directory: Path, files: int, clips: int, audio_bytes: int) -> int:
    """Clips shards like a labelled corpus: random (incompressible) audio, a quarter of it dropped."""
    total = 0
    for number in range(files):
        audio = pa.array([{"bytes": os.urandom(audio_bytes), "path": f"{number}-{i}.flac"} for i in range(clips)], AUDIO_TYPE)
        dropped = pa.array([i % 4 == 0 for i in range(clips)])
        audio = pc.if_else(dropped, pa.nulls(clips, AUDIO_TYPE), audio)
        table = pa.table({"clip_id": [f"{number}-{i}" for i in range(clips)], "duration_s": [2.5] * clips, "audio": audio})
        total += write_parquet_atomic(table, directory / f"part-{number}.parquet").stat().st_size
    return total


def best_of(con: duckdb.DuckDBPyConnection, sql: str, repeats: int) -> tuple[float, int]:
    times, count = [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        count = con.execute(sql).fetchone()[0]
        times.append(time.perf_counter() - started)
    return min(times), count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--clips", type=int, default=2000, help="clips per file")
    parser.add_argument("--audio-bytes", type=int, default=40_000, help="encoded audio per clip (40 kB: ~2.5 s of FLAC)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="voxtox-has-audio-") as tmp:
        size = write_shards(Path(tmp), args.files, args.clips, args.audio_bytes)
        source = f"read_parquet('{tmp}/*.parquet')"
        print(f"{args.files} files x {args.clips} clips, {size / 2**20:.0f} MiB; best of {args.repeats}; "
              f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs\n")
        print("| condition | clips with audio | best s | vs voxtox |\n| --- | ---: | ---: | ---: |")
        with duckdb.connect() as con:
            rows = {name: best_of(con, f"SELECT count(*) FROM {source} WHERE {sql}", args.repeats)
                    for name, sql in CONDITIONS.items()}
        ours = rows[f"{HAS_AUDIO} (voxtox)"][0]
        for name, (seconds, count) in rows.items():
            print(f"| `{name}` | {count} | {seconds:.4f} | {seconds / ours:.0f}× |")


if __name__ == "__main__":
    main()
