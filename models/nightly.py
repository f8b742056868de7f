"""The nightly flow's operations (the flow is flows/nightly.py): what arrived in the inbox, how
many training clips there are, which runs are current and candidate, and the promotion rule
(candidate − current mAP with a paired-bootstrap CI that excludes 0) and its atomic switch."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from voxtox.models.metrics import MAP_NAME
from voxtox.settings import Settings
from voxtox.storage.catalog import Catalog
from voxtox.storage.schema import HAS_AUDIO
from voxtox.storage.runs import CURRENT, RunDir
from voxtox.models.scoring import ALL_LANGUAGES

SPLIT_DIRS = ("train", "val", "test")
TRUTH_DIR = "truth"
TRUTH_SUFFIXES = (".jsonl", ".csv", ".parquet")
#: What `voxtox synth` writes beside the audio: metadata, not input.
SYNTH_METADATA = ("corpus.json", "manifest.jsonl")


@dataclass
class Decision:
    promoted: bool
    reason: str
    map_difference: float | None = None
    map_difference_low: float | None = None
    map_difference_high: float | None = None


# --- what arrived --------------------------------------------------------------------------


def inbox_inputs(inbox: Path, default_split: str) -> dict[str, list[str]]:
    """Inputs per split: the split subdirectories, then loose audio elsewhere in the inbox."""
    if not inbox.is_dir():
        raise FileNotFoundError(f"inbox {inbox} does not exist (settings: serve.inbox)")
    by_split: dict[str, list[str]] = {}
    for split in SPLIT_DIRS:
        if (inbox / split).is_dir() and any((inbox / split).iterdir()):
            by_split.setdefault(split, []).append(str(inbox / split))
    reserved = {inbox / name for name in (*SPLIT_DIRS, TRUTH_DIR)}
    if (inbox / SYNTH_METADATA[0]).exists():
        reserved |= {inbox / name for name in SYNTH_METADATA}
    loose = [p for p in sorted(inbox.iterdir()) if p not in reserved and not p.name.startswith(".")]
    if loose:
        by_split.setdefault(default_split, []).extend(str(p) for p in loose)
    return by_split


def truth_files(inbox: Path) -> list[Path]:
    directory = inbox / TRUTH_DIR
    if not directory.is_dir():
        return []
    return sorted(
        p for p in directory.iterdir()
        if p.suffix in TRUTH_SUFFIXES and not p.name.startswith("segments-") and not p.stem.endswith("-train")
    )


# --- training ------------------------------------------------------------------------------


def train_clip_count(settings: Settings) -> int:
    catalog = Catalog.from_settings(settings)
    if "clips" not in catalog.refresh_views():
        return 0
    condition = settings.train.train_filter
    rows = catalog.query(
        f"SELECT count(*) AS n FROM clips WHERE split = 'train' AND {HAS_AUDIO} AND ({condition})"
    ).to_pylist()
    return int(rows[0]["n"])


def current_run(settings: Settings) -> Path | None:
    link = settings.runs_dir / CURRENT
    return link.resolve() if link.exists() else None


def clips_trained_on(run: Path) -> int:
    config = run / "config.json"
    return int(json.loads(config.read_text()).get("train_clips", 0)) if config.exists() else 0


def candidate_run(settings: Settings, night: str) -> Path:
    """The night's run directory, absolute: it is compared with `current`, a resolved link."""
    return (settings.runs_dir / f"nightly-{night}").resolve()


def latest_candidate(settings: Settings) -> Path | None:
    finished = [run for run in sorted(settings.runs_dir.glob("nightly-*")) if RunDir(run).is_finished()]
    return finished[-1].resolve() if finished else None


# --- promotion -----------------------------------------------------------------------------


def map_difference(results: str) -> tuple[float, float, float] | None:
    """(point, low, high) of candidate − current mAP over all languages, from the results file."""
    table = pq.read_table(results)
    mask = pc.and_(
        pc.and_(pc.equal(table["kind"], "difference"), pc.equal(table["lang"], ALL_LANGUAGES)),
        pc.and_(pc.equal(table["metric"], "ap_difference"), pc.equal(table["class_name"], MAP_NAME)),
    )
    rows = table.filter(mask).to_pylist()
    if not rows or rows[0]["low"] is None:
        return None
    return rows[0]["point"], rows[0]["low"], rows[0]["high"]


def decide(difference: tuple[float, float, float] | None, confidence: float = 0.95) -> Decision:
    if difference is None:
        return Decision(False, "the mAP difference is undefined on this test set (a class without positives?)")
    point, low, high = difference
    interval = f"{100 * confidence:g}% CI [{100 * low:+.1f}, {100 * high:+.1f}]"
    if low > 0:
        return Decision(True, f"mAP better by {100 * point:+.1f} points, {interval} excludes 0", point, low, high)
    return Decision(False, f"mAP difference {100 * point:+.1f} points, {interval} does not exclude 0: "
                           "the current model stays", point, low, high)


def promote(run: Path, settings: Settings) -> Path:
    """Point `<runs_dir>/current` at `run`, atomically (a reader sees the old or the new one)."""
    link = settings.runs_dir / CURRENT
    staging = link.with_name(f".{CURRENT}.{os.getpid()}")
    staging.unlink(missing_ok=True)
    staging.symlink_to(os.path.relpath(run.resolve(), link.parent.resolve()), target_is_directory=True)
    os.replace(staging, link)
    return link
