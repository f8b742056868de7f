"""Does a reviewed 10% of the training clips make a better audio model? The trained model's test
mAP with and without review, with the paired-bootstrap CI of the difference (docs/review.md,
"Measured: the audio model").

    python experiments/review_audio.py --hours 0.5 --work /tmp/review-audio   # [--budget 0.1 --seed 0]

voxtox's own steps, in one process (one ephemeral Prefect API):
1. `voxtox synth`: an English voice-chat corpus, truth known for every utterance (espeak-ng);
2. `voxtox label` of its train / val / test audio (faster-whisper whisper-tiny.en, the shipped
   labeller), then `voxtox import-labels` of its truth. The val/test truth is what evaluation and
   the choice of best epoch read, as in every run; the train truth is read only by the simulated
   reviewer below (training never reads imported spans: `read_clip_index`);
3. `voxtox train --out runs/a` (whisper-tiny.en encoder, the demo's CPU sizes);
4. `voxtox review select --strategy combined --budget <10% of the train clips> --model runs/a`;
5. a simulated reviewer answers each chosen clip with its truth (the `segment_truth` view: the
   labels of the utterances it overlaps, as evaluation reads them), written as a Label Studio
   JSON export and brought in with `voxtox review import`;
6. `voxtox train --out runs/b`, the same settings and seed: the only change is the reviews;
7. `voxtox evaluate runs/a runs/b --split test`: AP per class and mAP with 95% bootstrap CIs,
   and the paired bootstrap of B − A, resampling whole sessions.
With `--control`, step 3 also trains `runs/a-reseeded`: runs/a's data and labels, another seed
(seed + 1000), evaluated beside B: how far a training seed alone moves test mAP, which the paired
bootstrap (over test sessions only) does not see.
Each step is skipped when its output is already there (run it again to finish a killed run).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score

from voxtox.corpus.synth import SynthConfig, load_manifest, synthesize_corpus
from voxtox.flows.evaluate import evaluate_flow
from voxtox.flows.synth import label_corpus
from voxtox.flows.train import train_flow
from voxtox.labels import CLASSES, TOXIC_CLASSES
from voxtox.models.review_select import select_for_review
from voxtox.settings import Settings, with_overrides
from voxtox.storage.catalog import Catalog
from voxtox.storage.clips import read_clip_index
from voxtox.storage.human_labels import import_truth_files_to_lake
from voxtox.storage.lake import target_for
from voxtox.storage.review_import import import_export_file
from voxtox.storage.runs import RunDir
from voxtox.storage.schema import human_label_column

#: The demo's CPU-sized training (flows/demo.py), the smallest offline Whisper for ASR and encoder.
TRAIN = {"encoder": "whisper-tiny.en", "epochs": 4, "batch_size": 8, "grad_accum": 1, "learning_rate": 3e-4,
         "warmup_ratio": 0.1, "num_workers": 0, "val_resamples": 200, "seed": 0}
SPLITS = {"train": 0.6, "val": 0.15, "test": 0.25}


def experiment_settings(work: Path) -> Settings:
    return with_overrides(
        Settings(data_dir=work / "data"), train=TRAIN, asr={"model": "whisper-tiny.en", "languages": ["en"]},
        evaluate={"resample_by": "source", "split": "test", "labels": "human"},
    )


class Clock:
    """Wall time per step, printed as it goes and kept for the summary."""

    def __init__(self) -> None:
        self.steps: dict[str, float] = {}

    def run(self, name: str, step, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN201
        started = time.perf_counter()
        result = step(*args, **kwargs)
        self.steps[name] = time.perf_counter() - started
        print(f"[{name}] {self.steps[name]:.0f} s", flush=True)
        return result


def make_corpus(corpus: Path, hours: float, seed: int) -> None:
    if not (corpus / "corpus.json").exists():
        synthesize_corpus(corpus, config=SynthConfig(hours=hours, langs=("en",), seed=seed, split_fractions=SPLITS,
                                                     toxic_share=0.5, session_s=(15.0, 40.0)))


def label_and_import(corpus: Path, settings: Settings) -> None:
    manifest = load_manifest(corpus)
    label_corpus(manifest, settings, ("train", "val", "test"))  # labelled sources are skipped
    import_truth_files_to_lake(manifest.truth_files("utterances", ("train", "val", "test")), target_for(settings))


def train(settings: Settings, out: Path) -> None:
    if not RunDir(out).is_finished():
        train_flow(out=str(out), settings=settings)


def train_truth(settings: Settings) -> dict[str, np.ndarray]:
    """Each train clip's truth: the labels of the utterances it overlaps (`segment_truth`)."""
    columns = ", ".join(human_label_column(c) for c in CLASSES)
    rows = Catalog.from_settings(settings).query(
        f"SELECT clip_id, {columns} FROM segment_truth WHERE split = 'train'").to_pylist()
    return {str(r["clip_id"]): np.array([bool(r[human_label_column(c)]) for c in CLASSES]) for r in rows}


