"""Real labelled text in the labeller's five languages (`../shared/data/`), mapped to voxtox's
six classes, split deterministically, and marked for the hate-vs-benign-identity check.

Each set (`REAL_SETS`) records its licence and whether it may train the shipped default.
OffendES and HatEval are non-commercial: they give Spanish a real check and never train
(their rows only ever land in val and test). docs/labeller.md gives each mapping and why.

Every row labels only the classes its annotation says something about (`labels`); the others
are unlabelled (masked in loss and metrics), never guessed negative. Splits:

- GermEval 2018 keeps its own test file; its training file is split 90/10 train/val by hash.
- HatEval (es) keeps its dev file as val; its train file is our test (it never trains).
- OffendES keeps its test file as test; val is 20% of its training file by hash.
- Every other set: a hash of the normalised text, 80/10/10 (ToxiGen, 666 rows: 60/20/20, so
  its benign-identity test cases are not a handful).

`kind` marks the rows the hate-vs-benign-identity proxy uses: "hate" (hate against a protected
group) and "benign_identity" (a non-violating text that names such a group, found with
`IDENTITY_TERMS`); "" for every other row.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from voxtox.corpus.davidson import assign_split, clean_tweet
from voxtox.corpus.seed import normalise_text

ENV_VAR = "VOXTOX_REAL_DATA"
#: Relative to the current working directory (the repository root, next to `../shared`).
DEFAULT_ROOT = Path("../shared/data")
HATE, BENIGN_IDENTITY = "hate", "benign_identity"
_SPLIT_80 = {"train": 0.8, "val": 0.1, "test": 0.1}

#: Words that name a protected group (stems, matched at a word start, case-insensitive). Used to
#: find benign texts about identity and to tell identity abuse (-> racism) from abuse of
#: political camps in GermEval/OffendES. Neutral group names only, no slurs.
IDENTITY_TERMS: Mapping[str, str] = {
    "en": r"muslim|islam|jew|black (?:people|men|women|folks?)|blacks\b|african|asian|chinese|mexican|latin[oax]|"
    r"immigra|migrant|refugee|gay|lesbian|lgbt|queer|trans\b|transgender|bisexual|women\b|woman\b|feminis|"
    r"disabled|disabilit|autis|native american|arab|middle east|hispanic|homosexual",
    "de": r"muslim|moslem|islam|jude|juden|jüdisch|flüchtling|migrant|ausländer|asyl|schwarze|afrikan|türk|"
    r"araber|arabisch|schwul|lesb|homosex|trans\b|frauen|behindert|roma\b|sinti|syrer|afghan|zuwander|einwander",
    "es": r"musulm|islam|judí|judío|inmigra|migrante|refugiad|extranjer|gitan|gay|lesbiana|homosexual|trans\b|"
    r"mujer|feminis|discapacitad|árabe|arabe|african|latin[oa]|negr[oa]s\b|moros?\b|sudaca|machista|"
    r"maricón|marica",
    "fr": r"musulman|islam|juif|juive|noirs?\b|arabe|immigr|migrant|réfugié|étranger|etranger|gay|homo|lesbienne|"
    r"trans\b|femmes?\b|féminis|handicap|africain|roms?\b|chinois|asiatique|maghréb|mongol|attardé",
    "pt": r"muçulman|isl[ãa]|judeu|judia|negr[oa]s?\b|pret[oa]s?\b|imigra|refugiad|estrangeir|gays?\b|lésbica|"
    r"lgbt|homossexua|trans\b|travesti|mulher|feminis|deficient|nordestin|índio|indígena|african|viado|sapat",
}
_IDENTITY = {lang: re.compile(rf"(?<!\w)(?:{terms})", re.IGNORECASE) for lang, terms in IDENTITY_TERMS.items()}


def names_group(text: str, lang: str) -> bool:
    """Whether `text` names a protected group (`IDENTITY_TERMS` of its language)."""
    return bool(_IDENTITY[lang].search(text))


@dataclass(frozen=True)
class RealRow:
    """One text: the classes its annotation labels (`labels`: class -> target in [0, 1]), its
    split, and its role in the hate-vs-benign-identity check (`kind`, "" if none)."""

    text: str
    lang: str
    labels: Mapping[str, float]
    split: str
    kind: str = ""


@dataclass(frozen=True)
class RealSet:
    """A real data set: where it lives, its licence, and whether it may train the shipped default."""

    name: str
    folder: str
    langs: tuple[str, ...]
    licence: str
    trains: bool
    citation: str
    read: Callable[[Path, int], Iterator[RealRow]]


def resolve_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The data folder: `root`, else `$VOXTOX_REAL_DATA`, else `DEFAULT_ROOT` from the cwd."""
    chosen = Path(root or os.environ.get(ENV_VAR) or DEFAULT_ROOT)
    if not chosen.is_dir():
        raise FileNotFoundError(f"real data folder not found at {chosen.resolve()}; set {ENV_VAR}")
    return chosen


