"""Shared fixtures: real models (offline), real speech from espeak-ng, one Prefect harness."""

from __future__ import annotations

import json
from collections.abc import Iterator
import os
import random
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import soundfile

# CTranslate2's int8 results depend on the OpenMP thread count: pin it for every process the
# tests start (the Dask test gives its workers the same), so runs are comparable bit for bit.
ASR_THREADS = "2"
os.environ["OMP_NUM_THREADS"] = ASR_THREADS
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from transformers import WhisperConfig, WhisperModel  # noqa: E402

from voxtox.audio import SAMPLE_RATE  # noqa: E402
from voxtox.labels import CLASSES  # noqa: E402
from voxtox.settings import Settings  # noqa: E402
from voxtox.storage.catalog import Catalog, LakeCatalog  # noqa: E402
from voxtox.storage.model_store import resolve_model  # noqa: E402
from voxtox.storage.schema import clips_schema, label_column, prob_column  # noqa: E402
from voxtox.corpus.speech_synth import VARIANTS, Utterance, lay_out  # noqa: E402
from voxtox.tasks.write import encode_flac  # noqa: E402

SHARED_AUDIO = Path(__file__).resolve().parents[1].parent / "shared" / "audio"

#: A few sentences per class: enough for MiniLM to learn the direction in seconds.
LABELLER_TRAINING = {
    "profanity": ["fuck this shit", "what the fuck man", "holy shit that hurt", "damn this fucking lag"],
    "bullying": ["you are worthless trash", "nobody likes you loser", "uninstall you useless noob", "you are so stupid and ugly"],
    "dating_sexting": ["send me nudes babe", "wanna hook up tonight sexy", "show me your body", "you look so hot baby"],
    "racism": ["go back to your country", "those people are animals", "your race is inferior", "immigrants are vermin"],
    "other": ["i sell weed and pills", "i know where you live", "i will hurt myself tonight", "join our militia now"],
    "no_violation": ["good game everyone", "nice shot mate", "push mid with me", "thanks for the heal", "what a great match", "see you tomorrow"],
}


def head_only_labeller(directory: Path) -> Path:
    """The shipped labeller's head as a frozen-encoder labeller (`usem3-head`) in `directory`: the
    shipped default itself is adapted (`usem3-lora`, its own copy of USE) since 2026-12-07."""
    import shutil

    from voxtox.models.labeller import USEM_HEAD_KIND, LabelMap
    from voxtox.storage.model_store import SHIPPED_MODELS

    shutil.copytree(SHIPPED_MODELS / "voxtox-labeller", directory)
    for name in ("encoder.safetensors", "encoder_config.json"):
        (directory / name).unlink(missing_ok=True)
    label_map = LabelMap.load(directory)
    label_map.kind = USEM_HEAD_KIND
    label_map.save(directory)
    return directory


def base_settings(data_dir: Path, **overrides: object) -> Settings:
    return Settings(data_dir=data_dir, **overrides)


@pytest.fixture(scope="session")
def model_cache() -> Path:
    return Settings().model_cache_dir


@pytest.fixture(scope="session")
def whisper_dir(model_cache: Path) -> str:
    return resolve_model("whisper-base", model_cache)


