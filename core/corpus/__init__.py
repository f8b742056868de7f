"""Text corpora with known labels: voxtox's own multilingual seed corpus (hand-written sentence
families, split by family so speech evaluation never reuses a training template) and the
Davidson hate/offensive tweets with soft labels."""

from voxtox.corpus.davidson import DavidsonRow, clean_tweet, davidson_table, load_davidson
from voxtox.corpus.seed import (
    DEFAULT_FRACTIONS,
    LANGS,
    SeedSentence,
    family_split,
    generate_seed_corpus,
    normalise_text,
    to_rows,
    to_table,
)

__all__ = [
    "DEFAULT_FRACTIONS",
    "LANGS",
    "DavidsonRow",
    "SeedSentence",
    "clean_tweet",
    "davidson_table",
    "family_split",
    "generate_seed_corpus",
    "load_davidson",
    "normalise_text",
    "to_rows",
    "to_table",
]
