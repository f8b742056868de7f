"""How reading the labelled data grows with its size, before and after compaction.

Writes synthetic clips shards in the real schema (512-d float32 embeddings; tiny audio: the same
0.1 s FLAC in every row) the way the pipeline does (one `part-<source>.parquet` per source and
partition; 50 clips per source, one split and one language each, over 7 nights), then times,
against the same data in ONE Parquet file read by plain DuckDB (the peer) in the same run:

- `count`: clips per split and language (what `voxtox query` answers most);
- `top-k`: the 10 clips with the highest `prob_racism`;
- `similar`: the 10 clips whose text embedding is nearest one clip's (array_cosine_similarity);
- `voxtox query` as a command (a new process, Python start-up included) against `python -c` DuckDB;
- `load_dataset`: Hugging Face `datasets` loading the validation split (a fresh cache each time;
  it prepares every split first, so the peer is one Parquet file per split);
- `replace 1 source`: the label write path for one source (finding and rewriting its files).

    python benchmarks/catalog_scale.py                         # 10k, 100k and 1M clips
    python benchmarks/catalog_scale.py --sizes 10000 --repeats 3 --out /tmp/scale

Prints one Markdown table per size (docs/benchmarks.md). Each figure is the median of
`--repeats` runs, voxtox and the peer alternating. Needs about 5 GB of disk at 1M clips.
"""

from __future__ import annotations

import argparse
import io
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import soundfile

from voxtox.labels import CLASSES
from voxtox.storage.catalog import Catalog
from voxtox.storage.dataset_card import HF_SPLITS
from voxtox.storage.schema import clips_schema, label_column, prob_column
from voxtox.storage.shards import compact, replace_rows, shard_files, write_partitioned

DIM = 512
CLIPS_PER_SOURCE = 50
NIGHTS = 7
LANGS = ("en", "es", "de", "fr", "pt")
SQL = {
    "count": "SELECT split, lang, count(*) AS n FROM clips GROUP BY ALL ORDER BY ALL",
    "top-k": "SELECT clip_id, prob_racism FROM clips ORDER BY prob_racism DESC LIMIT 10",
    "similar": "SELECT clip_id, array_cosine_similarity(text_embedding, (SELECT text_embedding FROM clips "
               "WHERE clip_id = 'c0000000000-0000')) AS sim FROM clips ORDER BY sim DESC LIMIT 10",
}


