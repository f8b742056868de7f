"""The labelled data as other tools read it: copies of a data dir, DuckDB's types, compaction that
keeps reruns idempotent and readers consistent, and Hugging Face `datasets` on the clips folder."""

from __future__ import annotations

import io
import shutil
import threading
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile

from conftest import synthetic_clips
from voxtox.storage.catalog import Catalog
from voxtox.storage.shards import (
    COMPACT_PREFIX,
    compact,
    files_holding,
    key_rows,
    merge_files,
    replace_rows,
    rewrite_without,
    shard_files,
)

SPLITS = ("train", "val", "test")


def clips_of(key: str, split: str, n: int, seed: int) -> pa.Table:
    """`n` synthetic clips of one source (ids unique to it), in the real clips schema."""
    table = synthetic_clips(n, split, seed)
    ids = pa.array([f"{key}-{i:03d}" for i in range(n)])
    return table.set_column(table.schema.get_field_index("clip_id"), "clip_id", ids).set_column(
        table.schema.get_field_index("source_sha256"), "source_sha256", pa.array([key] * n)
    )


def data_dir_with_sources(root: Path, per_split: int = 4, n: int = 3) -> Catalog:
    """`per_split` sources of `n` clips in each split, one part file per source, as labelling writes."""
    shards = root / "shards"
    for s_index, split in enumerate(SPLITS):
        for i in range(per_split):
            replace_rows(shards, "clips", f"{split}{i}", clips_of(f"{split}{i}", split, n, 10 * s_index + i))
    catalog = Catalog(root / "catalog.duckdb", shards)
    catalog.refresh_views()
    return catalog


def counts(catalog: Catalog) -> dict[str, int]:
    rows = catalog.query("SELECT split, count(*) AS n FROM clips GROUP BY split").to_pylist()
    return {row["split"]: row["n"] for row in rows}


def test_a_copied_data_dir_reads_its_own_shards(tmp_path: Path) -> None:
    original = tmp_path / "original"
    data_dir_with_sources(original)
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    shutil.rmtree(copy / "shards" / "clips" / "split=val")
    assert counts(Catalog(copy / "catalog.duckdb", copy / "shards")) == {"train": 12, "test": 12}
    # Another DuckDB client opening the copy's catalog file, from the copy (its documented use):
    # the views' globs are relative, so they read the copy, never the original.
    with duckdb.connect(str(copy / "catalog.duckdb"), read_only=True, config={"file_search_path": str(copy)}) as con:
        assert dict(con.execute("SELECT split, count(*) FROM clips GROUP BY 1").fetchall()) == {"train": 12, "test": 12}
    assert counts(Catalog(original / "catalog.duckdb", original / "shards"))["val"] == 12


def test_embeddings_are_fixed_size_arrays_in_duckdb(tmp_path: Path) -> None:
    catalog = data_dir_with_sources(tmp_path, per_split=1)
    (kind,) = catalog.query("SELECT DISTINCT typeof(text_embedding) AS t FROM clips")["t"].to_pylist()
    assert kind == "FLOAT[16]"
    nearest = catalog.query(  # the README's "clips that sound like this one" query, without a cast
        "SELECT b.clip_id, array_cosine_similarity(a.text_embedding, b.text_embedding) AS sim "
        "FROM clips a, clips b WHERE a.clip_id = 'train0-000' ORDER BY sim DESC LIMIT 1"
    ).to_pylist()
    assert nearest == [{"clip_id": "train0-000", "sim": pytest.approx(1.0)}]


def clip_rows(catalog: Catalog) -> list[dict]:
    return catalog.query("SELECT clip_id, split, lang, transcript, duration_s FROM clips ORDER BY clip_id").to_pylist()


def test_compaction_merges_each_partition_and_a_rerun_does_nothing(tmp_path: Path) -> None:
    catalog = data_dir_with_sources(tmp_path)
    before = clip_rows(catalog)
    assert len(shard_files(catalog.shards_root, "clips")) == 12
    (result,) = compact(catalog.shards_root, ["clips"])
    assert (result.files_before, result.files_after, result.merged, result.skipped) == (12, 3, 12, 0)
    assert clip_rows(catalog) == before
    files = shard_files(catalog.shards_root, "clips")
    assert all(path.name.startswith(COMPACT_PREFIX) for path in files)
    train = next(path for path in files if "split=train" in str(path))
    assert key_rows(train) == tuple((f"train{i}", 3) for i in range(4))  # which rows are whose
    (again,) = compact(catalog.shards_root, ["clips"])
    assert (again.files_before, again.files_after, again.merged) == (3, 3, 0)


