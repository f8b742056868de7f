"""Import human labels (truth) into the catalog: `voxtox import-labels`.

A truth file lists labelled spans of audio files, one row per span, as JSONL, CSV or Parquet:
- the audio: `audio` (or `path`, `audio_path`, `source_uri`), a path relative to the truth file,
  and/or `audio_sha256` (or `source_sha256`). With a path, the file's sha256 is computed exactly as
  ingest does (over the file's bytes) and must agree with a given sha256; with only a sha256 the
  labels join whatever audio of that content gets labelled;
- `start_s`, `end_s` (or `start`, `end`): seconds, 0 <= start < end;
- the labels: `labels` (a list, or a string separated by `;`, `,` or `|`) or `label_<class>`
  columns (true/false, 1/0), with classes from voxtox's six;
- optional `speaker`, `lang`, `text`, `origin`.
`voxtox synth` writes such files (`truth/utterances-<split>.jsonl`).

Rows are grouped per audio content and written into the lake's `human_labels` table, one commit
per recording keyed by its hash: importing a file again replaces that audio's labels, it never
duplicates them.
"""

from __future__ import annotations

import math
from collections import defaultdict
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from voxtox.audio import SAMPLE_RATE, RejectedInput, open_audio
from voxtox.files import jsonl_objects, sha256_file
from voxtox.labels import CLASSES
from voxtox.storage import lake
from voxtox.storage.lake import LakeTarget
from voxtox.storage.schema import HUMAN_LABELS_SCHEMA, label_column
from voxtox.confine import outside_reason

AUDIO_KEYS = ("audio", "path", "audio_path", "source_uri")
SHA_KEYS = ("audio_sha256", "source_sha256", "sha256")
_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f", ""}


class TruthFileError(ValueError):
    """A truth file that cannot be imported; the message names the file, row and problem."""


@dataclass(frozen=True)
class ImportReport:
    n_files: int
    n_sources: int
    n_spans: int
    shards: list[str]
    n_forgotten: int = 0  # recordings whose labels were not imported: `voxtox forget` erased them


def read_truth_rows(path: Path) -> list[dict[str, object]]:
    """Raw rows of a JSONL, CSV or Parquet truth file."""
    if not path.exists():
        raise TruthFileError(f"{path}: truth file does not exist")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        try:
            return [row for _, row in jsonl_objects(path)]
        except ValueError as error:
            raise TruthFileError(str(error)) from error
    if suffix == ".csv":
        import csv

        with path.open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    raise TruthFileError(f"{path}: unknown truth file type {suffix!r} (use .jsonl, .csv or .parquet)")


def _audio_duration(path: Path, where: str) -> float:
    """Seconds of audio in the file: what its container declares, else what decodes."""
    try:
        with open_audio(path) as reader:
            if reader.declared_s:
                return reader.declared_s
            return sum(len(block) for block in reader.blocks()) / SAMPLE_RATE
    except RejectedInput as error:
        raise TruthFileError(f"{where}: audio file {path} cannot be decoded ({error.detail})") from error


def _first(row: dict[str, object], keys: tuple[str, ...]) -> object:
    for key in keys:
        value = row.get(key)
        if value not in (None, ""):
            return value
    return None


