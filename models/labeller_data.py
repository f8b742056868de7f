"""Labelled text for training and evaluating the labeller: the shipped corpora or a user's file.

Every source becomes `LabelledTexts`: soft targets in [0, 1] per voxtox class, and a mask of the
(row, class) entries that are labelled at all. Built-in sources:

- `seed`: voxtox's multilingual seed corpus (en, es, fr, de, pt), split by sentence family
  (`labeller_train/val/test`; the `speech_eval` families are never used here);
- `davidson`: the Davidson tweets with annotator-vote soft labels, `dating_sexting` and `other`
  masked as unlabelled;
- `functional`: voxtox's functional tests (`voxtox.corpus.functional`): the `train` families'
  templates split 80/20 into train/val by a hash of the template, the `eval` families as test
  (they never train);
- `builtin`: all three;
- `banter`: voxtox's own benign game-chat praise and banter (`core/corpus/data/banter.tsv`,
  94 lines in five languages: "you're cracked at this game", "t'as massacré le boss"): strong
  words that are not abuse, every class labelled, no_violation = 1. Train rows only (it is our
  own writing, like the templates, so it never chooses an epoch or a threshold);
- real text (`voxtox.corpus.real`): `real` = every real set that may train the shipped default
  (GermEval 2018, ToLD-Br, MLMA, OpenAI moderation, ToxiGen), `real-nc` = the non-commercial
  Spanish sets (OffendES, HatEval: val and test rows only, they never train), or one set by name.

`--data` takes one name, a comma-separated list of names (`real,builtin`), or a file. When a list
mixes real text with the templated sources (`seed`, `functional`), those two give no validation
rows: epochs and thresholds are chosen on real sentences, the templates only train.

A file (`.csv` or `.parquet`) needs a `text` column and one column per voxtox class it labels
(0/1 or a probability; empty means unlabelled); a missing class column is unlabelled for every
row. Optional columns: `lang`, and `split` (train/val/test). Without `split`, rows are split
by a hash of their normalised text, so texts that differ only in case or punctuation share one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

import voxtox.corpus
from voxtox.corpus.davidson import UNLABELLED_CLASSES, DavidsonRow, assign_split, load_davidson
from voxtox.corpus.functional import FunctionalCase, load_functional_cases
from voxtox.corpus.real import (
    BENIGN_IDENTITY,
    HATE,
    NONCOMMERCIAL_SETS,
    REAL_SETS,
    TRAINABLE_SETS,
    load_real,
    names_group,
)
from voxtox.corpus.seed import SeedSentence, family_split, generate_seed_corpus, normalise_text
from voxtox.labels import CLASSES

SPLITS: tuple[str, ...] = ("train", "val", "test")
BUILTIN_SOURCES: tuple[str, ...] = (
    "builtin", "seed", "davidson", "functional", "banter", "real", "real-nc", *REAL_SETS
)
BANTER_FILE = Path(voxtox.corpus.__file__).with_name("data") / "banter.tsv"
#: What each group name stands for; a name not here is one source.
_GROUPS: dict[str, tuple[str, ...]] = {
    "builtin": ("seed", "davidson", "functional"),
    "real": TRAINABLE_SETS,
    "real-nc": NONCOMMERCIAL_SETS,
}
#: Licence of every source's text, recorded with a trained labeller (`training.json`).
SOURCE_LICENCES: dict[str, str] = {
    "seed": "voxtox's own (project licence)",
    "banter": "voxtox's own (project licence)",
    "functional": "voxtox's own (project licence)",
    "davidson": "MIT",
    "file": "the user's file",
    **{name: s.licence for name, s in REAL_SETS.items()},
}
#: Templated sources: they train, but never choose epochs or thresholds next to real text.
TEMPLATED_SOURCES: tuple[str, ...] = ("seed", "functional", "banter")
_SEED_PARTS = {"labeller_train": "train", "labeller_val": "val", "labeller_test": "test"}
_FILE_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}
_FUNCTIONAL_FRACTIONS = {"train": 0.8, "val": 0.2}


@dataclass
class LabelledTexts:
    """Texts with soft targets (n, 6) and a labelled mask (n, 6), in `CLASSES` order.

    `source` and `lang` say where each row comes from; evaluation reports them separately.
    `kind` marks rows of the hate-vs-benign-identity check (`voxtox.corpus.real`; "" for others)."""

    texts: list[str]
    targets: np.ndarray
    mask: np.ndarray
    source: list[str]
    lang: list[str]
    kind: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.texts)
        if self.targets.shape != (n, len(CLASSES)) or self.mask.shape != self.targets.shape:
            raise ValueError(f"targets and mask must have shape ({n}, {len(CLASSES)})")
        if len(self.source) != n or len(self.lang) != n:
            raise ValueError("source and lang need one entry per text")
        if not self.kind:
            self.kind = [""] * n
        elif len(self.kind) != n:
            raise ValueError("kind needs one entry per text")
        labelled = self.targets[self.mask]
        if not np.isfinite(labelled).all() or ((labelled < 0) | (labelled > 1)).any():
            raise ValueError("labelled targets must lie in [0, 1]")

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, rows: Sequence[int] | np.ndarray) -> LabelledTexts:
        index = np.asarray(rows, dtype=np.int64)
        return LabelledTexts(
            [self.texts[i] for i in index],
            self.targets[index],
            self.mask[index],
            [self.source[i] for i in index],
            [self.lang[i] for i in index],
            [self.kind[i] for i in index],
        )

    def binary_targets(self) -> np.ndarray:
        """Targets as 0/1 for metrics: a soft label counts as positive from 0.5 up."""
        return (self.targets >= 0.5) & self.mask

    @staticmethod
    def concat(parts: Sequence[LabelledTexts]) -> LabelledTexts:
        return LabelledTexts(
            [t for p in parts for t in p.texts],
            np.concatenate([p.targets for p in parts]).astype(np.float32),
            np.concatenate([p.mask for p in parts]),
            [s for p in parts for s in p.source],
            [lang for p in parts for lang in p.lang],
            [k for p in parts for k in p.kind],
        )


def load_splits(data: str, seed: int = 0) -> dict[str, LabelledTexts]:
    """`data` as train/val/test: built-in source names (comma-separated) or a .csv/.parquet path."""
    if _source_names(data):
        return _without_leaks(_builtin(data, seed))
    rows, splits = _read_file(data)
    if splits is None:
        splits = [assign_split(normalise_text(t), _FILE_FRACTIONS, seed) for t in rows.texts]
    return _without_leaks({s: rows.subset([i for i, x in enumerate(splits) if x == s]) for s in SPLITS})


def load_held_out(data: str, seed: int = 0) -> LabelledTexts:
    """Evaluation rows: a built-in source's test split, a file's `test` rows if it has a
    `split` column, else the whole file (it is the held-out text)."""
    if _source_names(data):
        return load_splits(data, seed)["test"]
    rows, splits = _read_file(data)
    return rows if splits is None else load_splits(data, seed)["test"]


def _source_names(data: str) -> list[str]:
    """The sources `data` names (groups expanded, each once), or [] if it is not a list of names."""
    names = [n.strip() for n in data.split(",")]
    if not all(n in BUILTIN_SOURCES for n in names):
        return []
    return list(dict.fromkeys(s for n in names for s in _GROUPS.get(n, (n,))))


def _builtin(data: str, seed: int) -> dict[str, LabelledTexts]:
    loaders = {
        "seed": _seed_splits, "davidson": _davidson_splits, "functional": _functional_splits, "banter": _banter_splits
    }
    names = _source_names(data)
    sources = {n: loaders[n](seed) if n in loaders else _real_splits(n, seed) for n in names}
    if any(n in REAL_SETS for n in names):
        for name in set(names) & set(TEMPLATED_SOURCES):
            sources[name]["val"] = sources[name]["val"].subset([])
    return {split: LabelledTexts.concat([s[split] for s in sources.values()]) for split in SPLITS}


def _real_splits(name: str, seed: int) -> dict[str, LabelledTexts]:
    """One real set as splits; each row labels only the classes its annotation covers."""
    rows = load_real(name, seed)
    out = {}
    for split in SPLITS:
        chosen = [r for r in rows if r.split == split]
        targets = np.array([[r.labels.get(c, 0.0) for c in CLASSES] for r in chosen], np.float32)
        mask = np.array([[c in r.labels for c in CLASSES] for r in chosen], bool)
        out[split] = LabelledTexts(
            [r.text for r in chosen],
            targets.reshape(-1, len(CLASSES)),
            mask.reshape(-1, len(CLASSES)),
            [name] * len(chosen),
            [r.lang for r in chosen],
            [r.kind for r in chosen],
        )
    return out


def _without_leaks(splits: dict[str, LabelledTexts]) -> dict[str, LabelledTexts]:
    """Drop from val and test any text whose normalised form an earlier split holds. Each source
    is split without leaks on its own, but sources can share a text (a seed-corpus line such as
    "shut up <slur>" is also a Davidson tweet)."""
    seen: set[str] = set()
    kept = {}
    for split in SPLITS:
        data = splits[split]
        keys = [normalise_text(t) for t in data.texts]
        kept[split] = data if split == "train" else data.subset([i for i, k in enumerate(keys) if k not in seen])
        seen.update(keys)
    return kept


def _seed_splits(seed: int) -> dict[str, LabelledTexts]:
    parts = family_split(generate_seed_corpus(seed=seed), seed=seed)
    return {split: _fully_labelled(parts[part], "seed") for part, split in _SEED_PARTS.items()}


def _functional_splits(seed: int) -> dict[str, LabelledTexts]:
    cases = load_functional_cases(seed=seed)
    parts: dict[str, list[FunctionalCase]] = {split: [] for split in SPLITS}
    for case in cases:
        split = "test" if case.split == "eval" else assign_split(case.template, _FUNCTIONAL_FRACTIONS, seed)
        parts[split].append(case)
    return {split: _fully_labelled(rows, "functional") for split, rows in parts.items()}


def functional_offset_rows(seed: int = 0) -> LabelledTexts:
    """The functional `train` families' held-out templates (the 20% `val` share, which never
    trains) with hateful cases marked `hate` and benign ones `benign_identity`: extra rows for the
    decision offsets (models/labeller_decisions.py). The `eval` families are never among them."""
    rows = _functional_splits(seed)["val"]
    cases = {c.text: c.kind for c in load_functional_cases(seed=seed) if c.split == "train"}
    marks = {"hateful": HATE, "benign": BENIGN_IDENTITY}
    rows.kind = [marks.get(cases[t], "") for t in rows.texts]
    return rows


def _fully_labelled(rows: Sequence[SeedSentence | FunctionalCase], source: str) -> LabelledTexts:
    """Rows whose labels are exact: every class labelled, 1 for the row's labels, else 0."""
    targets = np.array([[float(c in r.labels) for c in CLASSES] for r in rows], np.float32)
    return LabelledTexts(
        [r.text for r in rows],
        targets.reshape(-1, len(CLASSES)),
        np.ones((len(rows), len(CLASSES)), dtype=bool),
        [source] * len(rows),
        [r.lang for r in rows],
    )