def test_relabelling_a_source_after_compaction_replaces_its_rows(tmp_path: Path) -> None:
    catalog = data_dir_with_sources(tmp_path)
    compact(catalog.shards_root, ["clips"])
    relabelled = clips_of("train2", "train", 2, 99)  # the rerun gives other rows for the source
    replace_rows(catalog.shards_root, "clips", "train2", relabelled)
    rows = catalog.query("SELECT source_sha256, count(*) AS n FROM clips WHERE split = 'train' GROUP BY 1 ORDER BY 1")
    assert rows.to_pylist() == [{"source_sha256": k, "n": 2 if k == "train2" else 3} for k in ("train0", "train1", "train2", "train3")]
    compact(catalog.shards_root, ["clips"])  # the new part file joins the compacted one
    assert counts(catalog) == {"train": 11, "val": 12, "test": 12}
    assert len(shard_files(catalog.shards_root, "clips")) == 3


def test_rewrite_without_drops_exactly_those_sources_rows(tmp_path: Path) -> None:
    catalog = data_dir_with_sources(tmp_path)
    compact(catalog.shards_root, ["clips"])
    root = catalog.shards_root
    holding = files_holding(root, "clips", {"val1", "test3"})
    assert len(holding) == 2
    rewrite_without(root, holding, {"val1", "test3"})
    ids = catalog.query("SELECT clip_id FROM clips")["clip_id"].to_pylist()
    assert len(ids) == 36 - 6 and not any(i.startswith(("val1-", "test3-")) for i in ids)
    assert files_holding(root, "clips", {"val1", "test3"}) == []


def test_a_merge_whose_input_changed_meanwhile_is_abandoned(tmp_path: Path, monkeypatch) -> None:
    """A label run replacing a source while compaction reads it: the compaction must not bring
    the old rows back; it leaves the partition for next time."""
    from voxtox.storage import shards

    catalog = data_dir_with_sources(tmp_path, per_split=3)
    directory = next(p.parent for p in shard_files(catalog.shards_root, "clips") if "split=train" in str(p))
    streamed = shards._stream_into

    def stream_then_relabel(*args: object) -> None:
        streamed(*args)
        replace_rows(catalog.shards_root, "clips", "train1", clips_of("train1", "train", 1, 5))

    monkeypatch.setattr(shards, "_stream_into", stream_then_relabel)
    assert merge_files(catalog.shards_root, sorted(directory.glob("*.parquet")), 1 << 20) is None
    assert counts(catalog)["train"] == 3 + 1 + 3
    assert not list(directory.glob(f"{COMPACT_PREFIX}*")) and not list(directory.glob(".*.tmp"))


def test_a_crash_between_swap_and_delete_is_finished_before_anyone_reads(tmp_path: Path, monkeypatch) -> None:
    """The swap is journalled (storage/swaps.py): the next holder of the shards lock, a reader
    included, finishes it, so the merged files and their inputs are never counted together."""
    from voxtox.storage import shards

    catalog = data_dir_with_sources(tmp_path)
    original_unlink = Path.unlink

    def die_on_delete(self: Path, missing_ok: bool = False) -> None:
        if self.name.startswith("part-"):
            raise KeyboardInterrupt("killed after the rename")
        original_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", die_on_delete)
    with pytest.raises(KeyboardInterrupt):
        shards.compact(catalog.shards_root, ["clips"])
    monkeypatch.setattr(Path, "unlink", original_unlink)
    assert counts(catalog) == {"train": 12, "val": 12, "test": 12}
    compact(catalog.shards_root, ["clips"])
    assert counts(catalog) == {"train": 12, "val": 12, "test": 12}


def test_readers_see_whole_tables_while_sources_are_replaced_and_compacted(tmp_path: Path) -> None:
    """voxtox's readers (queries, training, `voxtox query`) against a label run's replacements
    and a compaction in another thread: every count is the whole table."""
    catalog = data_dir_with_sources(tmp_path, per_split=2, n=4)
    stop = threading.Event()
    seen: list[int] = []

    def writer() -> None:
        round_ = 0
        while not stop.is_set() and round_ < 15:
            for key in ("train0", "val1"):
                replace_rows(catalog.shards_root, "clips", key, clips_of(key, key[:-1], 4, round_))
            if round_ % 5 == 4:
                compact(catalog.shards_root, ["clips"])
            round_ += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while thread.is_alive():
            seen.append(catalog.query("SELECT count(*) AS n FROM clips")["n"][0].as_py())
    finally:
        stop.set()
        thread.join()
    assert len(seen) > 5 and set(seen) == {24}


