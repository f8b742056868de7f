"""The real-text test report of USE-head labellers, from cached embeddings (fast reruns):
the same tables `voxtox labeller eval DIR --data real,real-nc,davidson` appends, for several
labellers on the same rows.

    .venv/bin/python experiments/labeller_real_report.py NEW OLD --cache /tmp/voxtox-emb [--split test]

Texts are cleaned and capped at 8 × 128 characters as `TextLabeller` does at labelling time, so
the embeddings and probabilities are those the labelling flow computes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from voxtox.models.embedding_cache import EmbeddingCache
from voxtox.models.labeller import CHARS_PER_TOKEN, UsemHead, clean_text
from voxtox.models.labeller_data import load_splits
from voxtox.models.labeller_real import evaluate_real, real_markdown
from voxtox.models.labeller_training import HeadNet, predict_probs
from voxtox.models.text_encoder import UsemEncoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("labellers", nargs="+", type=Path)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--data", default="real,real-nc,davidson")
    parser.add_argument("--split", default="test", choices=("val", "test"))
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()
    data = load_splits(args.data)[args.split]
    cache = EmbeddingCache(UsemEncoder(), args.cache)
    x = torch.from_numpy(cache.encode([clean_text(t)[: CHARS_PER_TOKEN * 128] for t in data.texts]))
    for path in args.labellers:
        probs = predict_probs(HeadNet(UsemHead.load(path)), x, len(data))
        config = json.loads((path / "voxtox_labeller.json").read_text())
        print(f"### `{path}` on the real {args.split} splits ({args.data})\n", flush=True)
        results = evaluate_real(data, probs, config["thresholds"], args.resamples,
                                lang_thresholds=config.get("lang_thresholds"))
        print(real_markdown(results), flush=True)


if __name__ == "__main__":
    main()
