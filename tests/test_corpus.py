"""The seed corpus (families, labels, family split) and the Davidson soft-label loader."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from voxtox.corpus import davidson
from voxtox.corpus.seed import (
    DEFAULT_FRACTIONS,
    LANGS,
    SeedSentence,
    family_split,
    generate_seed_corpus,
    normalise_text,
    to_table,
)
from voxtox.labels import CLASSES

MIN_SENTENCES = 300
MIN_FAMILIES = 12


@pytest.fixture(scope="module")
def corpus() -> list[SeedSentence]:
    return generate_seed_corpus()


@pytest.fixture(scope="module")
def parts(corpus: list[SeedSentence]) -> dict[str, list[SeedSentence]]:
    return family_split(corpus)


def test_generation_is_deterministic_for_a_seed() -> None:
    first = generate_seed_corpus(seed=3, per_family=20)
    assert first == generate_seed_corpus(seed=3, per_family=20)
    assert first != generate_seed_corpus(seed=4, per_family=20)
    assert max(Counter(s.family for s in first).values()) <= 20


def test_corpus_is_deduplicated(corpus: list[SeedSentence]) -> None:
    keys = [normalise_text(s.text) for s in corpus]
    assert len(keys) == len(set(keys))
    assert normalise_text("  Nice SHOT,  bro!! ") == normalise_text("nice shot bro")


def test_labels_are_valid(corpus: list[SeedSentence]) -> None:
    for s in corpus:
        assert s.labels and s.labels == tuple(c for c in CLASSES if c in s.labels), s
        assert "no_violation" not in s.labels or s.labels == ("no_violation",), s
        assert s.family.startswith(f"{s.lang}.")


def test_every_class_and_language_is_large_and_varied(corpus: list[SeedSentence]) -> None:
    sentences: dict[tuple[str, str], set[str]] = defaultdict(set)
    families: dict[tuple[str, str], set[str]] = defaultdict(set)
    for s in corpus:
        for label in s.labels:
            sentences[s.lang, label].add(normalise_text(s.text))
            families[s.lang, label].add(s.family)
    for lang in LANGS:
        for label in CLASSES:
            assert len(sentences[lang, label]) >= MIN_SENTENCES, (lang, label)
            assert len(families[lang, label]) >= MIN_FAMILIES, (lang, label)
        largest = max(CLASSES, key=lambda c: len(sentences[lang, c]))
        assert largest == "no_violation", lang


def test_hard_negatives_in_every_language(corpus: list[SeedSentence]) -> None:
    for lang in LANGS:
        hard = [s for s in corpus if s.lang == lang and s.hard_negative]
        assert len(hard) >= 100, lang
        assert len({s.family for s in hard}) >= 8, lang
        assert all(s.labels == ("no_violation",) for s in hard)


def test_multi_label_rows_exist(corpus: list[SeedSentence]) -> None:
    for lang in LANGS:
        combos = {s.labels for s in corpus if s.lang == lang and len(s.labels) > 1}
        assert ("profanity", "bullying") in combos, lang
        assert len(combos) >= 4, (lang, combos)


def test_family_split_keeps_families_and_texts_apart(
    corpus: list[SeedSentence], parts: dict[str, list[SeedSentence]]
) -> None:
    assert list(parts) == list(DEFAULT_FRACTIONS)
    family_parts: dict[str, set[str]] = defaultdict(set)
    text_parts: dict[str, set[str]] = defaultdict(set)
    for part, members in parts.items():
        for s in members:
            family_parts[s.family].add(part)
            text_parts[normalise_text(s.text)].add(part)
    assert all(len(p) == 1 for p in family_parts.values())
    assert all(len(p) == 1 for p in text_parts.values())
    train = {normalise_text(s.text) for s in parts["labeller_train"]}
    assert train.isdisjoint(normalise_text(s.text) for s in parts["speech_eval"])
    assert sum(len(m) for m in parts.values()) == len(corpus)


def test_family_split_is_stratified(
    corpus: list[SeedSentence], parts: dict[str, list[SeedSentence]]
) -> None:
    for part, members in parts.items():
        assert abs(len(members) / len(corpus) - DEFAULT_FRACTIONS[part]) < 0.05, part
        present = {(s.lang, label) for s in members for label in s.labels}
        missing = {(lang, c) for lang in LANGS for c in CLASSES} - present
        assert not missing, (part, missing)
        assert {s.lang for s in members if s.hard_negative} == set(LANGS), part


def test_family_split_drops_near_duplicates_outside_the_earliest_part() -> None:
    def family(name: str, duplicate: str) -> list[SeedSentence]:
        own = [SeedSentence(f"{name} line {i}", "en", ("other",), name, False) for i in range(5)]
        return [*own, SeedSentence(duplicate, "en", ("other",), name, False)]

    sentences = [
        s for i in range(40) for s in family(f"en.f{i}", "Nice shot!" if i % 2 else "nice SHOT")
    ]
    parts = family_split(sentences)
    holders = [p for p, members in parts.items() if any(s.text.startswith("en.f") for s in members)]
    kept = [p for p, m in parts.items() for s in m if normalise_text(s.text) == "nice shot"]
    assert kept == [holders[0]]


def test_family_split_rejects_bad_fractions(corpus: list[SeedSentence]) -> None:
    with pytest.raises(ValueError):
        family_split(corpus, {"train": 0.7, "test": 0.2})
    with pytest.raises(ValueError):
        family_split(corpus, {"train": 1.2, "test": -0.2})


def test_table_has_one_hot_columns(parts: dict[str, list[SeedSentence]]) -> None:
    table = to_table(parts)
    assert table.column_names == ["text", "lang", "family", "hard_negative", "split", *CLASSES]
    assert table.num_rows == sum(len(m) for m in parts.values())
    rows = table.slice(0, 200).to_pylist()
    by_text = {s.text: s for members in parts.values() for s in members}
    for row in rows:
        assert [c for c in CLASSES if row[c] == 1] == list(by_text[row["text"]].labels)


# ---------------------------------------------------------------------------------- Davidson


def test_clean_tweet_strips_twitter_noise() -> None:
    raw = "!!! RT @some_user: you&#8217;re a &amp; &lt;3 http://t.co/abc www.x.com bye http…"
    assert davidson.clean_tweet(raw) == "you’re a & <3 bye"


def test_soft_labels_follow_the_mapping() -> None:
    labels = dict(zip(CLASSES, davidson.soft_labels(hate=1, offensive=1, neither=1)))
    assert labels["profanity"] == pytest.approx(2 / 3)
    assert labels["racism"] == pytest.approx(1 / 3)
    assert labels["bullying"] == pytest.approx(davidson.HATE_TO_BULLYING / 3)
    assert labels["no_violation"] == pytest.approx(1 / 3)
    assert all(labels[c] == 0 for c in davidson.UNLABELLED_CLASSES)


def test_loader_reads_a_small_csv_from_the_env_var(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    csv_path = tmp_path / "labeled_data.csv"
    csv_path.write_text(
        ",count,hate_speech,offensive_language,neither,class,tweet\n"
        '0,3,0,0,3,2,"RT @a: hello there &amp; welcome"\n'
        '1,3,2,1,0,0,"@b: hello   THERE & welcome!!"\n'
        '2,3,0,0,3,2,"@c http://t.co/x"\n',
        encoding="utf-8",
    )
    monkeypatch.setenv(davidson.ENV_VAR, str(csv_path))
    rows = davidson.load_davidson()
    assert [r.source_id for r in rows] == [0, 1]
    assert rows[0].split == rows[1].split
    table = davidson.davidson_table(rows)
    assert table.column_names == [
        "text", "split", "davidson_class", "annotators", "source_id", *CLASSES
    ]


def test_loader_names_the_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        davidson.load_davidson(missing)


@pytest.fixture(scope="module")
def davidson_rows() -> list[davidson.DavidsonRow]:
    try:
        path = davidson.resolve_csv_path()
    except FileNotFoundError as error:
        pytest.skip(f"Davidson CSV absent ({error})")
    return davidson.load_davidson(path)


def test_davidson_soft_labels_sum_sensibly(davidson_rows: list[davidson.DavidsonRow]) -> None:
    assert len(davidson_rows) > 24_000
    for row in davidson_rows:
        labels = dict(zip(CLASSES, row.soft_labels))
        assert all(0.0 <= p <= 1.0 for p in row.soft_labels)
        assert labels["profanity"] + labels["no_violation"] == pytest.approx(1.0)
        assert labels["bullying"] <= labels["racism"] <= labels["profanity"]
        assert row.annotators >= 3


def test_davidson_text_is_clean(davidson_rows: list[davidson.DavidsonRow]) -> None:
    noise = re.compile(r"(?<!\w)@\w|https?\b|&amp;|&#\d+;|\bRT\b")
    dirty = [row.text for row in davidson_rows if noise.search(row.text)]
    assert not dirty, dirty[:5]
    assert all(normalise_text(row.text) for row in davidson_rows)


def test_davidson_splits_are_disjoint(davidson_rows: list[davidson.DavidsonRow]) -> None:
    splits: dict[str, set[str]] = defaultdict(set)
    for row in davidson_rows:
        splits[normalise_text(row.text)].add(row.split)
    assert all(len(s) == 1 for s in splits.values())
    counts = Counter(row.split for row in davidson_rows)
    for split, fraction in davidson.DEFAULT_FRACTIONS.items():
        assert abs(counts[split] / len(davidson_rows) - fraction) < 0.02, split