def simulated_review(settings: Settings, model: Path, share: float, seed: int, work: Path) -> dict[str, int]:
    """`voxtox review select --strategy combined`, answered with the truth, `voxtox review import`."""
    truth = train_truth(settings)
    budget = max(1, round(share * len(truth)))
    chosen = select_for_review(settings, budget, "train", "combined", seed, model, work / "selected.jsonl")
    tasks = []
    for n, row in enumerate(chosen.rows):
        answer = [c for c, on in zip(CLASSES, truth[str(row["clip_id"])], strict=True) if on] or ["no_violation"]
        tasks.append({"id": n + 1, "data": {"clip_id": row["clip_id"]}, "annotations": [{
            "completed_by": "simulated-reviewer", "was_cancelled": False, "created_at": "2026-12-07T05:00:00Z",
            "result": [{"from_name": "labels", "to_name": "audio", "type": "choices", "value": {"choices": answer}}]}]})
    export = work / "simulated-export.json"
    export.write_text(json.dumps(tasks))
    report = import_export_file(settings, export)
    changed = sum(sorted(row["labels"]) != sorted(task["annotations"][0]["result"][0]["value"]["choices"])
                  for row, task in zip(chosen.rows, tasks, strict=True))
    return {"train_clips": len(truth), "reviewed": report.n_clips, "labels_changed": changed}


def training_label_map(settings: Settings) -> float:
    """mAP (4 toxic classes) of what training reads as labels, against the truth."""
    truth = train_truth(settings)
    index = read_clip_index(Catalog.from_settings(settings), "train", "TRUE")
    rows = [i for i, c in enumerate(index.clip_ids) if c in truth]
    want = np.array([truth[index.clip_ids[i]] for i in rows])
    aps = [average_precision_score(want[:, CLASSES.index(c)], index.labels[rows, CLASSES.index(c)])
           for c in TOXIC_CLASSES if want[:, CLASSES.index(c)].any()]
    return float(np.mean(aps))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=0.5, help="hours of synthetic audio in all")
    parser.add_argument("--budget", type=float, default=0.10, help="share of the train clips reviewed")
    parser.add_argument("--seed", type=int, default=0, help="corpus, selection and training seed")
    parser.add_argument("--work", type=Path, required=True, help="corpus, data dir and runs go here")
    parser.add_argument("--control", action="store_true", help="also train runs/a with another seed, before any review")
    parser.add_argument("--alpha", type=float, default=0.1, help="text injection's α for A and B (1: no text injection)")
    args = parser.parse_args()
    settings = with_overrides(experiment_settings(args.work), train={"seed": args.seed, "alpha": args.alpha})
    clock, runs = Clock(), args.work / "runs"
    clock.run("synth", make_corpus, args.work / "corpus", args.hours, args.seed)
    clock.run("label + import truth", label_and_import, args.work / "corpus", settings)
    before = training_label_map(settings)
    clock.run("train runs/a", train, settings, runs / "a")
    compared = [runs / "a", runs / "b"]
    if args.control:
        if (args.work / "selected.jsonl").exists() and not RunDir(runs / "a-reseeded").is_finished():
            raise SystemExit("--control needs runs/a-reseeded trained before the reviews: start in a new --work")
        reseeded = with_overrides(settings, train={"seed": args.seed + 1000})
        clock.run("train runs/a-reseeded", train, reseeded, runs / "a-reseeded")
        compared.append(runs / "a-reseeded")
    reviewed = clock.run("select + review + import", simulated_review, settings, runs / "a", args.budget,
                         args.seed, args.work) if not (args.work / "selected.jsonl").exists() else {}
    after = training_label_map(settings)
    clock.run("train runs/b", train, settings, runs / "b")
    evaluation = clock.run("evaluate", evaluate_flow, runs=[str(r) for r in compared], settings=settings,
                           out=str(args.work / "evaluation"))
    print(Path(evaluation.report).read_text())
    print(json.dumps({"reviewed": reviewed, "training_label_mAP": {"before": round(before, 4), "after": round(after, 4)},
                      "wall_s": {k: round(v) for k, v in clock.steps.items()}}, indent=1))


if __name__ == "__main__":
    main()
