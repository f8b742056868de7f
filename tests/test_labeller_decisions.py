"""Decisions for the hate-vs-benign-identity trade-off: the shared threshold offset, per-language
thresholds stored with a labeller and used by `decide`, and the banter training source."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from voxtox.corpus.real import BENIGN_IDENTITY, HATE
from voxtox.labels import CLASSES
from voxtox.models.labeller import LABELLER_CONFIG, LabelMap
from voxtox.models.labeller_data import SOURCE_LICENCES, banter_rows, load_splits
from voxtox.models.labeller_decisions import balanced_offsets, shifted, shortfall
from voxtox.models.labeller_real import flagged

RACISM = CLASSES.index("racism")


def _scores(hate: list[float], benign: list[float]) -> tuple[np.ndarray, np.ndarray]:
    probs = np.zeros((len(hate) + len(benign), 6), np.float32)
    probs[:, RACISM] = hate + benign
    probs[:, -1] = 1 - probs[:, RACISM]
    return probs, np.array([HATE] * len(hate) + [BENIGN_IDENTITY] * len(benign))


def test_shortfall_is_the_worse_of_the_two_rates() -> None:
    flags = np.array([True] * 7 + [False] * 3 + [True] * 4 + [False] * 6)
    kind = np.array([HATE] * 10 + [BENIGN_IDENTITY] * 10)
    # hate flagged 70% (10 points short of 80%), benign flagged 40% (20 points over 20%)
    assert shortfall(flags, kind) == pytest.approx(0.2)
    assert np.isnan(shortfall(flags[:10], kind[:10]))


def test_offset_keeps_no_violation_and_moves_violations_in_logit_space() -> None:
    moved = shifted({"racism": 0.5, "no_violation": 0.3}, np.log(3.0))
    assert moved["no_violation"] == 0.3
    assert moved["racism"] == pytest.approx(0.75)  # odds 1 -> 3


def test_balanced_offset_lowers_a_too_strict_threshold_per_language() -> None:
    # en: hate scores 0.3-0.45 sit below the F1 threshold 0.5; benign at 0.05: lower it
    en, en_kind = _scores([0.3, 0.35, 0.4, 0.45] * 5, [0.05] * 20)
    # de: benign scores 0.6 would all be flagged at 0.5, hate at 0.9: raise it
    de, de_kind = _scores([0.9] * 20, [0.6] * 20)
    probs = np.concatenate([en, de])
    kind = np.concatenate([en_kind, de_kind])
    lang = ["en"] * 40 + ["de"] * 40
    _, own = balanced_offsets(probs, kind, lang, {"racism": 0.5})
    assert own["en"] < 0 < own["de"]
    for x, rows in (("en", slice(0, 40)), ("de", slice(40, 80))):
        flags = flagged(probs[rows], shifted({"racism": 0.5}, own[x]))
        assert shortfall(flags, kind[rows]) <= 0


def test_language_without_both_kinds_gets_no_own_offset() -> None:
    probs, kind = _scores([0.9] * 5, [])
    overall, own = balanced_offsets(probs, kind, ["fr"] * 5, {"racism": 0.5})
    assert own == {} and overall == 0.0


def test_extra_rows_join_each_languages_offset_choice() -> None:
    """Extra (templated) rows: a language they alone cover gets its own offset, and where both
    sets cover a language its cost is the mean of the two shortfalls."""
    real, real_kind = _scores([0.3, 0.35, 0.4, 0.45] * 5, [0.05] * 20)  # en: wants a lower threshold
    es, es_kind = _scores([0.9] * 20, [0.6] * 20)  # es, templated only: wants a higher one
    en_t, en_t_kind = _scores([0.9] * 20, [0.6] * 20)  # en templated: wants a higher one too
    extra = (np.concatenate([es, en_t]), np.concatenate([es_kind, en_t_kind]), np.array(["es"] * 40 + ["en"] * 40))
    _, alone = balanced_offsets(real, real_kind, ["en"] * 40, {"racism": 0.5})
    _, both = balanced_offsets(real, real_kind, ["en"] * 40, {"racism": 0.5}, extra)
    assert "es" not in alone and both["es"] > 0
    assert alone["en"] < both["en"]  # the templated rows pull English's offset up


def test_functional_offset_rows_are_held_out_train_templates_marked_by_kind() -> None:
    from voxtox.corpus.functional import load_functional_cases
    from voxtox.models.labeller_data import functional_offset_rows

    rows = functional_offset_rows()
    cases = load_functional_cases(seed=0)
    eval_texts = {c.text for c in cases if c.split == "eval"}
    trained = set(load_splits("functional")["train"].texts)
    assert rows.texts and not set(rows.texts) & trained
    assert not set(rows.texts) & eval_texts - {c.text for c in cases if c.split == "train"}
    kinds = {c.text: c.kind for c in cases if c.split == "train"}
    marks = {"hateful": HATE, "benign": BENIGN_IDENTITY, "other": ""}
    assert rows.kind == [marks[kinds[t]] for t in rows.texts]
    assert {HATE, BENIGN_IDENTITY} <= set(rows.kind) and set(rows.lang) == {"de", "en", "es", "fr", "pt"}


def test_decide_uses_a_languages_thresholds_and_falls_back(tmp_path: Path) -> None:
    label_map = LabelMap.identity()
    label_map.thresholds = {"racism": 0.5}
    label_map.lang_thresholds = {"de": {"racism": 0.8}}
    label_map.save(tmp_path)
    loaded = LabelMap.load(tmp_path)
    assert json.loads((tmp_path / LABELLER_CONFIG).read_text())["lang_thresholds"] == {"de": {"racism": 0.8}}
    probs = np.zeros((3, 6), np.float32)
    probs[:, RACISM] = 0.6
    decided = probs >= loaded.threshold_matrix(["de", "en", None], 3)
    assert decided[:, RACISM].tolist() == [False, True, True]
    assert (probs >= loaded.threshold_matrix(None, 3))[:, RACISM].all()
    with pytest.raises(ValueError, match="langs has 2 entries for 3 texts"):
        loaded.threshold_matrix(["de", "en"], 3)


def test_banter_trains_only_as_benign_text_in_five_languages() -> None:
    rows = banter_rows()
    assert set(rows.lang) == {"de", "en", "es", "fr", "pt"} and len(rows) >= 50
    assert rows.mask.all() and (rows.targets[:, -1] == 1).all() and (rows.targets[:, :-1] == 0).all()
    splits = load_splits("banter,davidson")
    assert splits["train"].source.count("banter") == len(rows)
    assert "banter" not in splits["val"].source + splits["test"].source
    assert "NC" not in SOURCE_LICENCES["banter"]


def test_label_stage_decides_each_transcript_at_its_languages_thresholds(tmp_path: Path) -> None:
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from voxtox.settings import Settings
    from voxtox.tasks.label import label_transcripts

    shipped = Path(__file__).resolve().parents[1] / "core" / "shipped_models" / "voxtox-labeller"
    labeller = tmp_path / "labeller"
    shutil.copytree(shipped, labeller)
    label_map = LabelMap.load(labeller)
    label_map.thresholds["racism"] = 1.01  # never decided ...
    label_map.lang_thresholds = {"de": {"racism": 0.0}}  # ... except in German, always
    label_map.save(labeller)
    text = "das ist ein ganz normaler satz"
    source = tmp_path / "transcripts.parquet"
    pq.write_table(pa.table({"transcript": [text, text, text], "lang": ["de", "en", None]}), source)
    out = label_transcripts(source, str(labeller), Settings(), tmp_path / "labelled.parquet")
    assert pq.read_table(out)["label_racism"].to_pylist() == [True, False, False]
