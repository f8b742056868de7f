"""Decision thresholds for the hate-vs-benign-identity trade-off, chosen on real validation rows.

Per-class best-F1 thresholds treat each class alone; the goal the labeller is held to counts a
text as *flagged* when any violation class fires, and asks for two rates at once on texts about
identity groups: benign ones flagged at most 20%, hateful ones at least 80%. `balanced_offsets`
moves every violation class's threshold by one shared offset in logit space, chosen to minimise
the *shortfall* max(benign flagged − 20%, 80% − hate flagged) (averaged over languages), globally
and, where a language has both kinds of validation rows, per language. The offset keeps the
order of the per-class thresholds; only the overall strictness moves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from voxtox.corpus.real import BENIGN_IDENTITY, HATE
from voxtox.models.labeller_real import flagged

#: Offsets tried (logit units): thresholds from about e^-3 to e^3 times as strict in odds.
OFFSETS = np.round(np.arange(-3.0, 3.01, 0.1), 2)
BENIGN_MAX, HATE_MIN = 0.2, 0.8
#: More rows for the offset choice: (probabilities, kind, language), e.g. templated check rows.
Extra = tuple[np.ndarray, Sequence[str] | np.ndarray, Sequence[str] | np.ndarray]


def shortfall(flags: np.ndarray, kind: np.ndarray) -> float:
    """max(benign flagged − 20%, 80% − hate flagged); NaN without both kinds of row."""
    benign, hate = kind == BENIGN_IDENTITY, kind == HATE
    if not benign.any() or not hate.any():
        return float("nan")
    return float(max(flags[benign].mean() - BENIGN_MAX, HATE_MIN - flags[hate].mean()))


def shifted(thresholds: Mapping[str, float], offset: float) -> dict[str, float]:
    """Every violation class's threshold moved by `offset` in logit space (no_violation kept)."""
    out = {}
    for name, value in thresholds.items():
        if name == "no_violation":
            out[name] = float(value)
            continue
        t = min(max(value, 1e-6), 1 - 1e-6)
        out[name] = float(1 / (1 + np.exp(-(np.log(t / (1 - t)) + offset))))
    return out


def best_offset(
    probs: np.ndarray, kind: np.ndarray, lang: np.ndarray, base: Mapping[str, float], extra: Extra | None = None
) -> float | None:
    """The offset with the least mean shortfall over the languages in `lang`; None if no
    language has both kinds of row. Ties go to the offset nearest 0 (the F1 thresholds).
    With `extra` rows (probs, kind, lang), a language's cost is the mean of its shortfall on
    `probs` and on `extra`, over those of the two that have both kinds of row."""
    sets = [(probs, kind, lang)] + ([] if extra is None else [tuple(np.asarray(a) for a in extra)])
    langs = sorted({x for _, k, g in sets for x in set(g) if {HATE, BENIGN_IDENTITY} <= set(k[g == x])})
    if not langs:
        return None

    def cost(offset: float) -> tuple[float, float]:
        moved = shifted(base, offset)
        per_set = [(flagged(p, moved), k, g) for p, k, g in sets]
        return float(np.mean([_lang_cost(per_set, x) for x in langs])), abs(offset)

    return float(min(OFFSETS, key=cost))


def _lang_cost(per_set: list[tuple[np.ndarray, np.ndarray, np.ndarray]], lang: str) -> float:
    """Mean shortfall of `lang` over the row sets that have both kinds of row for it."""
    values = [shortfall(f[g == lang], k[g == lang]) for f, k, g in per_set]
    return float(np.mean([v for v in values if not np.isnan(v)]))


def balanced_offsets(
    probs: np.ndarray, kind: Sequence[str], lang: Sequence[str], base: Mapping[str, float], extra: Extra | None = None
) -> tuple[float, dict[str, float]]:
    """(global offset, {language: its own offset}) on validation rows (and `extra` rows, see
    `best_offset`); languages without both hate and benign-identity rows get no entry (they use
    the global offset)."""
    kinds, langs = np.asarray(kind), np.asarray(lang)
    overall = best_offset(probs, kinds, langs, base, extra)
    per_lang = {}
    extra_langs = set() if extra is None else set(extra[2])
    for x in sorted(set(lang) | extra_langs):
        rows = langs == x
        own_extra = None
        if extra is not None:
            keep = np.asarray(extra[2]) == x
            own_extra = (np.asarray(extra[0])[keep], np.asarray(extra[1])[keep], np.asarray(extra[2])[keep])
        offset = best_offset(probs[rows], kinds[rows], langs[rows], base, own_extra)
        if offset is not None:
            per_lang[str(x)] = offset
    return (0.0 if overall is None else overall), per_lang
