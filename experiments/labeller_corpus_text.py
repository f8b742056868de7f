"""The text half of the training-label question, without audio: how well USE labellers (a head
on the frozen encoder, or an adapted encoder through `TextLabeller`) label the sentences the
synthetic corpus' train split speaks (the seed corpus' `labeller_val` and `labeller_test`
families, `core/corpus/synth.py`), scored against their true labels.

    .venv/bin/python experiments/labeller_corpus_text.py NEW OLD --cache DIR

`experiments/training_labels.py` scores the pipeline's labels of *transcripts* of a generated
corpus; that needs the corpus and an ASR pass. This is its upper bound on true text (no ASR
errors, no segmentation): AP of the four toxic classes, mAP, per group (en, es+de), 95% bootstrap.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from labeller_real import labeller_probs  # experiments/labeller_real.py: any USE labeller kind
from voxtox.corpus.seed import family_split, generate_seed_corpus
from voxtox.labels import CLASSES, TOXIC_CLASSES
from voxtox.models.embedding_cache import EmbeddingCache
from voxtox.models.metrics import average_precision, bootstrap_ap, bootstrap_counts, metric_ci
from voxtox.models.text_encoder import UsemEncoder

GROUPS = {"en": ("en",), "es+de": ("es", "de")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("labellers", nargs="+", type=Path)
    parser.add_argument("--cache", required=True)
    args = parser.parse_args()
    parts = family_split(generate_seed_corpus(seed=0), seed=0)
    sentences = parts["labeller_val"] + parts["labeller_test"]
    cache = EmbeddingCache(UsemEncoder(), args.cache)
    cols = [CLASSES.index(c) for c in TOXIC_CLASSES]
    y = np.array([[c in s.labels for c in TOXIC_CLASSES] for s in sentences])
    langs = np.array([s.lang for s in sentences])
    print("| labeller | group | n | " + " | ".join(TOXIC_CLASSES) + " | mAP |\n|---|---|---|" + "---|" * 5)
    for path in args.labellers:
        probs = labeller_probs(path, [s.text for s in sentences], 128, cache)[:, cols]
        for group, members in GROUPS.items():
            rows = np.isin(langs, members)
            counts = bootstrap_counts(int(rows.sum()), 1000, 0)
            point = average_precision(y[rows], probs[rows])
            boots = bootstrap_ap(y[rows], probs[rows], counts)[0]
            cells = [metric_ci(float(point[c]), boots[:, c]) for c in range(len(cols))]
            cells.append(metric_ci(float(np.mean(point)), np.nanmean(boots, axis=1)))
            print(f"| {path.name} | {group} | {int(rows.sum())} | "
                  + " | ".join(f"{100 * m.point:.1f} [{100 * m.low:.1f}, {100 * m.high:.1f}]" for m in cells) + " |",
                  flush=True)


if __name__ == "__main__":
    main()
