"""`voxtox export`: a run's classifier as an ONNX or TorchScript artefact (models/export.py), with
its calibrated thresholds in the artefact's metadata."""

from __future__ import annotations

import json
from pathlib import Path

from voxtox.models.export import compare_outputs, export_model, format_of
from voxtox.models.trainer import load_classifier
from voxtox.storage.runs import THRESHOLDS_FILE, resolve_model_dir




def export_run(
    model_spec: str | Path, out: Path, fmt: str | None = None, check: bool = True, quantize: bool = False
) -> tuple[Path, float | None]:
    """Export a run's (or model dir's) classifier; thresholds.json, when present, goes into the
    artefact's metadata. Returns the file and the largest |exported − PyTorch| probability."""
    directory = resolve_model_dir(model_spec)
    model = load_classifier(directory)
    manifest = json.loads((directory / "model.json").read_text())
    metadata: dict[str, object] = {"classes": manifest["classes"], "source_model": str(directory),
                                   "window_s": 15.0, "aggregation": "max"}
    thresholds_path = directory / THRESHOLDS_FILE
    if thresholds_path.is_file():
        metadata["thresholds"] = json.loads(thresholds_path.read_text())
    fmt = fmt or format_of(out)
    path = export_model(model, out, fmt, metadata, quantize)  # type: ignore[arg-type]
    return path, (compare_outputs(model, path).max_abs_diff if check else None)
