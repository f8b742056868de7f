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

from labeller_real import labeller_probs  # experiments/labeller_real.py: any USE labeller kind
from voxtox.models.embedding_cache import EmbeddingCache
from voxtox.models.labeller_data import load_splits
from voxtox.models.labeller_real import evaluate_real, real_markdown
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
    for path in args.labellers:
        probs = labeller_probs(path, data.texts, 128, cache)
        config = json.loads((path / "voxtox_labeller.json").read_text())
        print(f"### `{path}` on the real {args.split} splits ({args.data})\n", flush=True)
        results = evaluate_real(data, probs, config["thresholds"], args.resamples,
                                lang_thresholds=config.get("lang_thresholds"))
        print(real_markdown(results), flush=True)


if __name__ == "__main__":
    main()