def _hash_split(text: str, seed: int, fractions: Mapping[str, float] = _SPLIT_80) -> str:
    return assign_split(normalise_text(text), fractions, seed)


def _none_but(**labels: float) -> dict[str, float]:
    """A non-violating row: no_violation 1 and every violation class 0."""
    base = {c: 0.0 for c in ("profanity", "bullying", "dating_sexting", "racism", "other")}
    return {**base, "no_violation": 1.0, **labels}


def _tsv(path: Path) -> Iterator[list[str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        yield from csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)


def _germeval(folder: Path, seed: int) -> Iterator[RealRow]:
    """OTHER -> no_violation; PROFANITY -> profanity; INSULT -> bullying; ABUSE naming a protected
    group -> racism, other ABUSE (political camps, mostly) -> a violation of unlabelled class."""
    for file, given in (("germeval2018.training.txt", None), ("germeval2018.test.txt", "test")):
        for text, _coarse, fine in _tsv(folder / file):
            text = clean_tweet(text.replace("|LBR|", " "))
            if not normalise_text(text):
                continue
            split = given or _hash_split(text, seed, {"train": 0.9, "val": 0.1})
            group = names_group(text, "de")
            if fine == "OTHER":
                yield RealRow(text, "de", _none_but(), split, BENIGN_IDENTITY if group else "")
            elif fine == "PROFANITY":
                labels = {"profanity": 1.0, "racism": 0.0, "dating_sexting": 0.0, "no_violation": 0.0}
                yield RealRow(text, "de", labels, split)
            elif fine == "INSULT":
                yield RealRow(text, "de", {"bullying": 1.0, "dating_sexting": 0.0, "no_violation": 0.0}, split)
            elif group:
                yield RealRow(text, "de", {"racism": 1.0, "dating_sexting": 0.0, "no_violation": 0.0}, split, HATE)
            else:
                yield RealRow(text, "de", {"dating_sexting": 0.0, "no_violation": 0.0}, split)


_TOLD_IDENTITY = ("homophobia", "racism", "misogyny", "xenophobia")


def _told(folder: Path, seed: int) -> Iterator[RealRow]:
    """Votes of 3 annotators per category; >= 2 is present, 0 absent, 1 unlabelled. Identity
    categories -> racism, insult -> bullying, obscene -> profanity; rows whose only flags are
    single votes are dropped (annotators disagree whether they violate at all)."""
    with (folder / "ToLD-BR.csv").open(encoding="utf-8", newline="") as handle:
        for record in csv.DictReader(handle):
            text = clean_tweet(record["text"])
            votes = {k: float(v) for k, v in record.items() if k != "text"}
            if not normalise_text(text) or (0 < max(votes.values()) < 2):
                continue
            split = _hash_split(text, seed)
            if max(votes.values()) == 0:
                yield RealRow(text, "pt", _none_but(), split, BENIGN_IDENTITY if names_group(text, "pt") else "")
                continue
            identity = max(votes[k] for k in _TOLD_IDENTITY)
            labels = {"no_violation": 0.0}
            for cls, vote in (("racism", identity), ("bullying", votes["insult"]), ("profanity", votes["obscene"])):
                if vote != 1:
                    labels[cls] = float(vote >= 2)
            yield RealRow(text, "pt", labels, split, HATE if identity >= 2 else "")


_MLMA_IDENTITY_TARGETS = {"origin", "gender", "sexual_orientation", "religion", "disability"}
_MLMA_TOXIC = {"offensive", "abusive", "hateful", "disrespectful", "fearful"}


def _mlma_names_identity(record: Mapping[str, str]) -> bool:
    return record["target"] in _MLMA_IDENTITY_TARGETS and record["group"] != "individual"


def _mlma(folder: Path, seed: int) -> Iterator[RealRow]:
    """French only (the English file's "normal" rows hold slurs such as "ching chong", and English
    has cleaner sets). normal -> no_violation; hateful at an identity group -> racism; toxic at an
    individual -> bullying; any other toxic row -> a violation of unlabelled class; mixed with
    normal -> dropped."""
    for file, lang in (("fr_dataset.csv", "fr"),):
        with (folder / file).open(encoding="utf-8", newline="") as handle:
            for record in csv.DictReader(handle):
                text = clean_tweet(record["tweet"].replace("@user", " ").replace("@url", " "))
                sentiments = set(record["sentiment"].split("_"))
                if not normalise_text(text) or ("normal" in sentiments and len(sentiments) > 1):
                    continue
                split = _hash_split(text, seed)
                if sentiments == {"normal"}:
                    yield RealRow(text, lang, _none_but(), split, BENIGN_IDENTITY if names_group(text, lang) else "")
                elif "hateful" in sentiments and _mlma_names_identity(record):
                    yield RealRow(text, lang, {"racism": 1.0, "no_violation": 0.0}, split, HATE)
                elif record["group"] == "individual" and sentiments & _MLMA_TOXIC:
                    yield RealRow(text, lang, {"bullying": 1.0, "no_violation": 0.0}, split)
                else:
                    yield RealRow(text, lang, {"no_violation": 0.0}, split)


def _openai(folder: Path, seed: int) -> Iterator[RealRow]:
    """S or S3 -> dating_sexting, H or H2 -> racism, HR -> bullying, V/V2/SH -> other; all known
    flags 0 (at least S, H, HR known) -> no_violation. Profanity is never annotated here."""
    by_class = {"dating_sexting": ("S", "S3"), "racism": ("H", "H2"), "bullying": ("HR",), "other": ("V", "V2", "SH")}
    with gzip.open(folder / "samples.jsonl.gz", "rt", encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            text = " ".join(record["prompt"].split())
            split = _hash_split(text, seed)
            labels: dict[str, float] = {}
            for cls, keys in by_class.items():
                known = [record[k] for k in keys if k in record]
                if any(known):
                    labels[cls] = 1.0
                elif known and len(known) == len(keys):
                    labels[cls] = 0.0
            flagged = any(v == 1.0 for v in labels.values())
            if flagged:
                kind = HATE if labels.get("racism") == 1.0 else ""
                yield RealRow(text, "en", {**labels, "no_violation": 0.0}, split, kind)
            elif all(k in record for k in ("S", "H", "HR")):
                kind = BENIGN_IDENTITY if names_group(text, "en") else ""
                yield RealRow(text, "en", {**labels, "no_violation": 1.0}, split, kind)


def _toxigen(folder: Path, seed: int) -> Iterator[RealRow]:
    """hate -> racism (implicit hate at a group, mostly without slurs); neutral -> no_violation."""
    fractions = {"train": 0.6, "val": 0.2, "test": 0.2}
    with (folder / "toxigen_prompts.csv").open(encoding="utf-8", newline="") as handle:
        for record in csv.DictReader(handle):
            text, split = record["text"].strip(), _hash_split(record["text"], seed, fractions)
            if record["label"] == "hate":
                yield RealRow(text, "en", {"racism": 1.0, "no_violation": 0.0, "dating_sexting": 0.0}, split, HATE)
            else:
                yield RealRow(text, "en", _none_but(), split, BENIGN_IDENTITY)


def _offendes(folder: Path, seed: int) -> Iterator[RealRow]:
    """NO -> no_violation; NOE -> profanity; OFP -> bullying; OFG naming a protected group ->
    racism, other OFG (fans, politics) -> a violation of unlabelled class. Never trains."""
    files = (("training_set.tsv", None), ("dev_set.tsv", "val"), ("test_set.tsv", "test"))
    for file, given in files:
        rows = _tsv(folder / file)
        header = next(rows)
        for values in rows:
            if len(values) != len(header):
                continue  # the one malformed line of training_set.tsv
            record = dict(zip(header, values, strict=True))
            text = " ".join(record["comment"].split())
            if not normalise_text(text):
                continue
            split = given or ("val" if _hash_split(text, seed, {"val": 0.2, "rest": 0.8}) == "val" else "")
            if split:
                yield _offendes_row(text, record["label"], split)


def _offendes_row(text: str, label: str, split: str) -> RealRow:
    group = names_group(text, "es")
    if label == "NO":
        return RealRow(text, "es", _none_but(), split, BENIGN_IDENTITY if group else "")
    if label == "NOE":
        return RealRow(text, "es", {"profanity": 1.0, "racism": 0.0, "bullying": 0.0, "no_violation": 0.0}, split)
    if label == "OFP":
        return RealRow(text, "es", {"bullying": 1.0, "no_violation": 0.0}, split)
    if group:
        return RealRow(text, "es", {"racism": 1.0, "no_violation": 0.0}, split, HATE)
    return RealRow(text, "es", {"no_violation": 0.0}, split)


def _hateval_es(folder: Path, seed: int) -> Iterator[RealRow]:
    """HS=1 at a group (TR=0) -> racism; HS=1 at one person -> a violation, class unlabelled;
    HS=0 -> racism 0 only (HS=0 holds insults and swearing, so no_violation stays unlabelled),
    and benign_identity when also not aggressive and naming a group. Never trains."""
    for file, split in (("dev_es.tsv", "val"), ("train_es.tsv", "test")):
        with (folder / file).open(encoding="utf-8", newline="") as handle:
            for record in csv.DictReader(handle, delimiter="\t"):
                text = clean_tweet(record["text"])
                if not normalise_text(text):
                    continue
                if record["HS"] == "1":
                    labels = {"racism": 1.0, "no_violation": 0.0} if record["TR"] == "0" else {"no_violation": 0.0}
                    yield RealRow(text, "es", labels, split, HATE if record["TR"] == "0" else "")
                else:
                    benign = record["AG"] == "0" and names_group(text, "es")
                    yield RealRow(text, "es", {"racism": 0.0}, split, BENIGN_IDENTITY if benign else "")


REAL_SETS: Mapping[str, RealSet] = {
    s.name: s
    for s in (
        RealSet("germeval", "germeval2018-de", ("de",), "CC BY 4.0", True,
                "Wiegand, Siegel & Ruppenhofer (2018), Overview of the GermEval 2018 Shared Task on the "
                "Identification of Offensive Language", _germeval),
        RealSet("toldbr", "told-br-pt", ("pt",), "CC BY-SA 4.0", True,
                "Leite, Silva, Bontcheva & Scarton (2020), Toxic Language Detection in Social Media for "
                "Brazilian Portuguese (AACL-IJCNLP)", _told),
        RealSet("mlma", "mlma-fr-en", ("fr",), "MIT", True,
                "Ousidhoum, Lin, Zhang, Song & Yeung (2019), Multilingual and Multi-Aspect Hate Speech "
                "Analysis (EMNLP)", _mlma),
        RealSet("openai", "openai-moderation-en", ("en",), "MIT", True,
                "Markov et al. (2023), A Holistic Approach to Undesired Content Detection in the Real "
                "World (AAAI)", _openai),
        RealSet("toxigen", "toxigen-prompts-en", ("en",), "MIT", True,
                "Hartvigsen et al. (2022), ToxiGen (ACL)", _toxigen),
        RealSet("offendes", "offendes-es", ("es",), "CC BY-NC-SA 4.0 (unclear upstream)", False,
                "Plaza-del-Arco et al. (2021), OffendES (RANLP)", _offendes),
        RealSet("hateval", "hateval2019-es-en", ("es",), "CC BY-NC 4.0", False,
                "Basile et al. (2019), SemEval-2019 Task 5: HatEval", _hateval_es),
    )
}
#: `--data real`: every real set that may train the shipped default.
TRAINABLE_SETS: tuple[str, ...] = tuple(n for n, s in REAL_SETS.items() if s.trains)
#: `--data real-nc`: the non-commercial sets, val and test only.
NONCOMMERCIAL_SETS: tuple[str, ...] = tuple(n for n, s in REAL_SETS.items() if not s.trains)


def load_real(name: str, seed: int = 0, root: str | os.PathLike[str] | None = None) -> list[RealRow]:
    """The rows of one real set. A non-commercial set's rows are only ever val or test."""
    real_set = REAL_SETS[name]
    rows = list(real_set.read(resolve_root(root) / real_set.folder, seed))
    if not real_set.trains and any(r.split == "train" for r in rows):
        raise AssertionError(f"{name} is non-commercial and must never yield training rows")
    return rows
