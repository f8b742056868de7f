"""Export the trained audio-only classifier to a portable artefact, and run such an artefact.

The artefact maps Whisper log-mel features to class probabilities:

    features       float32 (batch, n_mels, frames), right-padded with zeros, frames <= 3000
    frame_lengths  int64   (batch,), each item's real frame count
    -> probabilities float32 (batch, classes), sigmoid of the classifier's logits

Batch and frames are dynamic axes. Feature extraction (`whisper_encoder.log_mel` of 16 kHz mono
audio, 15 s windows) stays outside the graph, as in faster-whisper/CTranslate2 serving.

Formats: ONNX (torch's dynamo exporter, which needs `onnx` and `onnxscript`; run with
onnxruntime) or TorchScript (`torch.jit.trace`; run with `torch.jit.load`, no voxtox needed).
Both carry voxtox's metadata (classes, mel bins, window length, thresholds when the model dir
has `thresholds.json`) inside the file: ONNX `metadata_props` key `voxtox`, TorchScript extra
file `voxtox.json`.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from voxtox.audio import SAMPLE_RATE
from voxtox.models.speech_classifier import SpeechToxicityClassifier
from voxtox.models.whisper_encoder import MAX_FRAMES, log_mel, mel_filters

ExportFormat = Literal["onnx", "torchscript"]
FORMATS: tuple[str, ...] = ("onnx", "torchscript")
METADATA_KEY = "voxtox"
TORCHSCRIPT_EXTRA = "voxtox.json"
INPUT_NAMES = ("features", "frame_lengths")
OUTPUT_NAME = "probabilities"


class ProbabilityModel(nn.Module):
    """The classifier with a plain tensor-in, tensor-out forward: probabilities, no dataclass."""

    def __init__(self, model: SpeechToxicityClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: Tensor, frame_lengths: Tensor) -> Tensor:
        return torch.sigmoid(self.model(features, frame_lengths).logits)


def format_of(path: Path) -> ExportFormat:
    """The artefact format a file name implies: .onnx is ONNX, .pt/.ts/.torchscript TorchScript."""
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix in (".pt", ".ts", ".torchscript", ".jit"):
        return "torchscript"
    raise ValueError(f"{path}: an exported model ends in .onnx (ONNX) or .pt (TorchScript)")


def example_inputs(n_mels: int, shapes: list[tuple[int, int]], seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    """Realistic log-mel batches: per (batch, frames) shape, tones in noise, the first item full
    length and the others shorter (padded), as a WindowScorer batch is."""
    rng = np.random.default_rng(seed)
    filters = mel_filters(n_mels)
    batches = []
    for batch, frames in shapes:
        lengths = [frames] + [int(rng.integers(max(2, frames // 3), frames + 1)) for _ in range(batch - 1)]
        features = torch.zeros(batch, n_mels, frames)
        for row, length in enumerate(lengths):
            t = np.arange(length * 160) / SAMPLE_RATE
            audio = 0.2 * np.sin(2 * np.pi * rng.uniform(100, 1000) * t) + 0.05 * rng.normal(size=t.size)
            mel = log_mel(audio.astype(np.float32), filters)
            features[row, :, : mel.shape[1]] = mel[:, :length]
        batches.append((features, torch.tensor(lengths, dtype=torch.int64)))
    return batches


#: Shapes the export is checked on: several batch sizes and lengths, one a full 15 s window.
CHECK_SHAPES = [(2, 1500), (3, 401), (1, 37), (4, 1200)]


def export_model(
    model: SpeechToxicityClassifier,
    out: Path,
    fmt: ExportFormat | None = None,
    metadata: dict[str, object] | None = None,
    quantize: bool = False,
) -> Path:
    """Write `model` as ONNX or TorchScript to `out` (format from the suffix when not given).

    `quantize` (ONNX only): onnxruntime's dynamic int8 quantisation of the weights of the
    MatMul/Gemm layers (activations quantised per batch at run time), as CTranslate2's int8 does
    for the ASR model; probabilities move slightly (`compare_outputs` says by how much)."""
    fmt = fmt or format_of(out)
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if quantize and fmt != "onnx":
        raise ValueError("int8 quantisation is offered for ONNX only")
    out.parent.mkdir(parents=True, exist_ok=True)
    wrapped = ProbabilityModel(model.eval().cpu()).eval()
    n_mels = model.encoder.config.num_mel_bins
    meta = {
        "classes": None,
        "n_mels": n_mels,
        "sample_rate": SAMPLE_RATE,
        "max_frames": MAX_FRAMES,
        "inputs": list(INPUT_NAMES),
        "output": OUTPUT_NAME,
        "format": fmt,
        "quantized": None,
    } | (metadata or {})
    example = example_inputs(n_mels, [(2, 300)])[0]
    staging = out.with_name(f".{out.name}.tmp")
    try:
        if fmt == "onnx":
            _export_onnx(wrapped, example, staging, meta)
            if quantize:
                quantize_onnx(staging)
        else:
            _export_torchscript(wrapped, example, staging, meta)
        staging.replace(out)
    finally:
        staging.unlink(missing_ok=True)
    return out


def _export_onnx(wrapped: nn.Module, example: tuple[Tensor, Tensor], out: Path, meta: dict) -> None:
    import onnx

    # The exporter logs a warning per torchvision operator it cannot register (not installed).
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)

    batch = torch.export.Dim("batch", min=1, max=4096)
    frames = torch.export.Dim("frames", min=2, max=MAX_FRAMES)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapped,
            example,
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"features": {0: batch, 2: frames}, "frame_lengths": {0: batch}},
            dynamo=True,
            verbose=False,
        )
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    onnx.save_model(proto, str(out))


def quantize_onnx(path: Path, out: Path | None = None) -> Path:
    """onnxruntime's dynamic int8 quantisation of an exported float ONNX file (in place, or
    to `out`); its voxtox metadata is kept and says so."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = out or path
    proto = onnx.load(str(path))
    props = {entry.key: entry.value for entry in proto.metadata_props}
    meta = json.loads(props.get(METADATA_KEY, "{}")) | {"quantized": "int8 dynamic (onnxruntime)"}
    # The dynamo exporter's intermediate shape annotations trip onnx's strict shape inference,
    # which the quantiser runs; without them it infers the shapes afresh.
    del proto.graph.value_info[:]
    staging = out.with_name(f".{out.name}.float")
    quantized = out.with_name(f".{out.name}.int8")
    try:
        onnx.save_model(proto, str(staging))
        quantize_dynamic(str(staging), str(quantized), weight_type=QuantType.QInt8)
    except BaseException:
        quantized.unlink(missing_ok=True)
        raise
    finally:
        staging.unlink(missing_ok=True)
    proto = onnx.load(str(quantized))
    for entry in list(proto.metadata_props):
        if entry.key == METADATA_KEY:
            proto.metadata_props.remove(entry)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    onnx.save_model(proto, str(out))
    quantized.unlink()
    return out


