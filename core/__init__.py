"""voxtox: label voice chat for toxicity without human annotators, then train an audio-only
classifier with text injection (see README.md and ../shared/DESIGN.md)."""

from voxtox.prefect_env import apply_prefect_defaults

__version__ = "0.1.0"

# Before any voxtox module imports Prefect (it reads its settings once, at import).
apply_prefect_defaults()
