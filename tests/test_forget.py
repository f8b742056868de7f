"""`voxtox forget` end to end: real labelling of spoken recordings, human labels, a trained run
and its cached scores; after forgetting one recording nothing voxtox stores refers to it, and
running the inbox again does not bring it back (unless told to)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from conftest import spoken, write_audio
from voxtox.files import sha256_file
from voxtox.flows.cli import app
from voxtox.flows.label import label_flow
from voxtox.settings import Settings, TrainSettings
from voxtox.storage.catalog import Catalog
from voxtox.storage.human_labels import import_truth_files_to_lake
from voxtox.storage.lake import target_for
from voxtox.corpus.speech_synth import Utterance

KEPT = Utterance("good game everyone, see you tomorrow", "en")
FORGOTTEN = Utterance("what the fuck man, this lag is killing me", "en", "f3")


def settings_for(data_dir: Path, encoder: Path) -> Settings:
    settings = Settings(data_dir=data_dir)
    return settings.model_copy(update={
        "asr": settings.asr.model_copy(update={"languages": ["en"]}),
        "train": TrainSettings(encoder=str(encoder), epochs=1, batch_size=1, grad_accum=1, num_workers=0,
                               val_resamples=10, threads=1),
    })


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory, tiny_whisper: Path, prefect_harness) -> dict:
    """kept.wav (train) and forgotten.wav (val) labelled into the default store, the embedded lake
    under the data dir, with their human labels."""
    root = tmp_path_factory.mktemp("forget-lake")
    inbox = root / "inbox"
    kept = write_audio(inbox / "train" / "kept.wav", spoken(KEPT))
    forgotten = write_audio(inbox / "val" / "forgotten.wav", spoken(FORGOTTEN))
    truth = inbox / "truth" / "utterances.jsonl"
    truth.parent.mkdir()
    truth.write_text("".join(json.dumps(row) + "\n" for row in [
        {"audio": "../train/kept.wav", "start_s": 0.0, "end_s": 2.0, "labels": ["no_violation"], "speaker": "bob", "text": KEPT.text},
        {"audio": "../val/forgotten.wav", "start_s": 0.0, "end_s": 3.0, "labels": ["profanity"], "speaker": "alice", "text": FORGOTTEN.text},
    ]))
    settings = settings_for(root / "data", tiny_whisper)
    label_flow(inputs=[str(inbox / "train")], split="train", settings=settings)
    label_flow(inputs=[str(inbox / "val")], split="val", settings=settings)
    import_truth_files_to_lake([truth], target_for(settings))
    return {"inbox": inbox, "truth": truth, "kept": kept, "forgotten": forgotten, "settings": settings,
            "catalog": Catalog.from_settings(settings)}


def test_forget_erases_a_recording_s_bytes_from_the_lake_and_a_rerun_does_not_bring_it_back(labelled: dict) -> None:
    """The default store: after `voxtox forget PATH` no file under the data dir holds the
    recording's path, words or audio (its hash stays, in the tombstones); the inbox labelled
    again skips it; `--allow-forgotten` labels it again."""
    world, catalog = labelled, labelled["catalog"]
    settings = world["settings"]
    sha, kept_sha = sha256_file(world["forgotten"]), sha256_file(world["kept"])
    clip = catalog.query(f"SELECT transcript, audio FROM clips WHERE source_sha256 = '{sha}' LIMIT 1").to_pylist()[0]
    before = {table: rows_of(catalog, table, sha) for table in ("clips", "sources", "human_labels")}
    assert min(before.values()) >= 1, before
    kept_clips = rows_of(catalog, "clips", kept_sha)
    needles = [str(world["forgotten"]).encode(), clip["transcript"].encode(), clip["audio"]["bytes"]]
    assert traces_of(settings.data_dir, needles, set())  # the search finds them while they are there
    dry = CliRunner().invoke(app, ["forget", sha, "--dry-run", "--data-dir", str(settings.data_dir)])
    assert dry.exit_code == 0 and "would be erased" in dry.output and rows_of(catalog, "clips", sha) == before["clips"]

    result = CliRunner().invoke(app, ["forget", str(world["forgotten"]), "--data-dir", str(settings.data_dir)],
                                env={"COLUMNS": "200"})

    assert result.exit_code == 0, result.output
    assert "1 recording(s) erased" in result.output
    assert traces_of(settings.data_dir, needles, set()) == []
    for table in ("clips", "sources", "human_labels"):
        assert rows_of(catalog, table, sha) == 0, table
    assert rows_of(catalog, "clips", kept_sha) == kept_clips
    assert catalog.forgotten() == {sha}

    again = label_flow(inputs=[str(world["inbox"] / "train"), str(world["inbox"] / "val")], split="val", settings=settings)
    assert (again.n_skipped, again.n_clips) == (2, 0)
    assert import_truth_files_to_lake([world["truth"]], target_for(settings)).n_forgotten == 1
    for table in ("clips", "sources", "human_labels"):
        assert rows_of(catalog, table, sha) == 0, table
    told = label_flow(inputs=[str(world["inbox"] / "val")], split="val", settings=settings, allow_forgotten=True)
    assert told.n_clips >= 1 and rows_of(catalog, "clips", sha) == told.n_clips


def rows_of(catalog: Catalog, table: str, sha: str) -> int:
    return catalog.query(f"SELECT count(*) AS n FROM {table} WHERE source_sha256 = '{sha}'")["n"][0].as_py()


def cells(value: object) -> Iterator[str | bytes]:
    """Every string and bytes value inside a row (structs and lists opened)."""
    if isinstance(value, str | bytes):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from cells(item)
    elif isinstance(value, list):
        for item in value:
            yield from cells(item)


def traces_of(directory: Path, needles: list[bytes], spared: set[str]) -> list[str]:
    """Files under `directory` (but those named in `spared`) whose name, raw bytes or, for
    Parquet, decoded values contain any of the needles."""
    found = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name not in spared):
        raw = path.read_bytes()
        values = [v if isinstance(v, bytes) else v.encode() for row in pq.ParquetFile(path).read().to_pylist()
                  for v in cells(row)] if path.suffix == ".parquet" else []
        for needle in needles:
            if needle in path.name.encode() or needle in raw or any(needle in v for v in values):
                found.append(f"{path}: {needle[:40]!r}")
    return found
