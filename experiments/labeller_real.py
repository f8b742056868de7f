"""Choose the labeller's head by real sentences: train variants of the USE head on cached
embeddings and score each on the real validation splits of all five languages.

    .venv/bin/python experiments/labeller_real.py --cache /tmp/voxtox-emb --out /tmp/real-variants.json

Every variant trains on the train splits of `--data` (default `real,builtin`: the commercially
usable real sets plus the templated seed corpus, functional train families and Davidson). Epochs
and thresholds are chosen on the commercially usable validation rows, as `voxtox labeller train`
does; the variants are then compared on every real validation row, the non-commercial Spanish
sets included (they never train and never set a threshold; they only rank a handful of variants).
The table gives per language the real-val macro AP and the hate-vs-benign-identity proxy (point
values); `score` = mean over the five languages of (macro AP + ROC AUC) / 2.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from voxtox.corpus.real import NONCOMMERCIAL_SETS
from voxtox.models.embedding_cache import EmbeddingCache
from voxtox.models.labeller import CHARS_PER_TOKEN, UsemHead, clean_text
from voxtox.models.labeller_data import LabelledTexts, load_splits, repeat_sources
from voxtox.models.labeller_real import evaluate_real
from voxtox.models.labeller_training import HeadNet, TrainingLoss, choose_thresholds, predict_probs, train_net
from voxtox.models.text_encoder import UsemEncoder
from voxtox.settings import LabellerTrainSettings

LANGS = ("de", "en", "es", "fr", "pt")


def labeller_probs(path: Path, texts: list[str], max_tokens: int, cache: EmbeddingCache) -> np.ndarray:
    """A labeller directory's probabilities for `texts`, cleaned and capped at 8 × `max_tokens`
    characters as `TextLabeller` does: a head on the frozen encoder reads the embedding cache; a
    `usem3-lora` labeller (adapted encoder) runs through `TextLabeller` itself, i.e. the numpy
    path with its adapters folded in, the one the labelling flow uses."""
    from voxtox.models.labeller import USEM_LORA_KIND, LabelMap, TextLabeller

    if LabelMap.load(path).kind == USEM_LORA_KIND:
        return TextLabeller(str(path), max_length=max_tokens).predict_proba(list(texts), batch_size=256)
    x = torch.from_numpy(cache.encode([clean_text(t)[: CHARS_PER_TOKEN * max_tokens] for t in texts]))
    return predict_probs(HeadNet(UsemHead.load(path)), x, len(texts))


@dataclass
class Variant:
    name: str
    hidden_dim: int = 2048
    dropout: float = 0.3
    epochs: int = 16
    repeat: dict[str, int] = field(default_factory=lambda: {"functional": 2, "davidson": 2})
    drop_sources: tuple[str, ...] = ()
    learning_rate: float = 1e-3


VARIANTS = {
    v.name: v
    for v in (
        Variant("shipped-recipe+real"),
        Variant("real-once-templates-once", repeat={}),
        Variant("real-only", drop_sources=("seed", "functional")),
        Variant("no-functional", drop_sources=("functional",), repeat={"davidson": 2}),
        Variant("h1024-d0.2", hidden_dim=1024, dropout=0.2, repeat={}),
        Variant("h4096-d0.4", hidden_dim=4096, dropout=0.4, repeat={}),
        Variant("h2048-e8", epochs=8, repeat={}),
        Variant("real-x2", repeat={"germeval": 2, "toldbr": 2, "mlma": 2, "openai": 2, "toxigen": 2}),
    )
}


def embed(cache: EmbeddingCache, data: LabelledTexts, max_chars: int) -> torch.Tensor:
    return torch.from_numpy(cache.encode([clean_text(t)[:max_chars] for t in data.texts]))


def train_variant(
    variant: Variant, train: LabelledTexts, x_train: torch.Tensor, val: tuple[torch.Tensor, LabelledTexts]
) -> HeadNet:
    keep = [i for i, s in enumerate(train.source) if s not in variant.drop_sources]
    rows = repeat_sources(train.subset(keep), variant.repeat)
    # repeat_sources keeps row order per source; map repeated rows back to embedding rows
    index = np.repeat(np.asarray(keep), [max(1, variant.repeat.get(train.source[i], 1)) for i in keep])
    torch.manual_seed(0)
    head = UsemHead(512, variant.hidden_dim, variant.dropout)
    net = HeadNet(head)
    config = LabellerTrainSettings(hidden_dim=variant.hidden_dim, dropout=variant.dropout)
    train_net(
        net, TrainingLoss(config, net.feature_dim), x_train[index], rows, val,
        epochs=variant.epochs, learning_rate=variant.learning_rate, batch_size=64, seed=0,
    )
    return net


def summarise(data: LabelledTexts, probs: np.ndarray, thresholds: dict[str, float]) -> dict:
    results = {r.lang: r for r in evaluate_real(data, probs, thresholds, n_resamples=20)}
    table = {}
    for lang in LANGS:
        r = results[lang]
        table[lang] = {"mAP": r.ap["mAP"].point, **{k: v.point for k, v in r.proxy.items()}}
    table["score"] = float(np.mean([(table[x]["mAP"] + table[x]["auc"]) / 2 for x in LANGS]))
    return table


def print_row(name: str, table: dict) -> None:
    cells = " | ".join(
        f"{100 * table[x]['mAP']:.1f} / {table[x]['auc']:.2f} / {100 * table[x]['benign_flagged']:.0f} / "
        f"{100 * table[x]['hate_flagged']:.0f}"
        for x in LANGS
    )
    shortfall = f" {100 * table['shortfall']:.1f} |" if "shortfall" in table else ""  # labeller_decisions.py's
    print(f"| {name} | {cells} | {table['score']:.3f} |{shortfall}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True, help="embedding cache directory")
    parser.add_argument("--data", default="real,builtin")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--baseline", default="core/shipped_models/voxtox-labeller")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    started = time.perf_counter()
    splits = load_splits(args.data)
    nc = load_splits("real-nc")
    val_all = LabelledTexts.concat([splits["val"], nc["val"]])
    val_real = val_all.subset([i for i, s in enumerate(val_all.source) if s not in ("seed", "functional", "davidson")])
    select = val_real.subset([i for i, s in enumerate(val_real.source) if s not in NONCOMMERCIAL_SETS])
    cache = EmbeddingCache(UsemEncoder(), args.cache)
    x_train = embed(cache, splits["train"], CHARS_PER_TOKEN * 64)
    x_select, x_real = (embed(cache, d, CHARS_PER_TOKEN * 128) for d in (select, val_real))
    print(f"embedded in {time.perf_counter() - started:.0f} s; train {len(splits['train'])}, "
          f"select {len(select)}, real val {len(val_real)}", flush=True)
    print("| variant | " + " | ".join(f"{x} mAP / AUC / benign% / hate%" for x in LANGS) + " | score |")
    print("|---|" + "---|" * (len(LANGS) + 1))
    out = {}
    base = UsemHead.load(Path(args.baseline)).eval()
    base_thresholds = json.loads((Path(args.baseline) / "voxtox_labeller.json").read_text())["thresholds"]
    out["shipped"] = summarise(val_real, predict_probs(HeadNet(base), x_real, len(val_real)), base_thresholds)
    print_row("shipped (2026-12-01)", out["shipped"])
    for name in args.variants.split(","):
        net = train_variant(VARIANTS[name], splits["train"], x_train, (x_select, select))
        thresholds = choose_thresholds(select, predict_probs(net, x_select, len(select)), "f1")
        out[name] = summarise(val_real, predict_probs(net, x_real, len(val_real)), thresholds)
        print_row(name, out[name])
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
