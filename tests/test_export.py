"""Exporting the classifier (ONNX through torch's dynamo exporter, TorchScript by tracing): the
artefacts give PyTorch's probabilities on batch sizes and lengths they were not traced with,
carry voxtox's metadata and thresholds, and `voxtox classify` runs them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from conftest import TEXT_DIM
from typer.testing import CliRunner

from voxtox.flows.cli import app
from voxtox.labels import CLASSES
from voxtox.storage.runs import THRESHOLDS_FILE
from voxtox.models.classify import classify_inputs, load_model
from voxtox.models.export_run import export_run
from voxtox.models.export import (
    ExportedClassifier,
    compare_outputs,
    example_inputs,
    export_model,
    format_of,
    quantize_onnx,
)
from voxtox.models.speech_classifier import SpeechToxicityClassifier
from voxtox.models.trainer import save_model
from voxtox.models.whisper_encoder import load_speech_encoder

RATE = 16_000
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def run_dir(tiny_whisper: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory as `voxtox train` leaves it, injecting at layer 1 (so the model has the
    extra projection too), with calibrated thresholds in best/."""
    torch.manual_seed(1)
    model = SpeechToxicityClassifier(load_speech_encoder(str(tiny_whisper)), len(CLASSES), TEXT_DIM, inject_layer=1)
    run = tmp_path_factory.mktemp("export-run") / "run"
    save_model(model, run / "best")
    save_model(model, run / "final")
    thresholds = {"thresholds": {c: 0.3 + 0.05 * i for i, c in enumerate(CLASSES)}, "labels": "pipeline", "split": "val"}
    (run / "best" / THRESHOLDS_FILE).write_text(json.dumps(thresholds))
    return run


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("export-audio")
    rng = np.random.default_rng(0)
    for name, seconds in (("a.wav", 21.0), ("b.wav", 2.5), ("c.wav", 40.0)):
        t = np.arange(int(seconds * RATE)) / RATE
        samples = 0.3 * np.sin(2 * np.pi * rng.uniform(150, 900) * t) + 0.03 * rng.normal(size=t.size)
        soundfile.write(directory / name, samples.astype(np.float32), RATE)
    return directory


@pytest.fixture(scope="module", params=[".onnx", ".pt"])
def artefact(request: pytest.FixtureRequest, run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """Each format exported once (the ONNX exporter takes seconds) and checked by export_run."""
    path, diff = export_run(run_dir, tmp_path_factory.mktemp("artefact") / f"model{request.param}")
    assert diff is not None
    return path, diff


def test_the_artefact_gives_pytorchs_probabilities(run_dir: Path, artefact: tuple[Path, float]) -> None:
    path, diff = artefact
    assert diff < TOLERANCE
    exported = ExportedClassifier(path)
    assert exported.format == format_of(path) and exported.classes == list(CLASSES)
    assert exported.metadata["thresholds"]["thresholds"]["racism"] == pytest.approx(0.45)
    assert exported.metadata["n_mels"] == 80 and exported.metadata["source_model"] == str((run_dir / "best").resolve())
    # Shapes the export never saw: one item, a full 30 s window, a batch of 7.
    model = load_model(run_dir).model
    check = compare_outputs(model, path, shapes=[(1, 3000), (7, 64), (1, 2)])
    assert check.max_abs_diff < TOLERANCE


def test_classify_runs_the_artefact_like_the_pytorch_model(
    run_dir: Path, audio: Path, tmp_path: Path, artefact: tuple[Path, float]
) -> None:
    path, _ = artefact
    torch_model, exported = load_model(run_dir), load_model(path)
    assert exported.classes == torch_model.classes
    np.testing.assert_allclose(exported.thresholds.values, torch_model.thresholds.values)
    expected = list(classify_inputs([str(audio)], torch_model.model, batch_size=4))
    got = list(classify_inputs([str(audio)], exported.model, batch_size=4))
    assert [r.file for r in got] == [r.file for r in expected]
    for mine, theirs in zip(got, expected, strict=True):
        assert mine.windows == theirs.windows
        np.testing.assert_allclose(mine.window_probs, theirs.window_probs, atol=TOLERANCE)
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(app, ["classify", str(audio), "--model", str(path), "--output", str(out), "--threads", "1",
                                      "--no-vad"])
    assert result.exit_code == 0, result.output
    assert "metadata" in result.output and "3 files classified, 0 without speech, 0 rejected" in " ".join(result.output.split())
    assert [json.loads(line)["n_windows"] for line in out.read_text().splitlines()] == [2, 1, 3]


def test_cli_export_prints_the_difference(run_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["export", str(run_dir / "final"), "--format", "torchscript",
                                      "--out", str(tmp_path / "m.ts")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "max abs diff vs PyTorch" in text
    diff = float(text.split("max abs diff vs PyTorch: ")[1].split()[0])
    assert diff < TOLERANCE
    assert "thresholds" not in ExportedClassifier(tmp_path / "m.ts").metadata  # final/ is not calibrated
    result = CliRunner().invoke(app, ["export", str(run_dir), "--out", str(tmp_path / "m.bin")])
    assert result.exit_code == 2 and ".onnx" in result.output


def test_an_unknown_artefact_is_refused(tmp_path: Path, tiny_whisper: Path) -> None:
    with pytest.raises(ValueError, match="ends in .onnx"):
        format_of(tmp_path / "model.bin")
    model = SpeechToxicityClassifier(load_speech_encoder(str(tiny_whisper)), len(CLASSES), TEXT_DIM)
    plain = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.trace(torch.nn.Linear(2, 2), torch.zeros(1, 2)), str(plain))
    with pytest.raises(ValueError, match="no voxtox metadata"):
        ExportedClassifier(plain)
    features, lengths = example_inputs(80, [(2, 50)])[0]
    assert features.shape == (2, 80, 50) and lengths[0] == 50 and 0 < lengths[1] <= 50
    assert export_model(model, tmp_path / "x.pt", metadata={"classes": list(CLASSES)}).exists()


@pytest.mark.parametrize("artefact", [".onnx"], indirect=True)
def test_int8_onnx_stays_close_and_classifies(run_dir: Path, audio: Path, artefact: tuple[Path, float], tmp_path: Path) -> None:
    path, _ = artefact
    int8 = quantize_onnx(path, tmp_path / "model-int8.onnx")
    exported = ExportedClassifier(int8)
    assert exported.metadata["quantized"].startswith("int8") and exported.classes == list(CLASSES)
    # Random 32-wide weights quantise worse than trained ones; this bounds gross errors only.
    assert compare_outputs(load_model(run_dir).model, int8).max_abs_diff < 0.15
    results = list(classify_inputs([str(audio)], exported))
    assert [len(r.windows) for r in results] == [2, 1, 3]
    with pytest.raises(ValueError, match="ONNX only"):
        export_model(load_model(run_dir).model, tmp_path / "x.pt", quantize=True)
