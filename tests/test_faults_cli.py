"""Fault injection, round 2 (issue 31, faults 4, 6, 8 and 9), through the command line.

Each test reproduces what a hostile or unlucky user did and asserts what must hold, through the
CLI and query results rather than file layouts, so the rows stay valid when the table layer
changes. docs/reliability.md lists them. Fault 1 (a file name that is not UTF-8) needs a whole
labelling run: it is in tests/test_label_flow.py, whose run already has such a file.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
import soundfile
from typer.testing import CliRunner

from conftest import spoken, write_audio
from voxtox.audio import SAMPLE_RATE
from voxtox.files import sha256_file
from voxtox.flows.cli import app
from voxtox.corpus.speech_synth import Utterance


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    soundfile.write(path, spoken(Utterance("good game everyone, see you tomorrow", "en")), SAMPLE_RATE)
    return path


def _cli(*args: str):  # noqa: ANN202
    return CliRunner().invoke(app, list(args))


def _count(data_dir: Path, sql: str) -> int:
    result = _cli("query", sql, "--data-dir", str(data_dir), "--format", "json")
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if line.startswith("{"))
    return next(iter(json.loads(row).values()))


def _tone(path: Path, hz: float = 220.0, seconds: float = 2.0) -> Path:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    soundfile.write(path, (0.2 * np.sin(2 * np.pi * hz * t)).astype(np.float32), SAMPLE_RATE, format="WAV")
    return path


def test_forget_keeps_a_trailing_space_and_fails_on_a_name_that_matched_nothing(tmp_path: Path) -> None:
    """Fault 9: `voxtox forget "<path ending in a space>"` stripped the space, exited 0 with "no
    data held", and the recording's data stayed. An erasure request must never pass for done."""
    data = tmp_path / "data"
    recording = _tone(tmp_path / "rec.wav ")  # the space is part of the file's name
    kept = _tone(tmp_path / "rec.wav", hz=330.0)  # what the name without its space would be
    truth = tmp_path / "truth.jsonl"
    truth.write_text("".join(
        json.dumps({"audio": path.name, "start_s": 0.0, "end_s": 1.5, "labels": ["profanity"]}) + "\n"
        for path in (recording, kept)
    ))
    assert _cli("import-labels", str(truth), "--data-dir", str(data)).exit_code == 0
    sha = sha256_file(recording)
    held = f"SELECT count(*) AS n FROM human_labels WHERE source_sha256 = '{sha}'"
    assert _count(data, held) == 1

    missing = str(tmp_path / "never-labelled.wav")
    result = _cli("forget", str(recording), missing, "--data-dir", str(data))
    assert result.exit_code == 1, result.output
    assert "never-labelled.wav" in result.output and "matched no data held" in result.output
    assert _count(data, held) == 0  # what was named and held is erased all the same
    assert _count(data, "SELECT count(*) AS n FROM human_labels") == 1  # and nothing else

    alone = _cli("forget", missing, "--data-dir", str(data))
    assert alone.exit_code == 1 and "no data held for" in alone.output