@pytest.fixture(scope="session")
def tiny_labeller(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Path:
    """A real labeller, really fine-tuned (MiniLM on a few sentences, seconds on CPU)."""
    from voxtox.models.labeller_training import fine_tune_labeller

    texts, targets = [], []
    for name, sentences in LABELLER_TRAINING.items():
        for sentence in sentences:
            texts.append(sentence)
            row = np.zeros(len(CLASSES), dtype=np.float32)
            row[CLASSES.index(name)] = 1.0
            targets.append(row)
    return fine_tune_labeller(
        resolve_model("all-MiniLM-L6-v2", model_cache),
        texts,
        np.stack(targets),
        tmp_path_factory.mktemp("labeller") / "tiny-labeller",
        epochs=12,
        learning_rate=3e-4,
        batch_size=8,
    )


@pytest.fixture(scope="session")
def prefect_harness():
    """One ephemeral Prefect API for the whole session (it takes seconds to start)."""
    from prefect.testing.utilities import prefect_test_harness

    from voxtox.prefect_env import startup_timeout_s

    # The same generous start-up allowance as every voxtox process (a cold start on a busy
    # 2-core CI machine took longer than Prefect's default 20 s).
    with prefect_test_harness(server_startup_timeout=startup_timeout_s()):
        yield


def write_audio(path: Path, samples: np.ndarray, rate: int = SAMPLE_RATE, channels: int = 1) -> Path:
    """Write speech in any format ffmpeg knows, resampled to `rate` with `channels` channels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    wav = path.with_name(path.stem + ".src.wav")
    soundfile.write(wav, samples, SAMPLE_RATE)
    codec = {".ogg": ["-c:a", "libopus"], ".opus": ["-c:a", "libopus"], ".m4a": ["-c:a", "aac"]}
    if path.suffix in (".ogg", ".opus"):
        rate = 48_000  # the only rate Opus encodes at
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-i", str(wav), "-ar", str(rate), "-ac", str(channels),
         *codec.get(path.suffix, []), str(path)],
        check=True,
    )
    wav.unlink()
    return path


def spoken(*utterances: Utterance, pauses: list[float] | None = None) -> np.ndarray:
    samples, _ = lay_out(list(utterances), pauses if pauses is not None else [0.8] * (len(utterances) - 1))
    return samples


def make_broken_inputs(directory: Path, speech: np.ndarray) -> dict[str, str]:
    """The five kinds of broken input the flow must reject; file name -> expected reason."""
    good = write_audio(directory / "good-source.wav", speech)
    data = good.read_bytes()
    (directory / "truncated.wav").write_bytes(data[: len(data) // 3])
    good.unlink()
    (directory / "zero.wav").write_bytes(b"")
    (directory / "notes.wav").write_text("this is a text file renamed to .wav\n" * 20)
    nan = speech.copy()
    nan[100:200] = np.nan
    soundfile.write(directory / "nan.wav", nan, SAMPLE_RATE, subtype="FLOAT")
    soundfile.write(directory / "blip.wav", speech[SAMPLE_RATE : int(1.2 * SAMPLE_RATE)], SAMPLE_RATE)
    return {
        "truncated.wav": "truncated",
        "zero.wav": "empty",
        "notes.wav": "not_audio",
        "nan.wav": "invalid_samples",
        "blip.wav": "too_short",
    }


def write_nightly_inbox(root: Path, sessions: dict[str, int], seed: int = 3) -> Path:
    """A nightly inbox of spoken English sessions: `sessions[split]` WAV files per split, each three
    sentences of three different classes, and the truth of the val and test ones in `truth/`."""
    rng = random.Random(seed)
    for split, count in sessions.items():
        truth = []
        for index in range(count):
            classes = rng.sample(sorted(LABELLER_TRAINING), 3)
            utterances = [Utterance(rng.choice(LABELLER_TRAINING[c]), "en", rng.choice(VARIANTS), 140) for c in classes]
            samples, placed = lay_out(utterances, [1.2, 1.2])
            path = root / split / f"{split}-{index}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            soundfile.write(path, samples, SAMPLE_RATE)
            truth += [
                {"audio": f"../{split}/{path.name}", "start_s": p.start_s, "end_s": p.end_s, "labels": [c], "lang": "en",
                 "text": p.utterance.text}
                for p, c in zip(placed, classes, strict=True)
            ]
        if split != "train":  # human labels exist for validation and test only
            (root / "truth").mkdir(parents=True, exist_ok=True)
            (root / "truth" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in truth))
    return root


# --- a small trainable world: clips whose class is audible, a Whisper-shaped random encoder ---

TEXT_DIM = 16


def write_rows(data_dir: Path, name: str, table: pa.Table, key: str) -> None:
    """Rows of table `name` into the embedded lake under `data_dir` (what every command reads
    when `[storage]` names none), replacing `key`'s rows, in one commit."""
    write_keys(data_dir, name, {key: table})


def write_keys(data_dir: Path, name: str, tables: dict[str, pa.Table]) -> None:
    """`write_rows` of several keys (key -> rows), a commit each, on one connection."""
    from contextlib import closing

    from voxtox.storage import lake

    target = lake.embedded_target(data_dir)
    with closing(lake.connect(target)) as con:
        for key, table in tables.items():
            lake.replace_key(con, target, key, {name: table})


def lake_catalog(data_dir: Path) -> LakeCatalog:
    """The catalog every command opens for `data_dir` with no `[storage]`: its embedded lake's."""
    catalog = Catalog.from_settings(Settings(data_dir=data_dir))
    assert isinstance(catalog, LakeCatalog)
    return catalog


def synthetic_clips(n: int, split: str, seed: int) -> pa.Table:
    """Clips of 1-3 s: a tone whose pitch says the class, and a text embedding near the class's
    direction, so there is something to learn; every class appears in every split."""
    rng = np.random.default_rng(seed)
    directions = np.random.default_rng(99).normal(size=(len(CLASSES), TEXT_DIM))
    records = []
    for i in range(n):
        cls = i % len(CLASSES)
        duration = float(rng.uniform(1.0, 3.0))
        t = np.arange(int(duration * SAMPLE_RATE)) / SAMPLE_RATE
        samples = 0.3 * np.sin(2 * np.pi * (200 + 150 * cls) * t) + 0.02 * rng.normal(size=t.size)
        labels = {label_column(c): c == CLASSES[cls] for c in CLASSES}
        records.append(
            {
                "clip_id": f"{split}-{i:04d}",
                "source_sha256": f"src-{split}",
                "source_uri": f"synthetic://{split}",
                "segment_kind": "sentence",
                "start_s": 0.0,
                "end_s": duration,
                "duration_s": duration,
                "transcript": f"clip {i} of class {CLASSES[cls]}",
                **{prob_column(c): float(labels[label_column(c)]) for c in CLASSES},
                **labels,
                "text_embedding": (directions[cls] + 0.3 * rng.normal(size=TEXT_DIM)).astype(np.float32).tolist(),
                "lang": "en",
                "audio": {"bytes": encode_flac(samples.astype(np.float32)), "path": f"{split}-{i}.flac"},
                "labelled_at": datetime(2026, 1, 1, tzinfo=UTC),
            }
        )
    table = pa.Table.from_pylist(records, schema=clips_schema(TEXT_DIM))
    return table.append_column("split", pa.array([split] * n)).append_column("date", pa.array(["2026-01-01"] * n))


@pytest.fixture(scope="session")
def tiny_whisper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Whisper-shaped transformers checkpoint: 2 encoder layers of width 32, random init."""
    torch.manual_seed(0)
    config = WhisperConfig(
        d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64,
        decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=64, vocab_size=64,
        max_target_positions=32, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
    )
    path = tmp_path_factory.mktemp("tiny-whisper") / "tiny-whisper"
    WhisperModel(config).save_pretrained(path)
    return path





# --- Label Studio, started early ---------------------------------------------------------------
# Its first start migrates a new database (~40 s idle, 1.5 min on a busy 2-core machine): when
# tests/test_labelstudio.py is among the collected tests, the server starts in the background as
# soon as collection ends, so that wait overlaps the tests that run before it. The module's
# fixture takes it over; a session that never reaches the module stops it here. (The state lives
# in labelstudio_server, one module for conftest and the test file alike.)


def pytest_collection_finish(session: pytest.Session) -> None:
    if not session.config.option.collectonly and any(item.path.name == "test_labelstudio.py" for item in session.items):
        from labelstudio_server import start_early

        start_early()


def pytest_sessionfinish(session: pytest.Session) -> None:
    from labelstudio_server import stop_early

    stop_early()


#: The keys tests give the S3 server on 127.0.0.1 (moto accepts any).
S3_TEST_KEYS = {"AWS_ACCESS_KEY_ID": "voxtox-test", "AWS_SECRET_ACCESS_KEY": "voxtox-test-secret",
                "AWS_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A real S3 server (moto's) on 127.0.0.1 for one test module: its URL."""
    from moto.server import ThreadedMotoServer
    from prefect_server import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
