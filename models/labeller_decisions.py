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


def best_offset(probs: np.ndarray, kind: np.ndarray, lang: np.ndarray, base: Mapping[str, float]) -> float | None:
    """The offset with the least mean shortfall over the languages in `lang`; None if no
    language has both kinds of row. Ties go to the offset nearest 0 (the F1 thresholds)."""
    langs = [x for x in sorted(set(lang)) if {HATE, BENIGN_IDENTITY} <= set(kind[lang == x])]
    if not langs:
        return None

    def cost(offset: float) -> tuple[float, float]:
        flags = flagged(probs, shifted(base, offset))
        return float(np.mean([shortfall(flags[lang == x], kind[lang == x]) for x in langs])), abs(offset)

    return float(min(OFFSETS, key=cost))


def balanced_offsets(
    probs: np.ndarray, kind: Sequence[str], lang: Sequence[str], base: Mapping[str, float]
) -> tuple[float, dict[str, float]]:
    """(global offset, {language: its own offset}) on validation rows; languages without both
    hate and benign-identity rows get no entry (they use the global offset)."""
    kinds, langs = np.asarray(kind), np.asarray(lang)
    overall = best_offset(probs, kinds, langs, base)
    per_lang = {}
    for x in sorted(set(lang)):
        rows = langs == x
        offset = best_offset(probs[rows], kinds[rows], langs[rows], base)
        if offset is not None:
            per_lang[x] = offset
    return (0.0 if overall is None else overall), per_lang