def _flag(value: object, where: str, column: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise TruthFileError(f"{where}: column {column!r} must be true/false or 1/0, got {value!r}")


def _labels(row: dict[str, object], where: str) -> set[str]:
    unknown_columns = sorted(
        k for k in row if k.startswith("label_") and k not in {label_column(c) for c in CLASSES}
        and k != "label_origin"
    )
    if unknown_columns:
        raise TruthFileError(f"{where}: unknown class column(s) {unknown_columns}; classes are {list(CLASSES)}")
    given = row.get("labels")
    if given is not None:
        names = given if isinstance(given, list) else str(given).replace("|", ";").replace(",", ";").split(";")
        labels = {str(n).strip() for n in names if str(n).strip()}
        unknown = sorted(labels - set(CLASSES))
        if unknown:
            raise TruthFileError(f"{where}: unknown class(es) {unknown}; classes are {list(CLASSES)}")
        return labels
    columns = [c for c in CLASSES if label_column(c) in row]
    if not columns:
        raise TruthFileError(f"{where}: no labels: give `labels` or label_<class> columns for {list(CLASSES)}")
    return {c for c in columns if _flag(row[label_column(c)], where, label_column(c))}


def _seconds(row: dict[str, object], keys: tuple[str, ...], where: str) -> float:
    value = _first(row, keys)
    if value is None:
        raise TruthFileError(f"{where}: missing {keys[0]}")
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as error:
        raise TruthFileError(f"{where}: {keys[0]} must be a number of seconds, got {value!r}") from error
    if not math.isfinite(seconds):
        raise TruthFileError(f"{where}: {keys[0]} must be finite, got {value!r}")
    return seconds


#: A labelled span may end this far past the end of its audio (container durations are rounded).
SPAN_END_TOLERANCE_S = 0.1


def _check_within(start: float, end: float, duration: float | None, where: str, audio: str) -> None:
    if start < 0 or end <= start:
        raise TruthFileError(f"{where}: bad times: need 0 <= start_s < end_s, got {start} .. {end}")
    if duration is not None and end > duration + SPAN_END_TOLERANCE_S:
        raise TruthFileError(
            f"{where}: span {start:g} .. {end:g} s ends after the audio does ({audio} is {duration:.2f} s long)"
        )


def _check_confined(path: Path, confine_to: Path | None, where: str) -> None:
    reason = outside_reason(str(path), confine_to) if confine_to is not None else None
    if reason is not None:
        raise TruthFileError(f"{where}: {reason}")


def _resolve_audio(
    audio: object, given_sha: str | None, truth_file: Path, where: str, confine_to: Path | None,
    hashes: dict[Path, str], durations: dict[Path, float],
) -> tuple[str, str, float]:
    """A row's audio file (relative to the truth file): its sha256, checked against the one the
    row names, its path and its duration; `hashes` and `durations` cache them per file."""
    audio_path = Path(str(audio)).expanduser()
    audio_path = audio_path if audio_path.is_absolute() else (truth_file.parent / audio_path)
    audio_path = audio_path.resolve()
    _check_confined(audio_path, confine_to, where)
    if not audio_path.is_file():
        raise TruthFileError(f"{where}: audio file {audio_path} does not exist")
    if audio_path not in hashes:
        hashes[audio_path] = sha256_file(audio_path)
    if given_sha is not None and given_sha != hashes[audio_path]:
        raise TruthFileError(
            f"{where}: {audio_path} has sha256 {hashes[audio_path][:12]}..., not the "
            f"{given_sha[:12]}... the truth file names (the audio changed after it was labelled)"
        )
    if audio_path not in durations:
        durations[audio_path] = _audio_duration(audio_path, where)
    return hashes[audio_path], str(audio_path), durations[audio_path]


def parse_truth_file(
    path: Path, known_durations: dict[str, float] | None = None, confine_to: Path | None = None
) -> dict[tuple[str, str], list[dict[str, object]]]:
    """Rows in HUMAN_LABELS_SCHEMA (less imported_at), grouped by (sha256, uri); every problem is
    raised as TruthFileError naming the file and row. A span must lie within its audio: the file's
    duration when it is given by path, else the duration of the labelled source of that hash in
    `known_durations` (a hash not labelled yet cannot be checked). With `confine_to` (a served
    run's inbox), the file and the audio it names must lie below it, or nothing outside is read."""
    _check_confined(path, confine_to, str(path))
    rows = read_truth_rows(path)
    if not rows:
        raise TruthFileError(f"{path}: no rows")
    known_durations = known_durations or {}
    hashes: dict[Path, str] = {}
    durations: dict[Path, float] = {}
    grouped: dict[tuple[str, str], list[dict[str, object]]] = defaultdict(list)
    for number, row in enumerate(rows, 1):
        where = f"{path}:{number}" if path.suffix.lower() != ".csv" else f"{path}: row {number}"
        audio = _first(row, AUDIO_KEYS)
        given_sha = _first(row, SHA_KEYS)
        if audio is None and given_sha is None:
            raise TruthFileError(f"{where}: no audio: give `audio` (a path relative to the truth file) or `audio_sha256`")
        sha = str(given_sha).lower() if given_sha is not None else None
        if audio is not None:
            sha, uri, duration = _resolve_audio(audio, sha, path, where, confine_to, hashes, durations)
        else:
            assert sha is not None
            uri, duration = "", known_durations.get(sha)
        start = _seconds(row, ("start_s", "start"), where)
        end = _seconds(row, ("end_s", "end"), where)
        _check_within(start, end, duration, where, uri or f"audio {sha[:12]}")
        labels = _labels(row, where)
        grouped[(sha, uri)].append({
            "source_sha256": sha,
            "source_uri": uri,
            "start_s": start,
            "end_s": end,
            "speaker": None if row.get("speaker") is None else str(row["speaker"]),
            "lang": None if row.get("lang") is None else str(row["lang"]),
            "text": None if row.get("text") is None else str(row["text"]),
            **{label_column(c): c in labels for c in CLASSES},
            "label_origin": str(row.get("origin") or row.get("label_origin") or path.name),
        })
    return grouped


def _rows_by_source(paths: list[Path], durations: dict[str, float],
                    confine_to: Path | None) -> dict[str, list[dict[str, object]]]:
    """Every file's rows, checked, per recording (a recording named in several files: the union)."""
    by_source: dict[str, list[dict[str, object]]] = defaultdict(list)
    for path in paths:
        for (sha, _uri), rows in parse_truth_file(Path(path), durations, confine_to).items():
            by_source[sha].extend(rows)
    return by_source


def _labels_table(rows: list[dict[str, object]], now: datetime) -> pa.Table:
    records = [{**r, "imported_at": now} for r in sorted(rows, key=lambda r: (r["start_s"], r["end_s"]))]
    return pa.Table.from_pylist(records, HUMAN_LABELS_SCHEMA)


def import_truth_files_to_lake(
    paths: list[Path], target: LakeTarget, now: datetime | None = None, confine_to: Path | None = None
) -> ImportReport:
    """`import_truth_files` into a lake's `human_labels` table, which every host reads: each
    recording's labels are one commit that replaces its earlier ones (keyed by its hash), not
    made when the recording is tombstoned (checked inside that commit, as labelling does)."""
    now = now or datetime.now(UTC)
    with closing(lake.connect(target)) as con:
        durations: dict[str, float] = {}
        if "sources" in lake.tables(con):
            rows = con.execute(f"SELECT source_sha256, duration_s FROM {lake.ALIAS}.sources").fetchall()
            durations = {sha: float(duration) for sha, duration in rows}
        by_source = _rows_by_source(paths, durations, confine_to)
        written: list[str] = []
        for sha, rows in sorted(by_source.items()):
            if lake.replace_key(con, target, sha, {"human_labels": _labels_table(rows, now)}, unless_forgotten=sha):
                written.append(f"{target.catalog_name()}#human_labels/{sha}")
    imported = [rows for sha, rows in by_source.items() if f"{target.catalog_name()}#human_labels/{sha}" in written]
    return ImportReport(len(paths), len(imported), sum(map(len, imported)), written, len(by_source) - len(imported))