def _export_torchscript(wrapped: nn.Module, example: tuple[Tensor, Tensor], out: Path, meta: dict) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about shape arithmetic (checked below)
        traced = torch.jit.trace(wrapped, example, check_trace=False)
        torch.jit.save(traced, str(out), _extra_files={TORCHSCRIPT_EXTRA: json.dumps(meta)})


# --- running an exported artefact ------------------------------------------------------------


def _onnx_session(path: Path, threads: int | None, device: str) -> Any:
    """An onnxruntime session on the CPU, or on CUDA (operators CUDA lacks run on the CPU);
    asked for cuda, a session that fell back to the CPU altogether is refused."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    # Sleep rather than spin between operators: on a shared CPU, spinning threads take
    # cores from everything else (and from each other).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    session = onnxruntime.InferenceSession(str(path), options, providers=providers)
    if device == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
        raise ValueError(f"{path}: onnxruntime {onnxruntime.__version__} could not start CUDAExecutionProvider "
                         f"(available: {', '.join(onnxruntime.get_available_providers())}); "
                         "install onnxruntime-gpu on a machine with a CUDA GPU, or use device cpu")
    return session


class ExportedClassifier(nn.Module):
    """An exported artefact behind the interface `WindowScorer` uses (`predict_proba`,
    `head.out_features`, `encoder.config.num_mel_bins`), so windowed scoring is shared."""

    def __init__(self, path: Path, threads: int | None = None, device: str = "cpu") -> None:
        super().__init__()
        self.path = Path(path)
        self.format = format_of(self.path)
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda, not {device!r}")
        self.device = device  # where it scores: onnxruntime's CUDA provider, or the CPU
        if self.format == "onnx":
            self.session = _onnx_session(self.path, threads, device)
            props = self.session.get_modelmeta().custom_metadata_map
            self.metadata = json.loads(props.get(METADATA_KEY, "{}"))
        else:
            if device != "cpu":  # a trace may hold the CPU as a constant: not run elsewhere untested
                raise ValueError(f"{self.path}: a TorchScript export is scored on the CPU only; "
                                 "give the run directory or an .onnx export for cuda")
            extra = {TORCHSCRIPT_EXTRA: ""}
            self.module = torch.jit.load(str(self.path), map_location="cpu", _extra_files=extra)
            self.metadata = json.loads(extra[TORCHSCRIPT_EXTRA] or "{}")
        if "n_mels" not in self.metadata:
            raise ValueError(f"{self.path}: no voxtox metadata; export it with `voxtox export`")
        classes = self.metadata.get("classes") or []
        self.head = SimpleNamespace(out_features=len(classes))
        self.encoder = SimpleNamespace(config=SimpleNamespace(num_mel_bins=int(self.metadata["n_mels"])))

    @property
    def classes(self) -> list[str]:
        return list(self.metadata["classes"])

    @torch.no_grad()
    def predict_proba(self, features: Tensor, frame_lengths: Tensor) -> Tensor:
        if self.format == "onnx":
            inputs = {
                INPUT_NAMES[0]: features.cpu().numpy().astype(np.float32, copy=False),
                INPUT_NAMES[1]: frame_lengths.cpu().numpy().astype(np.int64, copy=False),
            }
            return torch.from_numpy(self.session.run([OUTPUT_NAME], inputs)[0])
        return self.module(features.cpu().float(), frame_lengths.cpu().long())


@dataclass
class ExportCheck:
    max_abs_diff: float
    shapes: list[tuple[int, int]]


def compare_outputs(
    model: SpeechToxicityClassifier, path: Path, shapes: list[tuple[int, int]] | None = None
) -> ExportCheck:
    """Largest absolute difference between PyTorch's and the artefact's probabilities over
    batches of several sizes and lengths (none of them the shape the export traced)."""
    shapes = shapes or CHECK_SHAPES
    exported = ExportedClassifier(path)
    model = model.eval().cpu()
    worst = 0.0
    for features, lengths in example_inputs(model.encoder.config.num_mel_bins, shapes, seed=1):
        expected = model.predict_proba(features, lengths)
        got = exported.predict_proba(features, lengths)
        if got.shape != expected.shape:
            raise AssertionError(f"{path}: output shape {tuple(got.shape)}, PyTorch gives {tuple(expected.shape)}")
        worst = max(worst, float((got.float() - expected).abs().max()))
    return ExportCheck(worst, shapes)
