"""`voxtox review export` when the clips live in a lake (docs/review.md, "Data on S3"): with the
data on a real S3 server (moto's, on 127.0.0.1) a task's audio is a pre-signed URL that plays the
clip's bytes; with the lake's data in a local folder, local-files URLs as on one machine."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401 (pa.compute)
import pytest

from tests.conftest import synthetic_clips, write_keys
from voxtox.settings import Settings
from voxtox.storage import lake
from voxtox.storage.lake import LakeError, LakeTarget
from voxtox.storage.review_export import LOCAL_FILES_URL, export_batch
from voxtox.models.review_select import select_for_review
from conftest import S3_TEST_KEYS as KEYS

FIRST = {f"train-{i:04d}" for i in range(6)}  # the clips of `_lake_with_clips`' first recording
def _clips_table(n: int = 12, per_recording: int = 6) -> pa.Table:
    """`n` train clips (tones, tests/conftest.py), `per_recording` clips to a recording (a sha256)."""
    table = synthetic_clips(n, "train", 0)
    shas = ["abcdef"[i // per_recording] * 64 for i in range(n)]
    return table.set_column(table.schema.get_field_index("source_sha256"), "source_sha256", [shas])


def _lake_with_clips(target: LakeTarget, table: pa.Table | None = None) -> dict[str, bytes]:
    """Clips written to the lake as `voxtox label` writes them (one commit per recording);
    returns clip id -> its FLAC bytes."""
    table = _clips_table() if table is None else table
    with lake.connect(target) as con:
        for sha in sorted(set(table["source_sha256"].to_pylist())):
            lake.replace_key(con, target, sha, {"clips": table.filter(pa.compute.equal(table["source_sha256"], sha))})
    return {row["clip_id"]: row["audio"]["bytes"] for row in table.to_pylist()}


def _s3_settings(tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, bucket: str,
                 **review: object) -> Settings:
    for name, value in {**KEYS, "AWS_ENDPOINT_URL": s3_endpoint}.items():
        monkeypatch.setenv(name, value)
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    storage = {"catalog_url": str(tmp_path / "lake.ducklake"), "data_url": f"s3://{bucket}/lake"}
    return Settings(data_dir=tmp_path / "data", storage=storage, review=review)


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def test_on_s3_a_task_plays_from_a_presigned_url_that_outlives_the_lake_s_clean_up(
    tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _s3_settings(tmp_path, s3_endpoint, monkeypatch, "review-s3", presign_expiry_s=3600)
    target = lake.target_of(settings.storage.catalog_url, settings.storage.data_url)
    audio = _lake_with_clips(target)
    select_for_review(settings, 5, strategy="random")
    written = export_batch(settings)
    tasks = json.loads(written.tasks.read_text())
    assert len(tasks) == 5 and written.audio_dir is None and written.audio_at == "s3://review-s3/lake-review/audio/"
    for task in tasks:
        url = task["data"]["audio"]
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        assert url.startswith(f"{s3_endpoint}/review-s3/lake-review/audio/{task['data']['clip_id']}.flac?")
        assert query["X-Amz-Expires"] == ["3600"] and query["X-Amz-Signature"] and query["X-Amz-Credential"]
        assert _fetch(url) == audio[task["data"]["clip_id"]]  # the clip's own bytes, nobody else's
    assert not list((settings.data_dir / "review").glob("audio/*.flac"))  # nothing staged on this disk
    # the lake's orphan clean-up (`voxtox compact`) leaves the review audio alone: it lives beside
    # the data path (DuckLake 1.5.5 would spare a .flac under it too: this guards the default)
    with lake.connect(target) as con:
        lake.delete_orphans(con, target, older_than_s=0)
    assert _fetch(tasks[0]["data"]["audio"]) == audio[tasks[0]["data"]["clip_id"]]


def test_review_audio_is_never_put_inside_the_lake_s_data_path(
    tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _s3_settings(tmp_path, s3_endpoint, monkeypatch, "review-inside", audio_url="s3://review-inside/lake/audio")
    _lake_with_clips(lake.target_of(settings.storage.catalog_url, settings.storage.data_url))
    select_for_review(settings, 2, strategy="random")
    with pytest.raises(ValueError, match="inside the lake's data path"):
        export_batch(settings)
    whole = Settings(data_dir=tmp_path / "data", storage={"catalog_url": str(tmp_path / "lake.ducklake"),
                                                           "data_url": "s3://review-inside"})
    with pytest.raises(ValueError, match="set review.audio_url"):
        export_batch(whole)


def test_a_bucket_that_does_not_exist_is_one_line_naming_it(
    tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _s3_settings(tmp_path, s3_endpoint, monkeypatch, "review-nobucket", audio_url="s3://no-such-bucket/audio")
    _lake_with_clips(lake.target_of(settings.storage.catalog_url, settings.storage.data_url))
    select_for_review(settings, 2, strategy="random")
    with pytest.raises(LakeError, match=f"{s3_endpoint}.*no-such-bucket.*NoSuchBucket"):
        export_batch(settings)


def test_a_lake_in_a_local_folder_exports_local_files_urls(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", storage={"catalog_url": str(tmp_path / "lake.ducklake"),
                                                             "data_url": str(tmp_path / "lake-data")})
    audio = _lake_with_clips(lake.target_of(settings.storage.catalog_url, settings.storage.data_url))
    select_for_review(settings, 3, strategy="random")
    written = export_batch(settings)
    for task in json.loads(written.tasks.read_text()):
        relative = task["data"]["audio"].removeprefix(LOCAL_FILES_URL)
        assert (settings.data_dir / relative).read_bytes() == audio[task["data"]["clip_id"]]


def test_forget_on_the_lake_deletes_the_review_audio_objects_too(
    tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from typer.testing import CliRunner

    from voxtox.flows.cli import app

    settings = _s3_settings(tmp_path, s3_endpoint, monkeypatch, "review-forget")
    _lake_with_clips(lake.target_of(settings.storage.catalog_url, settings.storage.data_url))
    select_for_review(settings, 12, strategy="random")
    tasks = json.loads(export_batch(settings).tasks.read_text())
    gone = {t["data"]["clip_id"]: t["data"]["audio"] for t in tasks if t["data"]["clip_id"] in FIRST}
    kept = [t for t in tasks if t["data"]["clip_id"] not in gone]
    assert len(gone) == 6 and len(kept) == 6
    env = {"VOXTOX_STORAGE__CATALOG_URL": settings.storage.catalog_url, "VOXTOX_STORAGE__DATA_URL": settings.storage.data_url}
    result = CliRunner().invoke(app, ["forget", "a" * 64, "--data-dir", str(settings.data_dir)], env=env)
    assert result.exit_code == 0, result.output
    assert "6 audio object(s) on S3" in result.output
    for url in gone.values():
        with pytest.raises(urllib.error.HTTPError) as refused:
            _fetch(url)
        assert refused.value.code == 404
    assert _fetch(kept[0]["data"]["audio"])  # the other recording's clips still play
    left = json.loads((settings.data_dir / "review" / "export" / "tasks.json").read_text())
    assert {t["data"]["clip_id"] for t in left} == {t["data"]["clip_id"] for t in kept}



def test_disagreement_embeds_a_lake_s_clips_as_it_does_the_default_store_s(tmp_path: Path, tiny_whisper: Path) -> None:
    """The cross-fitted audio opinion reads the clips' audio from the lake `[storage]` names: the
    same clips give the same doubts as from the default store (the embedded lake under the data dir)."""
    from voxtox.models.review_select import doubt_scores, read_candidates

    lake_settings = Settings(data_dir=tmp_path / "lake-side", train={"encoder": str(tiny_whisper), "threads": 1},
                             storage={"catalog_url": str(tmp_path / "lake.ducklake"), "data_url": str(tmp_path / "lake-data")})
    table = _clips_table(30, 5)  # 6 recordings: 5 folds by recording
    _lake_with_clips(lake.target_of(lake_settings.storage.catalog_url, lake_settings.storage.data_url), table)
    default_settings = Settings(data_dir=tmp_path / "default-side", train={"encoder": str(tiny_whisper), "threads": 1})
    write_keys(default_settings.data_dir, "clips", {sha: table.filter(pa.compute.equal(table["source_sha256"], sha))
                                                    for sha in sorted(set(table["source_sha256"].to_pylist()))})
    doubts = [doubt_scores("disagreement", read_candidates(s, "train"), s, 0, None) for s in (lake_settings, default_settings)]
    assert doubts[0].shape == (30,) and np.allclose(doubts[0], doubts[1], atol=1e-5)
