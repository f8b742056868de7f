"""Text labeller speed: texts per second of two labellers on the same texts, in alternating
passes so other processes' load falls on both alike. Prints a Markdown table with the ratio.

    .venv/bin/python benchmarks/labeller_speed.py NEW_DIR --baseline OLD_DIR [--texts 640 --passes 3]

The texts are the builtin test split (seed corpus, Davidson tweets, functional cases: chat-length
sentences in five languages), the first `--texts` of them; `TextLabeller.predict_proba` with
batch 64 and 2 threads, as the labelling flow calls it. Best pass per labeller.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from voxtox.models.labeller import TextLabeller
from voxtox.models.labeller_data import load_held_out


def one_pass(labeller: TextLabeller, texts: list[str]) -> float:
    started = time.perf_counter()
    labeller.predict_proba(texts, batch_size=64)
    return len(texts) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("labeller", type=Path)
    parser.add_argument("--baseline", type=Path, required=True)
    parser.add_argument("--texts", type=int, default=640)
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    texts = load_held_out("builtin").texts[: args.texts]
    labellers = {"baseline": TextLabeller(args.baseline, threads=2), "new": TextLabeller(args.labeller, threads=2)}
    for labeller in labellers.values():
        labeller.predict_proba(texts[:64])  # warm-up
    best = {name: 0.0 for name in labellers}
    for _ in range(args.passes):
        for name, labeller in labellers.items():
            best[name] = max(best[name], one_pass(labeller, texts))
    print(f"{len(texts)} texts, best of {args.passes} alternating passes, batch 64, 2 threads\n")
    print("| labeller | texts/s | vs baseline |\n|---|---:|---:|")
    for name, path in (("baseline", args.baseline), ("new", args.labeller)):
        print(f"| {name} (`{path}`) | {best[name]:.0f} | {best[name] / best['baseline']:.2f}× |")


if __name__ == "__main__":
    main()
