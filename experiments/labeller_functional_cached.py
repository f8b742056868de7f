"""`voxtox labeller functional NEW --baseline OLD` for USE-head labellers, from cached embeddings:
the same cases, cleaning, 8 × 128-character cap and per-language decisions as the flow, without
re-embedding 2,196 texts per labeller on a loaded machine. Also prints the platform-talk lines.

    .venv/bin/python experiments/labeller_functional_cached.py NEW OLD --cache DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path

from labeller_real import labeller_probs  # experiments/labeller_real.py: any USE labeller kind
from voxtox.corpus.functional import load_functional_cases
from voxtox.models.embedding_cache import EmbeddingCache
from voxtox.models.labeller import LabelMap
from voxtox.models.labeller_functional import (
    CaseOutcomes,
    comparison_functional_markdown,
    compare_functional,
    evaluate_functional,
    functional_markdown,
    outcomes,
)
from voxtox.models.text_encoder import UsemEncoder

#: Praise and banter with strong words (the lines docs/labeller.md has followed since 2026-12-06).
PLATFORM_TALK = (
    ("en", "nice shot, you absolute legend"), ("en", "gg ez, you killed it"),
    ("en", "that was sick, you absolute beast"), ("en", "holy shit what a clutch"),
    ("es", "qué golazo, eres una bestia"), ("de", "du bist ein tier, krasser schuss"),
    ("fr", "t'es un monstre, quel tir"), ("pt", "que jogada insana, mano"),
)


def scored(path: Path, cache: EmbeddingCache, texts: list[str], langs: list[str]) -> tuple:
    probs = labeller_probs(path, texts, 128, cache)
    return probs, probs >= LabelMap.load(path).threshold_matrix(langs, len(texts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("new", type=Path)
    parser.add_argument("old", type=Path)
    parser.add_argument("--cache", required=True)
    args = parser.parse_args()
    cache = EmbeddingCache(UsemEncoder(), args.cache)
    cases = [c for c in load_functional_cases(seed=0) if c.split == "eval"]
    texts, langs = [c.text for c in cases], [c.lang for c in cases]
    results: dict[Path, CaseOutcomes] = {}
    for path in (args.new, args.old):
        probs, decided = scored(path, cache, texts, langs)
        results[path] = outcomes(cases, probs, decided)
    print(functional_markdown(evaluate_functional(cases, results[args.new])))
    print(comparison_functional_markdown(
        compare_functional(cases, results[args.old], results[args.new]), args.old.name, args.new.name))
    for path in (args.new, args.old):
        probs, decided = scored(path, cache, [t for _, t in PLATFORM_TALK], [x for x, _ in PLATFORM_TALK])
        flags = decided[:, :-1].any(axis=1)
        print(f"platform talk, {path.name}: {int(flags.sum())}/{len(flags)} flagged; max violation prob "
              + ", ".join(f"{t!r} {p[:-1].max():.2f}" for (_, t), p in zip(PLATFORM_TALK, probs, strict=True)))


if __name__ == "__main__":
    main()