def test_datasets_loads_the_clips_folder_with_its_splits_audio_and_language(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    datasets = pytest.importorskip("datasets")  # a pinned test dependency (pyproject.toml [test])

    catalog = data_dir_with_sources(tmp_path / "data", per_split=2, n=3)
    compact(catalog.shards_root, ["clips"])
    assert sum(counts(catalog).values()) == 18  # a query leaves its schema cache in the folder
    loaded = datasets.load_dataset(str(catalog.shards_root / "clips"), cache_dir=str(tmp_path / "hf-cache"))
    assert {name: len(split) for name, split in loaded.items()} == {"train": 6, "validation": 6, "test": 6}
    features = loaded["validation"].features
    assert features["audio"] == datasets.Audio(sampling_rate=16_000)
    assert set(loaded["test"]["lang"]) == {"en"}
    assert features["text_embedding"].length == 16
    # datasets >= 4 decodes Audio with torchcodec, whose PyPI wheels need a CUDA build of torch
    # (README: "Hugging Face datasets"); the stored FLAC is what any decoder gets.
    raw = loaded["validation"].cast_column("audio", datasets.Audio(decode=False))[0]["audio"]
    samples, rate = soundfile.read(io.BytesIO(raw["bytes"]))
    assert rate == 16_000 and samples.ndim == 1 and len(samples) > 16_000 * 0.9


def test_shards_of_the_previous_schema_still_read(tmp_path: Path) -> None:
    """Files written before `lang` moved into them (lang only in the folder name) and new ones,
    side by side and compacted together."""
    catalog = data_dir_with_sources(tmp_path, per_split=1)
    old = clips_of("old0", "train", 2, 7).drop_columns(["lang"])
    directory = next(p.parent for p in shard_files(catalog.shards_root, "clips") if "split=train" in str(p))
    pq.write_table(old.drop_columns(["split", "date"]), directory / "part-old0.parquet")
    langs = catalog.query("SELECT lang, count(*) AS n FROM clips WHERE split = 'train' GROUP BY 1").to_pylist()
    assert langs == [{"lang": "en", "n": 5}]
    compact(catalog.shards_root, ["clips"])
    (merged,) = directory.glob("*.parquet")
    assert pq.read_table(merged, columns=["lang"])["lang"].to_pylist() == ["en"] * 5  # from the folder name


def test_a_file_of_another_schema_added_after_a_query_still_reads(tmp_path: Path) -> None:
    """Queries skip `union_by_name` while every file has one schema, which the catalog remembers
    per file (storage/catalog.uniform_schema); a file of another schema arriving later must turn
    it back on, whichever file DuckDB happens to bind first."""
    catalog = data_dir_with_sources(tmp_path, per_split=1)
    assert counts(catalog) == {"train": 3, "val": 3, "test": 3}  # the schemas are now remembered
    directory = next(p.parent for p in shard_files(catalog.shards_root, "clips") if "split=train" in str(p))
    newer = clips_of("new0", "train", 2, 8).append_column("speaker", pa.array(["s1", "s2"]))
    pq.write_table(newer.drop_columns(["split", "date"]), directory / "part-new0.parquet")
    old = clips_of("aaa0", "train", 1, 9).drop_columns(["lang"])  # sorts first: bound first
    pq.write_table(old.drop_columns(["split", "date"]), directory / "part-aaa0.parquet")
    rows = catalog.query("SELECT source_sha256 AS s, lang, speaker FROM clips WHERE split = 'train' ORDER BY clip_id")
    assert rows.to_pylist() == [{"s": "aaa0", "lang": "en", "speaker": None}] + [
        {"s": "new0", "lang": "en", "speaker": s} for s in ("s1", "s2")
    ] + [{"s": "train0", "lang": "en", "speaker": None}] * 3


def test_a_source_erased_from_a_compacted_file_leaves_the_others_replaceable(tmp_path: Path) -> None:
    """`voxtox forget` (storage/erasure.py) removes a recording's rows from a compacted file; the
    file's list of which rows are whose must shrink with them, or a later replacement of another
    source would cut the wrong rows. Labelled again, the erased source stays after compaction."""
    from voxtox.storage.erasure import RecordingRows, erase_rows

    catalog = data_dir_with_sources(tmp_path)
    root = catalog.shards_root
    compact(root, ["clips"])
    erase_rows(shard_files(root, "clips"), RecordingRows(frozenset({"train1"})))
    replace_rows(root, "clips", "train2", clips_of("train2", "train", 1, 5))
    replace_rows(root, "clips", "train1", clips_of("train1", "train", 2, 6))  # --allow-forgotten
    compact(root, ["clips"])
    rows = catalog.query("SELECT source_sha256 AS s, count(*) AS n FROM clips WHERE split = 'train' GROUP BY 1 ORDER BY 1")
    assert rows.to_pylist() == [{"s": "train0", "n": 3}, {"s": "train1", "n": 2}, {"s": "train2", "n": 1}, {"s": "train3", "n": 3}]