def _voxtox(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("voxtox")), *args]


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _api_child(pid: int, timeout_s: float = 300.0) -> int:
    """The pid of the local Prefect API (uvicorn) that process `pid` starts."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for child in psutil.Process(pid).children(recursive=True):
            try:
                if "prefect.server.api.server:create_app" in " ".join(child.cmdline()):
                    return child.pid
            except psutil.Error:
                continue
        time.sleep(0.2)
    raise AssertionError(f"process {pid} started no Prefect API within {timeout_s} s")


def test_a_killed_label_run_leaves_no_prefect_api_for_good(tmp_path: Path, speech_wav: Path) -> None:
    """Fault 6: SIGKILL of `voxtox label` left its local Prefect API (uvicorn, ~225 MB)
    listening for good. The next run stops it (the data files a killed writer uploaded before its
    commit are the lake's orphans, which `voxtox compact` deletes: tests/test_lake.py). `voxtox train` and `voxtox run nightly` killed the same way (all
    three at once, each on its own data dir) leave theirs to it too."""
    data, inbox, empty = tmp_path / "data", tmp_path / "inbox", tmp_path / "empty"
    inbox.mkdir()
    empty.mkdir()
    shutil.copy(speech_wav, inbox / "speech.wav")
    commands = [("label", str(inbox), "--data-dir", str(data)),
                ("train", "--out", str(tmp_path / "run"), "--data-dir", str(tmp_path / "data-train")),
                ("run", "nightly", "--inbox", str(empty), "--data-dir", str(tmp_path / "data-nightly"))]
    runs = [subprocess.Popen(_voxtox(*command), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for command in commands]
    try:
        apis = [_api_child(run.pid) for run in runs]
        time.sleep(1.0)
    finally:
        for run in runs:
            run.send_signal(signal.SIGKILL)
            run.wait()
    assert all(map(_alive, apis))  # the kills left them behind: they are the next run's to stop
    nothing = subprocess.run(_voxtox("label", str(empty), "--data-dir", str(data)), capture_output=True, text=True,
                             timeout=900)
    assert nothing.returncode == 0, nothing.stderr[-3000:]
    deadline = time.monotonic() + 20
    while any(map(_alive, apis)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(map(_alive, apis)), dict(zip([c[0] for c in commands], map(_alive, apis), strict=True))
    assert list(data.rglob("*.tmp")) == []


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs mounted where a data dir keeps its tables, the embedded lake (root only):
    room for about one source's clips, so the disk fills while a run writes its tables."""
    data = tmp_path / "data"
    shards = data / "lake"
    shards.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(shards)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield data
    finally:
        subprocess.run(["umount", str(shards)], check=False)


def test_a_full_disk_is_one_line_and_leaves_every_table_whole(tmp_path: Path, small_disk: Path) -> None:
    """Fault 4: a data dir on a small disk. Before: 368-493 lines ending in `OSError: [Errno 28]
    No space left on device` naming no path, or `UnfinishedRun: Run is in PENDING state`, and once
    a source's clips were left without its `sources` row."""
    data, inbox = small_disk, tmp_path / "inbox"
    for index, text in enumerate(["good game everyone, see you tomorrow", "nice shot mate, push mid with me",
                                  "thanks for the heal, see you next round"]):
        write_audio(inbox / f"s{index}.wav", spoken(Utterance(text, "en")))
    full = subprocess.run(_voxtox("label", str(inbox), "--data-dir", str(data)), capture_output=True, text=True,
                          timeout=900)
    output = full.stdout + full.stderr
    assert full.returncode == 1, output[-3000:]
    assert "Traceback" not in output and "UnfinishedRun" not in output, output[-3000:]
    said = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(said) == 1 and str(data) in said[0] and "free some space" in said[0], output[-3000:]
    assert _orphan_clips(data) == 0

    subprocess.run(["mount", "-o", "remount,size=64m", str(data / "lake")], check=True)  # space freed
    again = subprocess.run(_voxtox("label", str(inbox), "--data-dir", str(data)), capture_output=True, text=True,
                           timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _count(data, "SELECT count(*) FROM sources") == 3
    assert _count(data, "SELECT count(*) - count(DISTINCT clip_id) FROM clips") == 0
    assert _count(data, "SELECT count(DISTINCT source_sha256) FROM clips") == 3
    assert _orphan_clips(data) == 0


def _orphan_clips(data: Path) -> int:
    """Clips of a source that has no `sources` row (0 when there are no clips at all)."""
    tables = _cli("query", "SHOW TABLES", "--data-dir", str(data), "--format", "csv").stdout
    if "clips" not in tables:
        return 0
    assert "sources" in tables
    return _count(data, "SELECT count(*) FROM clips WHERE source_sha256 NOT IN (SELECT source_sha256 FROM sources)")
