"""Decision offsets chosen with the functional suite's held-out *train-family* templates as well as
the real validation rows (session 12): the real-val table of `labeller_decisions.py` for the
`per-lang` rule and its honest 2-fold form, with and without those extra rows in the offset choice.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/labeller_offsets_functional.py DIR [DIR ...] --cache EMB --probs PROBS_DIR

The extra rows (`voxtox.models.labeller_data.functional_offset_rows`) are the 20% of the
functional `train` families' templates that `voxtox labeller train` holds out and, with real data
in the mix, never uses: hateful cases count as hate, benign identity statements, negations and
counter-speech as benign identity. The `eval` families (the regression check) are never read.
Each language's offset then minimises the mean of its real-val shortfall and its templated
shortfall (Spanish, with no commercially usable real val rows, gets its own offset from the
templates alone). In the 2-fold form the real rows are cross-fitted as in `labeller_decisions.py`
and the templated rows help choose both folds' offsets (they are never reported).
Probabilities are kept in PROBS_DIR (an adapted encoder takes minutes to run on a loaded machine).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from labeller_decisions import LANGS, crossfit, summarise
from labeller_real import labeller_probs, print_row
from voxtox.corpus.real import BENIGN_IDENTITY, HATE
from voxtox.models.embedding_cache import EmbeddingCache
from voxtox.models.labeller_data import LabelledTexts, functional_offset_rows, load_splits
from voxtox.models.labeller_decisions import balanced_offsets, shifted
from voxtox.models.labeller_training import choose_thresholds
from voxtox.models.text_encoder import UsemEncoder


def probs_for(path: Path, parts: dict[str, tuple[LabelledTexts, int]], cache: EmbeddingCache, store: Path) -> dict:
    """{part: probabilities}, read from `store` when a run already computed them."""
    file = store / f"{path.name}.npz"
    if file.exists():
        return dict(np.load(file))
    out = {name: labeller_probs(path, data.texts, tokens, cache) for name, (data, tokens) in parts.items()}
    np.savez(file, **out)
    return out


def extra_of(rows: LabelledTexts, probs: np.ndarray) -> tuple:
    return probs, np.asarray(rows.kind), np.asarray(rows.lang)


def rule_table(select, p_sel, val, p_val, extra) -> tuple[dict, dict]:
    """`per-lang` thresholds (offsets with `extra` rows if given) scored on val, and the offsets."""
    f1 = choose_thresholds(select, p_sel, "f1")
    overall, own = balanced_offsets(p_sel, select.kind, select.lang, f1, extra)
    table = summarise(val, p_val, {x: shifted(f1, own.get(x, overall)) for x in LANGS})
    return table, {"global": overall, **own}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("labellers", type=Path, nargs="+")
    parser.add_argument("--cache", required=True)
    parser.add_argument("--probs", type=Path, required=True)
    args = parser.parse_args()
    args.probs.mkdir(parents=True, exist_ok=True)
    splits, nc = load_splits("real,builtin"), load_splits("real-nc")
    val_all = LabelledTexts.concat([splits["val"], nc["val"]])
    val = val_all.subset([i for i, s in enumerate(val_all.source) if s not in ("seed", "functional", "davidson")])
    select, extra_rows = splits["val"], functional_offset_rows()
    kinds = np.asarray(extra_rows.kind)
    print(f"extra rows: {len(extra_rows)}; " + ", ".join(
        f"{x} {int(((np.asarray(extra_rows.lang) == x) & (kinds == HATE)).sum())} hate / "
        f"{int(((np.asarray(extra_rows.lang) == x) & (kinds == BENIGN_IDENTITY)).sum())} benign" for x in LANGS))
    cache = EmbeddingCache(UsemEncoder(), args.cache)
    parts = {"select": (select, 64), "val": (val, 128), "extra": (extra_rows, 128)}
    for path in args.labellers:
        p = probs_for(path, parts, cache, args.probs)
        extra = extra_of(extra_rows, p["extra"])
        base, offsets = rule_table(select, p["select"], val, p["val"], None)
        print_row(f"{path.name} / per language", base)
        print_row(f"{path.name} / per language, 2-fold", crossfit(select, p["select"], val, p["val"], base))
        with_extra, offsets_extra = rule_table(select, p["select"], val, p["val"], extra)
        print_row(f"{path.name} / per language + templated offset rows", with_extra)
        print_row(f"{path.name} / per language + templated offset rows, 2-fold",
                  crossfit(select, p["select"], val, p["val"], base, extra))
        print(f"  offsets real only {offsets}; with templated rows {offsets_extra}", flush=True)


if __name__ == "__main__":
    main()