def banter_rows() -> LabelledTexts:
    """The banter lines: every class labelled, only no_violation positive."""
    lines = BANTER_FILE.read_text(encoding="utf-8").splitlines()[1:]
    pairs = [line.split("\t", 1) for line in lines if line.strip()]
    targets = np.tile(np.array([float(c == "no_violation") for c in CLASSES], np.float32), (len(pairs), 1))
    return LabelledTexts(
        [text for _, text in pairs],
        targets,
        np.ones(targets.shape, dtype=bool),
        ["banter"] * len(pairs),
        [lang for lang, _ in pairs],
    )


def _banter_splits(seed: int) -> dict[str, LabelledTexts]:
    rows = banter_rows()
    return {"train": rows, "val": rows.subset([]), "test": rows.subset([])}


def _davidson_splits(seed: int) -> dict[str, LabelledTexts]:
    rows = load_davidson(seed=seed)
    labelled = np.array([c not in UNLABELLED_CLASSES for c in CLASSES])
    out = {}
    for split in SPLITS:
        chosen = [r for r in rows if r.split == split]
        out[split] = LabelledTexts(
            [r.text for r in chosen],
            np.array([r.soft_labels for r in chosen], np.float32).reshape(-1, len(CLASSES)),
            np.tile(labelled, (len(chosen), 1)),
            ["davidson"] * len(chosen),
            ["en"] * len(chosen),
            [_davidson_kind(r) for r in chosen],
        )
    return out


