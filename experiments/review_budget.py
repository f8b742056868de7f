"""Is the review loop worth a reviewer's hour? Training-label mAP against the truth after a
simulated reviewer (who answers with the truth) reviews 0/2/5/10/20% of the training clips,
chosen by each `voxtox review select` strategy (docs/review.md, "Measured").

    python experiments/review_budget.py --per-lang 300 --out table.md   # [--seed 1]

The corpus: the sentences `voxtox synth` speaks in its train split (the labeller's held-out
families, five languages, truth known), labelled by the shipped labeller (`voxtox-labeller`) from
their text, so a clip's transcript is exact (no ASR errors: they would only add noise to both
sides). The clips go into a real data dir; selection (quotas, strategies), the import of the
reviewer's answers and the training labels (`read_clip_index`, what `voxtox train` reads) are
voxtox's own code. The second opinion of `disagreement` and `combined` is voxtox's cross-fitting
(5 folds by recording, a logistic probe per class, models/cross_fit.py) on the clips' text
embeddings: the corpus has no real audio here, so what is measured is the selection rule given an
out-of-sample model trained on the pipeline's labels, not the audio encoder's embeddings.
"""

from __future__ import annotations

from contextlib import closing

import argparse
import random
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
from sklearn.metrics import average_precision_score

from voxtox.corpus.seed import LANGS, SeedSentence
from voxtox.corpus.synth import sentence_pools
from voxtox.labels import CLASSES, TOXIC_CLASSES
from voxtox.models.cross_fit import cross_fitted_probs
from voxtox.settings import Settings
from voxtox.storage.catalog import Catalog
from voxtox.storage.clips import read_clip_index
from voxtox.storage.schema import clips_schema, label_column, prob_column
from voxtox.storage import lake
from voxtox.storage.review_import import import_answers
from voxtox.models.review_select import (
    Candidates,
    centred_scores,
    combined_doubt,
    decided_class,
    disagreement_doubt,
    labeller_thresholds,
    quota_pick,
    read_candidates,
    uncertainty_doubt,
)
from voxtox.tasks.write import encode_flac

BUDGETS = (0.0, 0.02, 0.05, 0.10, 0.20)
STRATEGIES = ("random", "uncertainty", "disagreement", "combined")
#: Also measured: `voxtox review select --no-quotas` for combined and uncertainty; the expected
#: number of wrong labels under the labeller alone and under both opinions over all six classes
#: (what `combined` would be without its focus on the four toxic classes); combined without its
#: weights by class rarity; and, as a ceiling no strategy can pass, an oracle that knows the
#: truth and picks the clips with the most wrong toxic labels.
COMBINED_NO_QUOTAS = "combined, no quotas"
NO_QUOTAS = "uncertainty, no quotas"
EXPECTED = "expected errors, labeller alone"
BOTH_ALL = "expected errors, both opinions, all 6 classes"
UNWEIGHTED = "combined, classes not weighted, no quotas"
ORACLE = "oracle (knows the truth: ceiling)"
VARIANTS = (COMBINED_NO_QUOTAS, UNWEIGHTED, NO_QUOTAS, EXPECTED, BOTH_ALL, ORACLE)
UNQUOTED = (COMBINED_NO_QUOTAS, UNWEIGHTED, NO_QUOTAS, ORACLE)
LABELLER = "voxtox-labeller"



def _clear_reviews(settings: Settings) -> None:
    """Every review gone, for the next strategy's run."""
    target = lake.target_for(settings)
    with closing(lake.connect(target)) as con:
        if "reviews" in lake.tables(con):
            con.execute("DELETE FROM lake.reviews")

def corpus(per_lang: int, seed: int) -> list[SeedSentence]:
    pools = sentence_pools(LANGS, seed)["train"]
    rng = random.Random(seed)
    return [s for lang in LANGS for s in rng.sample(pools[lang], min(per_lang, len(pools[lang])))]


