"""How noisy the training labels are: the pipeline's labels of the train split's sentence clips
against the synthetic truth of the utterances they hold (the paper trains on such labels).

    python experiments/training_labels.py data/repro/corpus-en --data-dir data/repro/data

A clip's true labels are the union of the truth utterances overlapping it by at least half of the
shorter of the two (the rule of the catalog's `segment_truth` view). Prints, per toxic class,
the true and the pipeline's positives, the pipeline's precision and recall (its decisions) and
the AP of its probabilities, with the word error rate of the clips' transcripts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import duckdb
import jiwer
import numpy as np
import pyarrow as pa
from sklearn.metrics import average_precision_score

from voxtox.labels import TOXIC_CLASSES
from voxtox.settings import Settings
from voxtox.storage.catalog import TRUTH_MIN_OVERLAP, Catalog
from voxtox.storage.schema import label_column, prob_column


def truth_table(corpus: Path, split: str) -> pa.Table:
    rows = [json.loads(line) for line in (corpus / "truth" / f"utterances-{split}.jsonl").read_text().splitlines()]
    return pa.table({
        "source_sha256": [r["audio_sha256"] for r in rows],
        "start_s": [r["start_s"] for r in rows],
        "end_s": [r["end_s"] for r in rows],
        "text": [r["text"] for r in rows],
        **{f"true_{c}": [c in r["labels"] for r in rows] for c in TOXIC_CLASSES},
    })


def joined(catalog: Catalog, truth: pa.Table, split: str, condition: str) -> pa.Table:
    """Each sentence clip of `split` with the union of its overlapping truth utterances."""
    overlap = "least(c.end_s, t.end_s) - greatest(c.start_s, t.start_s)"
    shorter = "least(c.end_s - c.start_s, t.end_s - t.start_s)"
    counts = f"{overlap} >= {TRUTH_MIN_OVERLAP} * {shorter}"
    columns = ", ".join(
        f"any_value(c.{prob_column(n)}) AS {prob_column(n)}, any_value(c.{label_column(n)}) AS {label_column(n)}, "
        f"coalesce(bool_or(t.true_{n}) FILTER (WHERE {counts}), false) AS true_{n}"
        for n in TOXIC_CLASSES
    )
    clips = catalog.query(
        "SELECT clip_id, source_sha256, start_s, end_s, transcript, "
        + ", ".join(f"{prob_column(n)}, {label_column(n)}" for n in TOXIC_CLASSES)
        + f" FROM clips WHERE split = '{split}' AND segment_kind = 'sentence' AND ({condition})"
    )
    with duckdb.connect() as con:
        con.register("c", clips)
        con.register("t", truth)
        return con.execute(
            f"SELECT c.clip_id, any_value(c.transcript) AS transcript, "
            f"string_agg(t.text, ' ' ORDER BY t.start_s) FILTER (WHERE {counts}) AS truth_text, {columns} "
            "FROM c LEFT JOIN t USING (source_sha256) GROUP BY c.clip_id"
        ).to_arrow_table()


def report(table: pa.Table) -> str:
    lines = [f"{table.num_rows} train sentence clips",
             "| class | true positives | pipeline positives | precision | recall | AP of probabilities |",
             "|---|---|---|---|---|---|"]
    aps = []
    for name in TOXIC_CLASSES:
        truth = np.asarray(table[f"true_{name}"].to_pylist(), bool)
        decided = np.asarray(table[label_column(name)].to_pylist(), bool)
        probs = np.asarray(table[prob_column(name)].to_pylist(), float)
        hits = int((truth & decided).sum())
        precision = hits / max(1, decided.sum())
        recall = hits / max(1, truth.sum())
        ap = average_precision_score(truth, probs) if truth.any() else float("nan")
        aps.append(ap)
        lines.append(f"| {name} | {truth.sum()} | {decided.sum()} | {100 * precision:.1f} | {100 * recall:.1f} | {100 * ap:.1f} |")
    lines.append(f"| mAP (4 toxic) | | | | | {100 * np.nanmean(aps):.1f} |")
    pairs = [(t or "", h or "") for t, h in zip(table["truth_text"].to_pylist(), table["transcript"].to_pylist(), strict=True)]
    normalise = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(),
                               jiwer.Strip(), jiwer.ReduceToListOfListOfWords()])
    kept = [(t, h) for t, h in pairs if t.strip()]
    wer = jiwer.wer([t for t, _ in kept], [h for _, h in kept], reference_transform=normalise,
                    hypothesis_transform=normalise)
    lines.append(f"\nWER of the clips' transcripts against the text of the utterances they hold: {100 * wer:.1f}% "
                 f"({len(pairs) - len(kept)} clips overlap no utterance)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--filter", default="TRUE", help="SQL on clips")
    args = parser.parse_args()
    settings = Settings(data_dir=args.data_dir)
    catalog = Catalog.from_settings(settings)
    print(report(joined(catalog, truth_table(args.corpus, args.split), args.split, args.filter)))


if __name__ == "__main__":
    main()