def _davidson_kind(row: DavidsonRow) -> str:
    """The proxy's roles on Davidson: a majority-hate tweet, or a "neither" tweet naming a group."""
    if row.davidson_class == 0:
        return HATE
    return BENIGN_IDENTITY if row.davidson_class == 2 and names_group(row.text, "en") else ""


def check_labelled_data(data: str) -> None:
    """Raise FileNotFoundError unless `data` names a built-in source or an existing file."""
    if not _source_names(data) and not Path(data).is_file():
        raise FileNotFoundError(
            f"--data {data!r} is neither a file nor built-in sources, comma-separated ({', '.join(BUILTIN_SOURCES)})"
        )


def _read_file(data: str) -> tuple[LabelledTexts, list[str] | None]:
    """A user's table as rows, and its `split` column if it has one (see the module docstring)."""
    check_labelled_data(data)
    path = Path(data)
    table = _read_table(path)
    if "text" not in table.column_names:
        raise ValueError(f"{path}: needs a 'text' column")
    present = [c for c in CLASSES if c in table.column_names]
    if not present:
        raise ValueError(f"{path}: needs at least one label column named after a class: {CLASSES}")
    texts = ["" if t is None else str(t) for t in table["text"].to_pylist()]
    values = np.full((len(texts), len(CLASSES)), np.nan, dtype=np.float32)
    for c in present:
        values[:, CLASSES.index(c)] = [np.nan if v is None else float(v) for v in table[c].to_pylist()]
    langs = table["lang"].to_pylist() if "lang" in table.column_names else ["unknown"] * len(texts)
    rows = LabelledTexts(
        texts, np.nan_to_num(values), ~np.isnan(values), ["file"] * len(texts), [str(x) for x in langs]
    )
    if "split" not in table.column_names:
        return rows, None
    splits = [str(x) for x in table["split"].to_pylist()]
    unknown = set(splits) - set(SPLITS)
    if unknown:
        raise ValueError(f"{path}: split values must be in {SPLITS}, found {sorted(unknown)}")
    return rows, splits