def truth_matrix(sentences: list[SeedSentence]) -> np.ndarray:
    truth = np.array([[c in s.labels for c in CLASSES] for s in sentences])
    truth[:, CLASSES.index("no_violation")] |= ~truth.any(axis=1)
    return truth


def write_clips(settings: Settings, sentences: list[SeedSentence], probs: np.ndarray, labels: np.ndarray,
                embeddings: np.ndarray) -> None:
    """The sentences as train clips (0.1 s of silence each: the audio plays no part here)."""
    silence = {"bytes": encode_flac(np.zeros(1600, np.float32)), "path": "silence.flac"}
    rows = [{
        "clip_id": f"clip-{i:05d}", "source_sha256": f"session-{i // 20:04d}", "source_uri": "synthetic://review",
        "segment_kind": "sentence", "start_s": 0.0, "end_s": 0.1, "duration_s": 0.1, "lang": s.lang,
        "transcript": s.text, **{prob_column(c): float(probs[i, k]) for k, c in enumerate(CLASSES)},
        **{label_column(c): bool(labels[i, k]) for k, c in enumerate(CLASSES)}, "labeller_model": LABELLER,
        "text_embedding": embeddings[i].tolist(), "audio": silence, "labelled_at": datetime(2026, 12, 6, tzinfo=UTC),
    } for i, s in enumerate(sentences)]
    table = pa.Table.from_pylist(rows, clips_schema(embeddings.shape[1]))
    table = table.append_column("split", pa.array(["train"] * len(rows))).append_column("date", pa.array(["2026-12-06"] * len(rows)))
    target = lake.target_for(settings)
    with closing(lake.connect(target)) as con:
        lake.replace_key(con, target, "review-experiment", {"clips": table})


def out_of_fold(embeddings: np.ndarray, labels: np.ndarray, seed: int) -> np.ndarray:
    """`voxtox review select`'s cross-fitting (models/cross_fit.py: 5 folds by recording, a
    standardised logistic probe per class), on the clips' text embeddings instead of audio ones."""
    sessions = [f"session-{i // 20:04d}" for i in range(len(labels))]  # write_clips' recordings
    return cross_fitted_probs(embeddings, labels, sessions, folds=5, seed=seed)


def training_map(settings: Settings, truth: np.ndarray, order: dict[str, int]) -> float:
    index = read_clip_index(Catalog.from_settings(settings), "train", "TRUE")
    rows = [order[c] for c in index.clip_ids]
    aps = [average_precision_score(truth[rows, CLASSES.index(c)], index.labels[:, CLASSES.index(c)]) for c in TOXIC_CLASSES]
    return float(np.mean(aps))


def doubt_of(strategy: str, settings: Settings, candidates: Candidates, rows: list[int], truth: np.ndarray,
             oof: np.ndarray, seed: int) -> np.ndarray:
    """A strategy's doubt per candidate: `voxtox review select`'s own functions where it is one of
    its strategies, with `oof` (cross-fitted on text embeddings) as the audio opinion."""
    if strategy == "random":
        return np.random.default_rng([seed, 1]).random(len(rows))
    thresholds = labeller_thresholds(candidates, settings)
    if strategy in ("uncertainty", NO_QUOTAS):
        return uncertainty_doubt(candidates, thresholds)
    labeller, audio, labels = centred_scores(candidates, thresholds), oof[rows], candidates.labels
    if strategy == "disagreement":
        return disagreement_doubt(audio, labels)
    if strategy in ("combined", COMBINED_NO_QUOTAS):
        return combined_doubt(labeller, audio, labels)
    toxic = [CLASSES.index(c) for c in TOXIC_CLASSES]
    if strategy == EXPECTED:
        return np.minimum(labeller, 1 - labeller).sum(axis=1)
    wrong = np.where(labels, 1 - (labeller + audio) / 2, (labeller + audio) / 2)
    if strategy == BOTH_ALL:
        return wrong.sum(axis=1)
    if strategy == UNWEIGHTED:
        return wrong[:, toxic].sum(axis=1)
    return (labels[:, toxic] != truth[rows][:, toxic]).sum(axis=1).astype(float)  # the oracle


