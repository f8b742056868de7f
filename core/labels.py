"""The label set every part of voxtox shares (../shared/DESIGN.md §2)."""

from typing import Final

#: The six outputs, in the paper's order. Multi-label: a clip may carry several.
CLASSES: Final[tuple[str, ...]] = (
    "profanity",
    "bullying",
    "dating_sexting",
    "racism",
    "other",
    "no_violation",
)

#: The classes humans label and the paper reports (per-class AP and their mean, mAP).
TOXIC_CLASSES: Final[tuple[str, ...]] = ("profanity", "dating_sexting", "racism", "bullying")

NUM_CLASSES: Final[int] = len(CLASSES)
