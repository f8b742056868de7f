"""`voxtox export-dataset`'s folder as a Hugging Face dataset: a dataset card whose `configs` map
voxtox's splits onto `datasets`' split names (storage/export.py writes the files).

The card lists only the splits that have clips (a split pattern that matches nothing is an error
there). The audio feature (Audio, 16 kHz) and `lang` come from the files themselves
(storage/schema.py).
"""

from __future__ import annotations


#: voxtox's split folder -> the split name `datasets` users expect.
HF_SPLITS = {"train": "train", "val": "validation", "test": "test"}
CARD = "README.md"


def dataset_card(splits: list[str], pattern: str) -> str:
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