def tiny_flac() -> bytes:
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).normal(scale=0.01, size=1600).astype(np.float32)
    soundfile.write(buffer, noise, 16_000, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def source_table(index: int, rng: np.random.Generator, audio: bytes) -> pa.Table:
    """One source's clips in the clips schema plus `split` and `date` (as write_partitioned takes them)."""
    n = CLIPS_PER_SOURCE
    split = str(rng.choice(["train", "val", "test"], p=[0.8, 0.1, 0.1]))
    lang = LANGS[index % len(LANGS)]
    day = (datetime(2026, 11, 1, tzinfo=UTC) + timedelta(days=index % NIGHTS))
    starts = np.arange(n, dtype=np.float64) * 3.0
    probs = rng.random((n, len(CLASSES)), dtype=np.float32)
    embedding = rng.normal(size=(n, DIM)).astype(np.float32)
    embedding /= np.linalg.norm(embedding, axis=1, keepdims=True)
    key = f"c{index:010d}"
    schema = clips_schema(DIM)
    columns = {
        "clip_id": pa.array([f"{key}-{i:04d}" for i in range(n)]),
        "source_sha256": pa.array([key] * n),
        "source_uri": pa.array([f"s3://voice/{key}.ogg"] * n),
        "segment_kind": pa.array(["sentence"] * n),
        "start_s": pa.array(starts),
        "end_s": pa.array(starts + 2.5),
        "duration_s": pa.array(np.full(n, 2.5)),
        "lang": pa.array([lang] * n),
        "lang_prob": pa.array(np.full(n, 0.9, np.float32)),
        "transcript": pa.array([f"line {i} of {key}" for i in range(n)]),
        "asr_avg_logprob": pa.array(np.full(n, -0.3, np.float32)),
        "asr_no_speech_prob": pa.array(np.full(n, 0.01, np.float32)),
        "asr_compression_ratio": pa.array(np.full(n, 1.2, np.float32)),
        **{prob_column(c): pa.array(probs[:, i]) for i, c in enumerate(CLASSES)},
        **{label_column(c): pa.array(probs[:, i] > 0.5) for i, c in enumerate(CLASSES)},
        "asr_model": pa.array(["whisper-base"] * n),
        "labeller_model": pa.array(["voxtox-labeller"] * n),
        "text_encoder_model": pa.array(["usem3"] * n),
        "text_embedding": pa.FixedSizeListArray.from_arrays(pa.array(embedding.ravel()), DIM),
        "audio": pa.array([{"bytes": audio, "path": f"{key}-{i}.flac"} for i in range(n)], schema.field("audio").type),
        "labelled_at": pa.array([day] * n, pa.timestamp("us", tz="UTC")),
        "run_id": pa.array([f"run-{index % NIGHTS}"] * n),
    }
    table = pa.table(columns, schema=schema)
    return table.append_column("split", pa.array([split] * n)).append_column(
        "date", pa.array([day.date().isoformat()] * n))


def write_shards(data_dir: Path, n_clips: int) -> tuple[float, Catalog]:
    rng = np.random.default_rng(n_clips)
    audio = tiny_flac()
    started = time.perf_counter()
    for index in range(n_clips // CLIPS_PER_SOURCE):
        table = source_table(index, rng, audio)
        write_partitioned(data_dir / "shards", "clips", table, table["source_sha256"][0].as_py())
    catalog = Catalog(data_dir / "catalog.duckdb", data_dir / "shards")
    catalog.refresh_views()
    return time.perf_counter() - started, catalog


def one_file(catalog: Catalog, path: Path) -> None:
    """The peer's data: every clip in one Parquet file (zstd), partition columns inside it."""
    with catalog.connect() as con:
        con.execute(f"COPY (SELECT * FROM clips) TO '{path}' (FORMAT parquet, COMPRESSION zstd)")


def median_time(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def paired(voxtox: Callable[[], object], peer: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Medians of alternating runs, so both see the same machine load."""
    ours, theirs = [], []
    for _ in range(repeats):
        ours.append(median_time(voxtox, 1))
        theirs.append(median_time(peer, 1))
    return statistics.median(ours), statistics.median(theirs)


def peer_query(path: Path, sql: str) -> Callable[[], object]:
    def run() -> object:
        with duckdb.connect() as con:
            con.execute(f"CREATE VIEW clips AS SELECT * REPLACE (text_embedding::FLOAT[{DIM}] AS text_embedding) "
                        f"FROM read_parquet('{path}')")
            return con.sql(sql).to_arrow_table()
    return run


def cli_query(data_dir: Path) -> Callable[[], object]:
    voxtox = str(Path(sys.executable).with_name("voxtox"))
    return lambda: subprocess.run([voxtox, "query", "--format", "csv", "--data-dir", str(data_dir), SQL["count"]],
                                  check=True, capture_output=True)


def cli_peer(path: Path) -> Callable[[], object]:
    code = ("import duckdb, sys; duckdb.sql(\"SELECT split, lang, count(*) AS n FROM read_parquet('" + str(path)
            + "') GROUP BY ALL ORDER BY ALL\").write_csv('/dev/null')")
    return lambda: subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def load_split(clips_dir: Path, data_files: dict[str, str] | None = None) -> Callable[[], object]:
    """`load_dataset(..., split="validation")`: datasets prepares every split first, so the peer
    is the same data as one Parquet file per split."""
    import datasets

    datasets.disable_progress_bars()

    def run() -> object:
        cache = tempfile.mkdtemp(prefix="hf-cache-")
        try:
            if data_files is None:
                return datasets.load_dataset(str(clips_dir), split="validation", cache_dir=cache)
            return datasets.load_dataset("parquet", data_files=data_files, split="validation", cache_dir=cache)
        finally:
            shutil.rmtree(cache, ignore_errors=True)
    return run


def replace_one(catalog: Catalog) -> Callable[[], object]:
    table = source_table(3, np.random.default_rng(3), tiny_flac())
    return lambda: replace_rows(catalog.shards_root, "clips", "c0000000003", table)


def measure(catalog: Catalog, peer_file: Path, split_files: dict[str, str], repeats: int) -> dict[str, tuple[float, float]]:
    rows = {name: paired(lambda s=sql: catalog.read_only_query(s), peer_query(peer_file, sql), repeats)
            for name, sql in SQL.items()}
    rows["`voxtox query` (count, new process)"] = paired(cli_query(catalog.base), cli_peer(peer_file), repeats)
    rows["load_dataset (validation)"] = paired(load_split(catalog.shards_root / "clips"),
                                              load_split(catalog.shards_root, split_files), 1)
    rows["replace 1 source"] = (median_time(replace_one(catalog), repeats), float("nan"))
    return rows


def run_size(n_clips: int, out: Path, repeats: int, target_mb: int) -> None:
    data_dir = out / f"clips-{n_clips}"
    shutil.rmtree(data_dir, ignore_errors=True)
    write_s, catalog = write_shards(data_dir, n_clips)
    peer_file = data_dir / "one.parquet"
    one_file(catalog, peer_file)
    split_files = {name: str(data_dir / f"one-{split}.parquet") for split, name in HF_SPLITS.items()}
    with catalog.connect() as con:
        for split, name in HF_SPLITS.items():
            con.execute(f"COPY (SELECT * EXCLUDE (split, date) FROM clips WHERE split = '{split}') "
                        f"TO '{split_files[name]}' (FORMAT parquet, COMPRESSION zstd)")
    files_before = len(shard_files(catalog.shards_root, "clips"))
    before = measure(catalog, peer_file, split_files, repeats)
    started = time.perf_counter()
    compact(catalog.shards_root, ["clips"], target_bytes=target_mb << 20)
    compact_s = time.perf_counter() - started
    files_after = len(shard_files(catalog.shards_root, "clips"))
    after = measure(catalog, peer_file, split_files, repeats)
    size_mb = sum(p.stat().st_size for p in shard_files(catalog.shards_root, "clips")) / 2**20
    print(f"\n### {n_clips:,} clips: {files_before:,} files before compaction, {files_after:,} after "
          f"({size_mb:,.0f} MB; written in {write_s:.0f} s, compacted in {compact_s:.1f} s)\n")
    print("| query | before compaction (s) | after compaction (s) | one Parquet file, DuckDB (s) | after / one file |")
    print("|---|---|---|---|---|")
    for name in before:
        (ours_before, _), (ours_after, peer) = before[name], after[name]
        ratio = "-" if np.isnan(peer) else f"{ours_after / peer:.2f}×"
        peer_text = "-" if np.isnan(peer) else f"{peer:.3f}"
        print(f"| {name} | {ours_before:.3f} | {ours_after:.3f} | {peer_text} | {ratio} |")
    sys.stdout.flush()
    shutil.rmtree(data_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--target-mb", type=int, default=128, help="compaction's file size (settings: compact.target_file_mb)")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "voxtox-catalog-scale")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {platform.processor() or platform.system()}; duckdb {duckdb.__version__}; "
          f"{CLIPS_PER_SOURCE} clips per source over {NIGHTS} nights, {DIM}-d embeddings, "
          f"{len(tiny_flac())}-byte FLAC per clip")
    for n_clips in args.sizes:
        run_size(n_clips, args.out, args.repeats, args.target_mb)


if __name__ == "__main__":
    main()
