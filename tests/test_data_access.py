"""The labelled data as other tools read it: the embedded lake every data dir holds (a copy of
the dir reads its own), DuckDB's types and a plain DuckDB client attaching it, compaction that
keeps relabelling idempotent and readers consistent, erasure then relabelling, and Hugging Face
`datasets` on an export."""

from __future__ import annotations

import io
import shutil
import threading
from contextlib import closing
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
import soundfile

from conftest import lake_catalog, synthetic_clips, write_keys, write_rows
from voxtox.storage import lake
from voxtox.storage.catalog import LakeCatalog

SPLITS = ("train", "val", "test")


def clips_of(key: str, split: str, n: int, seed: int) -> pa.Table:
    """`n` synthetic clips of one source (ids unique to it), in the real clips schema."""
    table = synthetic_clips(n, split, seed)
    ids = pa.array([f"{key}-{i:03d}" for i in range(n)])
    return table.set_column(table.schema.get_field_index("clip_id"), "clip_id", ids).set_column(
        table.schema.get_field_index("source_sha256"), "source_sha256", pa.array([key] * n)
    )


def data_dir_with_sources(root: Path, per_split: int = 4, n: int = 3) -> LakeCatalog:
    """`per_split` sources of `n` clips in each split, one commit per source, as labelling writes."""
    write_keys(root, "clips", {f"{split}{i}": clips_of(f"{split}{i}", split, n, 10 * s_index + i)
                               for s_index, split in enumerate(SPLITS) for i in range(per_split)})
    return lake_catalog(root)


def counts(catalog: LakeCatalog) -> dict[str, int]:
    rows = catalog.query("SELECT split, count(*) AS n FROM clips GROUP BY split").to_pylist()
    return {row["split"]: row["n"] for row in rows}


def test_a_copied_data_dir_reads_its_own_lake(tmp_path: Path) -> None:
    original = tmp_path / "original"
    data_dir_with_sources(original)
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    write_keys(copy, "clips", {f"val{i}": clips_of(f"val{i}", "val", 0, 0) for i in range(4)})  # the copy's val: none
    assert counts(lake_catalog(copy)) == {"train": 12, "test": 12}
    # Another DuckDB client attaching the copy's lake as the README says: it reads the copy.
    with duckdb.connect() as con:
        lake.load_extensions(con)
        con.execute(f"ATTACH 'ducklake:sqlite:{copy}/lake/catalog.sqlite' AS data "
                    f"(DATA_PATH '{copy}/lake/data/', OVERRIDE_DATA_PATH true, READ_ONLY)")
        assert dict(con.execute("SELECT split, count(*) FROM data.clips GROUP BY 1").fetchall()) == {
            "train": 12, "test": 12}
    assert counts(lake_catalog(original))["val"] == 12


def test_embeddings_are_fixed_size_arrays_in_duckdb(tmp_path: Path) -> None:
    catalog = data_dir_with_sources(tmp_path, per_split=1)
    (kind,) = catalog.query("SELECT DISTINCT typeof(text_embedding) AS t FROM clips")["t"].to_pylist()
    assert kind == "FLOAT[16]"
    nearest = catalog.query(  # the README's "clips that sound like this one" query, without a cast
        "SELECT b.clip_id, array_cosine_similarity(a.text_embedding, b.text_embedding) AS sim "
        "FROM clips a, clips b WHERE a.clip_id = 'train0-000' ORDER BY sim DESC LIMIT 1"
    ).to_pylist()
    assert nearest == [{"clip_id": "train0-000", "sim": pytest.approx(1.0)}]


def clip_rows(catalog: LakeCatalog) -> list[dict]:
    return catalog.query("SELECT clip_id, split, lang, transcript, duration_s FROM clips ORDER BY clip_id").to_pylist()


def _compact(catalog: LakeCatalog) -> tuple[int, int]:
    with closing(lake.connect(catalog.target)) as con:
        return lake.compact(con, catalog.target)["clips"]


def test_compaction_merges_the_files_and_relabelling_after_it_replaces_a_source_s_rows(tmp_path: Path) -> None:
    catalog = data_dir_with_sources(tmp_path)
    before = clip_rows(catalog)
    files_before, files_after = _compact(catalog)
    assert files_before == 12 and files_after < files_before
    assert clip_rows(catalog) == before
    write_rows(tmp_path, "clips", clips_of("train2", "train", 2, 99), "train2")  # the rerun gives other rows
    rows = catalog.query("SELECT source_sha256, count(*) AS n FROM clips WHERE split = 'train' GROUP BY 1 ORDER BY 1")
    assert rows.to_pylist() == [{"source_sha256": k, "n": 2 if k == "train2" else 3}
                                for k in ("train0", "train1", "train2", "train3")]
    _compact(catalog)
    assert counts(catalog) == {"train": 11, "val": 12, "test": 12}


def test_readers_see_whole_tables_while_sources_are_replaced_and_compacted(tmp_path: Path) -> None:
    """voxtox's readers (queries, training, `voxtox query`) against a label run's replacements
    and a compaction in another thread: every count is the whole table."""
    catalog = data_dir_with_sources(tmp_path, per_split=2, n=4)
    stop = threading.Event()
    seen: list[int] = []

    def writer() -> None:
        for round_ in range(6):
            if stop.is_set():
                return
            write_keys(tmp_path, "clips", {key: clips_of(key, key[:-1], 4, round_) for key in ("train0", "val1")})
            if round_ % 3 == 2:
                _compact(catalog)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while thread.is_alive():
            seen.append(catalog.query("SELECT count(*) AS n FROM clips")["n"][0].as_py())
    finally:
        stop.set()
        thread.join()
    assert len(seen) > 3 and set(seen) == {24}


def test_datasets_loads_the_export_with_its_splits_audio_and_language(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    datasets = pytest.importorskip("datasets")  # a pinned test dependency (pyproject.toml [test])
    from voxtox.storage.export import export_dataset

    catalog = data_dir_with_sources(tmp_path / "data", per_split=2, n=3)
    assert export_dataset(catalog, tmp_path / "export") == {"train": 6, "validation": 6, "test": 6}
    loaded = datasets.load_dataset(str(tmp_path / "export"), cache_dir=str(tmp_path / "hf-cache"))
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


def test_a_source_erased_after_compaction_leaves_the_others_and_can_be_labelled_again(tmp_path: Path) -> None:
    """`voxtox forget` (lake.erase) removes a recording's rows from a compacted file; the other
    sources stay replaceable, and the erased one labelled again (--allow-forgotten) stays."""
    catalog = data_dir_with_sources(tmp_path)
    _compact(catalog)
    with closing(lake.connect(catalog.target)) as con:
        assert lake.erase(con, catalog.target, {"train1"}) == 3
    write_rows(tmp_path, "clips", clips_of("train2", "train", 1, 5), "train2")
    write_rows(tmp_path, "clips", clips_of("train1", "train", 2, 6), "train1")  # --allow-forgotten
    _compact(catalog)
    rows = catalog.query("SELECT source_sha256 AS s, count(*) AS n FROM clips WHERE split = 'train' GROUP BY 1 ORDER BY 1")
    assert rows.to_pylist() == [{"s": "train0", "n": 3}, {"s": "train1", "n": 2}, {"s": "train2", "n": 1},
                                {"s": "train3", "n": 3}]
