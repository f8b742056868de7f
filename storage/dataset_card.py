"""The clips directory as a Hugging Face dataset: a dataset card whose `configs` map voxtox's
split folders onto `datasets`' split names.

`datasets` does not read hive folder names, so without the card `load_dataset` on the clips
folder gives one `train` split holding validation and test rows too. The card lists only the
splits that have shards (a split pattern that matches nothing is an error there). The audio
feature (Audio, 16 kHz) and `lang` come from the files themselves (storage/schema.py).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

#: voxtox's split folder -> the split name `datasets` users expect.
HF_SPLITS = {"train": "train", "val": "validation", "test": "test"}
CARD = "README.md"


def dataset_card(splits: list[str], pattern: str = "split={split}/**/*.parquet") -> str:
    """The card for `splits`; `pattern` finds a split's files (`{split}`: voxtox's name for it,
    `{name}`: the name `datasets` gives it)."""
    entries = "\n".join(
        f'  - split: {HF_SPLITS[split]}\n    path: "{pattern.format(split=split, name=HF_SPLITS[split])}"'
        for split in splits
    )
    return (
        "---\nconfigs:\n- config_name: default\n  data_files:\n" + entries + "\n---\n\n"
        "# voxtox clips\n\n"
        "Labelled voice-chat clips written by voxtox: one row per clip with its audio (FLAC, 16 kHz "
        "mono), transcript, language, the six class probabilities and decisions, and the text "
        "embedding. Load it with `datasets.load_dataset(\"<this folder>\")`; the folder's `val` split "
        "is `validation` here. Written by voxtox; edits are overwritten.\n"
    )


def present_splits(clips_dir: Path) -> list[str]:
    return [s for s in HF_SPLITS if any((clips_dir / f"split={s}").glob("**/*.parquet"))]


def write_dataset_card(shards_root: Path) -> Path | None:
    """(Re)write `<shards_root>/clips/README.md` for the splits present; None when no clips yet."""
    clips_dir = shards_root / "clips"
    splits = present_splits(clips_dir) if clips_dir.is_dir() else []
    if not splits:
        return None
    path = clips_dir / CARD
    text = dataset_card(splits)
    if path.exists() and path.read_text() == text:
        return path
    temporary = path.with_name(f".{CARD}.{uuid.uuid4().hex}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
    return path
