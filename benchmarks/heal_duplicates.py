"""What healing duplicates by id (storage/heal.py) adds to a compaction: one scan of `clip_id` and
`labelled_at` over every clips file, timed beside the compaction of the same shards, in one run.
Prints a Markdown table for docs/benchmarks.md.

    python benchmarks/heal_duplicates.py                        # 1,000 files x 100 clips x 20 kB
    python benchmarks/heal_duplicates.py --files 50 --clips 20  # quick
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from voxtox.storage.heal import heal_duplicates
from voxtox.storage.schema import AUDIO_TYPE
from voxtox.storage.shards import compact, write_parquet_atomic


def write_clips(shards: Path, files: int, clips: int, audio_bytes: int) -> int:
    """One part file per source, as labelling writes them, in one partition: random audio."""
    directory = shards / "clips" / "split=train" / "lang=en" / "date=2026-01-01"
    total = 0
    for number in range(files):
        audio = pa.array([{"bytes": os.urandom(audio_bytes), "path": f"{number}-{i}.flac"} for i in range(clips)], AUDIO_TYPE)
        table = pa.table({
            "clip_id": [f"{number:06d}-{i:04d}" for i in range(clips)],
            "source_sha256": [f"{number:024d}"] * clips,
            "labelled_at": pa.array([datetime(2026, 1, 1, tzinfo=UTC)] * clips, pa.timestamp("us", tz="UTC")),
            "audio": audio,
        })
        total += write_parquet_atomic(table, directory / f"part-{number:024d}.parquet").stat().st_size
    return total


def timed(action) -> float:  # noqa: ANN001
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--clips", type=int, default=100, help="clips per file")
    parser.add_argument("--audio-bytes", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="voxtox-heal-") as tmp:
        shards = Path(tmp)
        size = write_clips(shards, args.files, args.clips, args.audio_bytes)
        print(f"{args.files} files x {args.clips} clips, {size / 2**20:.0f} MiB; "
              f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs\n")
        print("| step | files | seconds |")
        print("|---|---|---|")
        print(f"| heal duplicates (scan of ids), before compaction | {args.files} | {timed(lambda: heal_duplicates(shards, ['clips'])):.2f} |")
        compaction = timed(lambda: compact(shards, ["clips"]))
        print(f"| compaction of the same files | {args.files} | {compaction:.2f} |")
        after = len(list((shards / "clips").rglob("*.parquet")))
        print(f"| heal duplicates, after compaction | {after} | {timed(lambda: heal_duplicates(shards, ['clips'])):.2f} |")


if __name__ == "__main__":
    main()