def review(settings: Settings, strategy: str, budget: int, truth: np.ndarray, order: dict[str, int],
           oof: np.ndarray, seed: int) -> None:
    """Choose `budget` clips as `voxtox review select` does, answer them with the truth, import."""
    candidates = read_candidates(settings, "train")
    rows = [order[str(r["clip_id"])] for r in candidates.rows]
    doubt = doubt_of(strategy, settings, candidates, rows, truth, oof, seed)
    strata = [f"{r['lang']}/{decided_class(p, y)}" for r, p, y in zip(candidates.rows, candidates.probs, candidates.labels, strict=True)]
    picked = quota_pick(["all"] * len(strata) if strategy in UNQUOTED else strata, doubt, budget, seed)
    tasks = [{"id": n + 1, "data": {"clip_id": candidates.rows[i]["clip_id"]}, "annotations": [{
        "completed_by": "simulated-reviewer", "was_cancelled": False, "created_at": "2026-12-06T12:00:00Z",
        "result": [{"from_name": "labels", "to_name": "audio", "type": "choices",
                    "value": {"choices": [c for k, c in enumerate(CLASSES) if truth[rows[i], k]]}}]}]}
             for n, i in enumerate(picked)]
    import_answers(settings, tasks, f"simulated-{strategy}-{budget}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-lang", type=int, default=300, help="training sentences per language")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--random-seeds", type=int, default=3, help="draws averaged for the random strategy")
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    args = parser.parse_args()

    from voxtox.models.text_encoder import shared_usem
    from voxtox.tasks.labeller import score

    settings = Settings(data_dir=Path(tempfile.mkdtemp(prefix="voxtox-review-experiment-")))
    sentences = corpus(args.per_lang, args.seed)
    texts = [s.text for s in sentences]
    probs, labeller = score(LABELLER, texts, settings)
    labels = probs >= labeller.label_map.threshold_vector()[None, :]
    embeddings = shared_usem(settings.asr.cpu_threads).encode(texts)
    write_clips(settings, sentences, probs, labels, embeddings)
    truth, order = truth_matrix(sentences), {f"clip-{i:05d}": i for i in range(len(sentences))}
    oof = out_of_fold(embeddings, labels, args.seed)
    results: dict[str, dict[float, float]] = {}
    for strategy in (*STRATEGIES, *VARIANTS):
        results[strategy] = {}
        seeds = range(args.seed, args.seed + (args.random_seeds if strategy == "random" else 1))
        for share in BUDGETS:
            maps = []
            for seed in seeds:  # random: the mean over several draws
                _clear_reviews(settings)
                if share:
                    review(settings, strategy, round(share * len(sentences)), truth, order, oof, seed)
                maps.append(training_map(settings, truth, order))
            results[strategy][share] = float(np.mean(maps))
    shutil.rmtree(settings.data_dir)
    table = render(results, len(sentences), args.random_seeds)
    print(table)
    if args.out:
        args.out.write_text(table)


def render(results: dict[str, dict[float, float]], n: int, random_seeds: int) -> str:
    head = "| strategy | " + " | ".join(f"{b:.0%} ({round(b * n)})" for b in BUDGETS) + " | gain at 10% | × random's |"
    lines = [head, "| --- |" + " ---: |" * (len(BUDGETS) + 2)]
    random_gain = results["random"][0.10] - results["random"][0.0]
    for strategy, by_budget in results.items():
        cells = " | ".join(f"{100 * by_budget[b]:.1f}" for b in BUDGETS)
        gain = by_budget[0.10] - by_budget[0.0]
        lines.append(f"| {strategy} | {cells} | {100 * gain:+.1f} | {gain / random_gain:.1f} |")
    return "\n".join(lines) + (f"\n\nTraining-label mAP (%, 4 toxic classes) against the truth, {n} training clips; "
                                f"random: the mean of {random_seeds} draws.\n")


if __name__ == "__main__":
    main()
