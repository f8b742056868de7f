"""Does ONNX Runtime int8 keep the model's decisions? The question behind `voxtox stream serve`'s
default backend (docs/streaming.md, "Scoring path"): a trained run's model scored on a split's
evaluation segments in PyTorch (fp32) and through its dynamic-int8 ONNX export (what the server
makes with `backend = "onnx-int8"`), windows as the paper's (15 s, max over windows), decisions
at the run's calibrated thresholds.

Reported: agreement of the decisions (segment x class and window x class), the largest
probability difference, AP per class and mAP of both with the paired-bootstrap 95% CI of the
difference (int8 - PyTorch, resampling whole sessions), and the time per window of each.

    python experiments/stream_int8_agreement.py --data-dir voxtox-demo            # after `voxtox demo`
    python experiments/stream_int8_agreement.py --data-dir voxtox-demo --split val --labels pipeline

The rule the server's default follows: int8 is the default when at least 99% of the segment
decisions agree and the mAP difference's CI includes 0 with its point within 0.01.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from voxtox.settings import Settings
from voxtox.labels import CLASSES, TOXIC_CLASSES
from voxtox.models.export import ExportedClassifier, export_model
from voxtox.models.inference import WindowScorer
from voxtox.models.metrics import average_precision, paired_difference
from voxtox.models.trainer import load_classifier
from voxtox.storage.catalog import Catalog
from voxtox.models.classify import read_thresholds
from voxtox.storage.runs import resolve_model_dir
from voxtox.models.scoring import read_eval_set, read_segment_audio

AGREEMENT_NEEDED = 0.99
MAP_TOLERANCE = 0.01


def score(scorer: WindowScorer, clips: list[np.ndarray]) -> tuple[list[np.ndarray], float]:
    """Per clip its (windows, classes) probabilities, and seconds per window."""
    started = time.perf_counter()
    windows = []
    for begin in range(0, len(clips), 16):
        windows += scorer.score_many(clips[begin : begin + 16])
    return windows, (time.perf_counter() - started) / max(1, sum(len(w) for w in windows))


def map_of(ap: np.ndarray) -> float:
    columns = [CLASSES.index(c) for c in TOXIC_CLASSES]
    return float(np.nanmean(ap[columns]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("voxtox-demo"))
    parser.add_argument("--run", type=Path, help="[default: <data-dir>/runs/current]")
    parser.add_argument("--split", default="test")
    parser.add_argument("--labels", default="human", choices=("human", "pipeline"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--resamples", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model_dir = resolve_model_dir(args.run or args.data_dir / "runs" / "current")
    thresholds = read_thresholds(model_dir / "thresholds.json", list(CLASSES))
    catalog = Catalog.from_settings(Settings(data_dir=args.data_dir))
    eval_set = read_eval_set(catalog, args.split, args.labels)
    clips = [read_segment_audio(f, int(r), c) for f, r, c in zip(eval_set.files, eval_set.rows, eval_set.clip_ids,
                                                                   strict=True)]
    model = load_classifier(model_dir)
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        onnx_path = export_model(model, Path(scratch) / "model-int8.onnx", metadata={"classes": list(CLASSES)},
                                 quantize=True)
        export_s = time.perf_counter() - started
        torch_windows, torch_s = score(WindowScorer(model), clips)
        int8_windows, int8_s = score(WindowScorer(ExportedClassifier(onnx_path, args.threads)), clips)
    report(args, model_dir, thresholds.values, eval_set, torch_windows, int8_windows, (torch_s, int8_s, export_s))


def report(args: argparse.Namespace, model_dir: Path, thresholds: np.ndarray, eval_set, torch_windows: list,  # noqa: ANN001
           int8_windows: list, seconds: tuple[float, float, float]) -> None:
    fp32 = np.stack([w.max(axis=0) for w in torch_windows])
    int8 = np.stack([w.max(axis=0) for w in int8_windows])
    window_fp32, window_int8 = np.concatenate(torch_windows), np.concatenate(int8_windows)
    segment_agree = (fp32 >= thresholds) == (int8 >= thresholds)
    window_agree = (window_fp32 >= thresholds) == (window_int8 >= thresholds)
    y = eval_set.truth
    difference = paired_difference(y, fp32, int8, list(CLASSES), list(TOXIC_CLASSES), args.resamples,
                                   groups=eval_set.sources)
    ap_fp32, ap_int8 = average_precision(y, fp32), average_precision(y, int8)
    print(f"model {model_dir}; split {args.split} ({args.labels} labels): {len(eval_set)} segments, "
          f"{len(window_fp32)} windows, {len(set(eval_set.sources))} sessions")
    print(f"decisions agreeing: segments {segment_agree.mean():.4f} ({int((~segment_agree).sum())} of "
          f"{segment_agree.size} differ), windows {window_agree.mean():.4f} ({int((~window_agree).sum())} of "
          f"{window_agree.size} differ)")
    largest = np.abs(window_int8 - window_fp32).max()
    print(f"largest |p_int8 - p_fp32|: {largest:.4f} (mean {np.abs(window_int8 - window_fp32).mean():.4f})")
    margin = np.abs(fp32 - thresholds)
    print(f"segment decisions whose fp32 probability is within that of its threshold: "
          f"{int((margin <= largest).sum())} of {margin.size}; the differing ones were "
          f"{', '.join(f'{m:.4f}' for m in margin[~segment_agree])} from it")
    print(f"seconds per window: PyTorch {seconds[0]:.3f}, ONNX Runtime int8 {seconds[1]:.3f} "
          f"({seconds[0] / seconds[1]:.2f}x); export + quantisation {seconds[2]:.0f} s")
    print(f"\n{'class':<16} {'positives':>9} {'AP fp32':>8} {'AP int8':>8} {'int8 - fp32 [95% CI]':>28}")
    for index, name in enumerate(CLASSES):
        ci = difference[name]
        print(f"{name:<16} {int(y[:, index].sum()):>9} {ap_fp32[index]:>8.3f} {ap_int8[index]:>8.3f} "
              f"{ci.point:>+10.4f} [{ci.low:+.4f}, {ci.high:+.4f}]")
    ci = difference["mAP"]
    print(f"{'mAP':<16} {'':>9} {map_of(ap_fp32):>8.3f} {map_of(ap_int8):>8.3f} "
          f"{ci.point:>+10.4f} [{ci.low:+.4f}, {ci.high:+.4f}]")
    keeps = (segment_agree.mean() >= AGREEMENT_NEEDED and ci.low <= 0 <= ci.high
             and abs(ci.point) <= MAP_TOLERANCE)
    print(f"\nint8 keeps the decisions (>= {AGREEMENT_NEEDED:.0%} agree, mAP CI includes 0, |point| <= "
          f"{MAP_TOLERANCE}): {'yes' if keeps else 'no'}")


if __name__ == "__main__":
    main()
