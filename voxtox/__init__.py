"""voxtox: label voice chat for toxicity without human annotators, then train an audio-only
classifier with text injection (see README.md and ../shared/DESIGN.md)."""

__version__ = "0.1.0"
