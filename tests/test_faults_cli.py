"""Fault injection, round 2 (issue 31, faults 4, 6, 8 and 9), through the command line.

Each test reproduces what a hostile or unlucky user did and asserts what must hold, through the
CLI and query results rather than file layouts, so the rows stay valid when the table layer
changes. docs/reliability.md lists them. Fault 1 (a file name that is not UTF-8) needs a whole
labelling run: it is in tests/test_label_flow.py, whose run already has such a file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile
from typer.testing import CliRunner

from voxtox.audio import SAMPLE_RATE
from voxtox.files import sha256_file
from voxtox.flows.cli import app


def _cli(*args: str):  # noqa: ANN202
    return CliRunner().invoke(app, list(args))


def _count(data_dir: Path, sql: str) -> int:
    result = _cli("query", sql, "--data-dir", str(data_dir), "--format", "json")
    assert result.exit_code == 0, result.output
    return next(iter(json.loads(result.output.splitlines()[0]).values()))


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
