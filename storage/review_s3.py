"""Review audio when the data is on S3 (`[storage] data_url = s3://...`, docs/review.md).

On a lake a clip's audio is a cell of a Parquet data file on S3, which no machine's disk holds
and Label Studio cannot play. So `voxtox review export` uploads each chosen clip's FLAC as its own
object and gives the task a **pre-signed GET URL** (`review.presign_expiry_s`, 7 days at most
with SigV4): Label Studio, and the reviewer's browser, fetch the audio straight from the store,
with no keys of their own.

The objects go under `review.audio_url`, by default `<data_url>-review/audio/`: beside the lake's
data path, not under it. The data path is DuckLake's: `voxtox compact` deletes files there that no
snapshot references (DuckLake 1.5.5 deletes only Parquet files, measured, but nothing promises a
later version leaves other files alone), and no voxtox file should depend on that. Endpoint and keys come only from the standard
`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` (`AWS_SESSION_TOKEN`,
`AWS_REGION`), as for the lake itself (storage/lake.py).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from urllib.parse import urlsplit

from voxtox.settings import Settings
from voxtox.storage.lake import LakeError, s3_endpoint

AUDIO_PREFIX = "audio"


def on_s3(settings: Settings) -> bool:
    """Whether the clips' audio lives on S3 (a lake whose data path is an s3:// URL)."""
    return str(settings.storage.data_url or "").startswith("s3://")


def _split_s3(url: str, what: str) -> tuple[str, str]:
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"{what} must be s3://bucket/prefix, not {url!r}")
    return parts.netloc, parts.path.strip("/")


def audio_location(settings: Settings) -> tuple[str, str]:
    """(bucket, key prefix) of the review audio objects; never under the lake's data path."""
    data_bucket, data_prefix = _split_s3(str(settings.storage.data_url), "[storage] data_url")
    if settings.review.audio_url:
        bucket, prefix = _split_s3(settings.review.audio_url, "review.audio_url")
    elif not data_prefix:
        raise ValueError(f"the lake's data path is a whole bucket (s3://{data_bucket}): set review.audio_url to "
                         "an s3:// prefix outside it, where the review audio can stay")
    else:
        bucket, prefix = data_bucket, f"{data_prefix}-review/{AUDIO_PREFIX}"
    if bucket == data_bucket and (not data_prefix or f"{prefix}/".startswith(f"{data_prefix}/")):
        raise ValueError(f"review.audio_url s3://{bucket}/{prefix} is inside the lake's data path "
                         f"{settings.storage.data_url}, which DuckLake cleans up (`voxtox compact`): put it beside it")
    return bucket, prefix


def s3_client():  # noqa: ANN201 (boto3 clients have no static type)
    """An S3 client from the standard AWS variables only; a custom endpoint (MinIO, moto, Ceph)
    is addressed by path, as the lake's DuckDB secret does."""
    import boto3
    from botocore.config import Config

    endpoint = os.environ.get("AWS_ENDPOINT_URL") or None
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    style = {"addressing_style": "path"} if endpoint else {}
    return boto3.client("s3", endpoint_url=endpoint, region_name=region,
                        config=Config(signature_version="s3v4", s3=style, retries={"max_attempts": 3}))


@contextmanager
def s3_errors(bucket: str) -> Iterator[None]:
    """An unreachable endpoint, a missing bucket or refused keys: one line naming them."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as error:
        raise LakeError(f"object store {s3_endpoint()} refused the review audio in bucket {bucket!r}: "
                        f"{error.response.get('Error', {}).get('Code', error)}") from error
    except BotoCoreError as error:
        raise LakeError(f"object store {s3_endpoint()} unreachable for the review audio (bucket {bucket!r}): "
                        f"{error}") from error


def upload_and_presign(settings: Settings, audio: Mapping[str, bytes]) -> dict[str, str]:
    """Upload each clip's FLAC (clip id -> bytes) and return clip id -> a pre-signed GET URL.
    An object already there is overwritten with the same bytes (a clip's audio never changes)."""
    bucket, prefix = audio_location(settings)
    client = s3_client()
    urls: dict[str, str] = {}
    with s3_errors(bucket):
        for clip_id, data in audio.items():
            key = f"{prefix}/{clip_id}.flac"
            client.put_object(Bucket=bucket, Key=key, Body=data, ContentType="audio/flac")
            urls[clip_id] = client.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=settings.review.presign_expiry_s)
    return urls


def delete_review_audio(settings: Settings, clip_ids: Collection[str]) -> int:
    """`voxtox forget` on a lake: delete the clips' review audio objects; how many there were.
    0 when the data is not on S3."""
    if not on_s3(settings) or not clip_ids:
        return 0
    try:
        bucket, prefix = audio_location(settings)
    except ValueError:
        return 0  # no place review audio can have gone: nothing was ever exported
    wanted = {f"{prefix}/{c}.flac" for c in clip_ids}
    client = s3_client()
    with s3_errors(bucket):
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/")
        held = sorted(o["Key"] for page in pages for o in page.get("Contents", []) if o["Key"] in wanted)
        for start in range(0, len(held), 1000):  # S3's limit per DeleteObjects call
            client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in held[start:start + 1000]]})
    return len(held)