def _read_table(path: Path) -> pa.Table:
    if path.suffix == ".parquet":
        return pq.read_table(path)
    if path.suffix == ".csv":
        return pacsv.read_csv(path)
    raise ValueError(f"{path}: --data must be .csv or .parquet")


def subsample(data: LabelledTexts, max_rows: int | None, seed: int) -> LabelledTexts:
    """At most `max_rows` rows, drawn in proportion from each source so none is left out."""
    if max_rows is None or len(data) <= max_rows:
        return data
    rng = np.random.default_rng(seed)
    sources = np.asarray(data.source)
    chosen: list[np.ndarray] = []
    for name in sorted(set(data.source)):
        rows = np.flatnonzero(sources == name)
        take = max(1, round(max_rows * len(rows) / len(data)))
        chosen.append(rng.choice(rows, size=min(take, len(rows)), replace=False))
    return data.subset(np.sort(np.concatenate(chosen)))


def repeat_sources(
    data: LabelledTexts, repeats: dict[str, int], kind_repeats: dict[str, int] | None = None
) -> LabelledTexts:
    """`data` with each row of source `s` appearing `repeats[s]` times (others once), times
    `kind_repeats[k]` for a row of kind `k` (e.g. benign texts naming a group)."""
    kinds = kind_repeats or {}
    times = np.array(
        [max(1, repeats.get(source, 1)) * max(1, kinds.get(kind, 1)) for source, kind in zip(data.source, data.kind)]
    )
    if (times == 1).all():
        return data
    return data.subset(np.repeat(np.arange(len(data)), times))
