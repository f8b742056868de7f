"""`voxtox forget`: erase recordings from everything voxtox stores, and keep them out.

A recording is named by the sha256 of its bytes, by its URI (path), by a speaker that human
labels name (every recording the speaker is heard in), or by a file listing such names. voxtox
has no session id apart from the recording itself: one recording is one session.

Erasing recordings (`erase_in_lake`):
1. the copies outside the lake's tables: review audio (S3 and under <data_dir>/review), the cached
   window scores under the run directories, and the work directories no running label run holds
   (storage/workdir.py: scratch of runs that died, with decoded audio in them);
2. one lake commit that deletes their rows from every table and tombstones their hashes, so later
   label runs skip them unless told to (`--allow-forgotten`); then the data files that held them
   are rewritten, every older snapshot expired and the unreferenced files deleted (lake.erase);
then say which trained runs learnt from them (`training_sources.parquet` in each run: a model
cannot be un-trained) and whether their input files are still where they were labelled from.

Not a Prefect flow on purpose: a flow run's parameters and logs stay in Prefect's database,
which would then hold the very names a deletion request asks to erase.
"""

from __future__ import annotations

import json
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from voxtox.files import sha256_file
from voxtox.settings import Settings
from voxtox.storage import lake
from voxtox.storage.erasure import RecordingRows, Rewritten, erase_rows, matching_rows
from voxtox.storage.schema import TRAINING_SOURCES_FILE
from voxtox.storage.tombstones import is_sha256
from voxtox.storage.workdir import sweep_stale_work
from voxtox.storage.review_export import erase_review_copies
from voxtox.storage.review_projects import delete_pushed_tasks
from voxtox.storage.review_s3 import delete_review_audio

SHA256_PREFIX = "sha256:"
URI_PREFIX = "uri:"
SPEAKER_PREFIX = "speaker:"
#: How the report names rows erased from run directories' cached window scores.
CACHED_SCORES = "cached scores (runs)"


# --- naming what to forget --------------------------------------------------------------------


@dataclass(frozen=True)
class ForgetRequest:
    sha256s: frozenset[str] = frozenset()
    uris: frozenset[str] = frozenset()
    speakers: frozenset[str] = frozenset()


def parse_request(items: list[str]) -> ForgetRequest:
    """`sha256:<hex>`, `uri:<path or URL>`, `speaker:<id>`; without a prefix, 64 hex digits are
    a sha256 and anything else is a URI. Nothing is stripped: a file name may end in a space, and
    erasing another file than the one named (or none) must not pass for erasing it."""
    sha256s, uris, speakers = set(), set(), set()
    for item in items:
        if item.startswith(SPEAKER_PREFIX):
            speakers.add(item.removeprefix(SPEAKER_PREFIX))
        elif item.startswith(URI_PREFIX):
            uris.add(item.removeprefix(URI_PREFIX))
        elif item.startswith(SHA256_PREFIX) or is_sha256(item.lower()):
            sha = item.removeprefix(SHA256_PREFIX).lower()
            if not is_sha256(sha):
                raise ValueError(f"{item!r} is not a sha256 (64 hex digits)")
            sha256s.add(sha)
        elif item:
            uris.add(item)
    return ForgetRequest(frozenset(sha256s), frozenset(uris), frozenset(speakers))


def read_request_file(path: Path) -> list[str]:
    """One recording per line, as on the command line (spaces kept); blank lines and `#`
    comments are skipped."""
    if not path.is_file():
        raise FileNotFoundError(f"list of recordings {path} does not exist")
    lines = path.read_text().splitlines()
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _local_path(uri: str) -> Path | None:
    if "://" in uri and not uri.startswith("file://"):
        return None
    return Path(uri.removeprefix("file://")).expanduser().resolve()


# --- reading the tables -------------------------------------------------------------------------


def _select(files: list[Path], needed: set[str], sql: str, params: list[object] | None = None) -> list[tuple]:
    """`SELECT ... FROM t ...` (`sql`, with `t` the files read by name, `filename` included),
    or nothing when there are no files or they lack a column in `needed`."""
    if not files:
        return []
    paths = [str(f) for f in files]
    source = "read_parquet(?, filename = true, union_by_name = true, hive_partitioning = false)"
    with duckdb.connect() as con:
        columns = {row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {source}", [paths]).fetchall()}
        if not needed <= columns:
            return []
        return con.execute(f"WITH t AS (SELECT * FROM {source}) {sql}", [paths, *(params or [])]).fetchall()


@dataclass(frozen=True)
class Recordings:
    """What a request names, as found in the data: the hashes to erase and tombstone, the URIs
    of their rows (a row without a hash is matched by its URI), and the names that matched nothing."""

    sha256s: frozenset[str]
    uris: frozenset[str]
    unmatched: tuple[str, ...] = ()


# --- runs -------------------------------------------------------------------------------------------


def _existing(directories: list[Path]) -> list[Path]:
    unique = {d.resolve() for d in directories if d.is_dir()}
    return sorted(unique)


def cached_score_files(runs_dirs: list[Path]) -> list[Path]:
    """Parquet files under the run directories that hold per-clip data (cached window scores):
    every one but the runs' records of what they trained on."""
    return sorted({p for d in _existing(runs_dirs) for p in d.rglob("*.parquet") if p.name != TRAINING_SOURCES_FILE})


def runs_that_saw(runs_dirs: list[Path], sha256s: frozenset[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Runs whose training data held any of the recordings (run dir -> splits), and trained runs
    that do not record their training data (trained before voxtox recorded it)."""
    records = sorted({p for d in _existing(runs_dirs) for p in d.rglob(TRAINING_SOURCES_FILE)})
    rows = _select(records, {"source_sha256", "split"},
                   "SELECT filename, list(DISTINCT split ORDER BY split) FROM t WHERE list_contains(?, source_sha256) "
                   "GROUP BY filename ORDER BY filename", [sorted(sha256s)])
    saw = {str(Path(name).parent): splits for name, splits in rows}
    recorded = {p.parent for p in records}
    unrecorded = sorted(
        str(config.parent) for d in _existing(runs_dirs) for config in d.rglob("config.json")
        if config.parent not in recorded and "train_clips" in json.loads(config.read_text())
    )
    return saw, unrecorded


# --- erasing ----------------------------------------------------------------------------------------


@dataclass
class ErasureReport:
    recordings: list[str]
    unmatched: list[str]
    new_tombstones: int = 0
    rows: dict[str, int] = field(default_factory=dict)  # table (or CACHED_SCORES) -> rows erased
    files_rewritten: list[str] = field(default_factory=list)
    files_deleted: list[str] = field(default_factory=list)
    work_dirs_removed: list[str] = field(default_factory=list)
    work_dirs_in_use: list[str] = field(default_factory=list)
    runs_trained_on: dict[str, list[str]] = field(default_factory=dict)
    runs_without_record: list[str] = field(default_factory=list)
    input_files: list[str] = field(default_factory=list)  # still there, same content
    input_files_deleted: list[str] = field(default_factory=list)
    review_files: list[str] = field(default_factory=list)  # under <data_dir>/review: deleted or rewritten
    label_studio: dict[str, str] = field(default_factory=dict)  # pushed project URL -> its tasks deleted, or why not
    dry_run: bool = False
    lake: str | None = None  # the lake's catalog, when the tables are a lake's (data files rewritten, snapshots expired)
    review_objects_s3: int = 0  # review audio deleted from the object store (`review export` with data on S3)


def _erase(files: list[Path], rows: RecordingRows, dry_run: bool) -> Rewritten:
    if dry_run:
        return Rewritten(rows={str(path): len(found) for path, found in matching_rows(files, rows.condition).items()})
    return erase_rows(files, rows)


def _record(report: ErasureReport, name: str, done: Rewritten) -> None:
    if done.n_rows:
        report.rows[name] = report.rows.get(name, 0) + done.n_rows
    report.files_rewritten += done.rewritten
    report.files_deleted += done.deleted


def _input_files(recordings: Recordings) -> dict[Path, str]:
    """Local files the recordings were labelled from that still hold the same bytes."""
    found: dict[Path, str] = {}
    for uri in recordings.uris:
        local = _local_path(uri)
        if local is not None and local.is_file():
            sha = sha256_file(local)
            if sha in recordings.sha256s:
                found[local] = sha
    return found


def _after_erasure(report: ErasureReport, settings: Settings, runs_dirs: list[Path], clip_ids: frozenset[str],
                   inputs: dict[Path, str], delete_inputs: bool) -> None:
    """What follows the tables' erasure: the tasks pushed to Label Studio deleted, the trained runs
    that learnt from the recordings named, and their input files deleted or named."""
    report.label_studio = delete_pushed_tasks(settings, clip_ids, report.dry_run)
    report.runs_trained_on, report.runs_without_record = runs_that_saw(runs_dirs, frozenset(report.recordings))
    for path in sorted(inputs):
        if delete_inputs and not report.dry_run:
            path.unlink()
            report.input_files_deleted.append(str(path))
        else:
            report.input_files.append(str(path))


def forget(
    request: ForgetRequest,
    settings: Settings,
    runs_dirs: list[Path] | None = None,
    delete_inputs: bool = False,
    dry_run: bool = False,
) -> ErasureReport:
    """Forget what `request` names: find it, erase it, tombstone it, list the runs that saw it.
    Runs are looked for under `settings.runs_dir` and `runs_dirs`; the tables are the lake's
    (`forget_in_lake`)."""
    return forget_in_lake(request, settings, runs_dirs, delete_inputs, dry_run)


# --- on a lake (storage/lake.py) ----------------------------------------------------------------


def _uri_forms(uri: str) -> set[str]:
    """The ways a URI may be stored: as given, and a local file's resolved path with and without file://."""
    local = _local_path(uri)
    return {uri} if local is None else {uri, str(local), f"file://{local}"}


def identify_in_lake(request: ForgetRequest, con: duckdb.DuckDBPyConnection) -> Recordings:
    """`identify` in a lake: the recordings a request names by hash, URI (and a local file's current
    content) or speaker (the lake's human labels), the URIs of their rows, and what matched nothing."""
    sha256s = set(request.sha256s)
    held = lake.held(con, request.sha256s)
    unmatched = [sha for sha in sorted(request.sha256s) if sha not in held]
    without_hash: set[str] = set()
    for uri in sorted(request.uris):
        forms = _uri_forms(uri)
        found = set().union(*lake.recordings_of(con, forms).values())
        local = _local_path(uri)
        if local is not None and local.is_file():
            found.add(sha256_file(local))
        unhashed = lake.uris_of(con, (), forms)  # rows of an input that could not be read
        if not found and not unhashed:
            unmatched.append(uri)
        sha256s |= found
        without_hash |= unhashed
    by_speaker = lake.recordings_of_speakers(con, request.speakers)
    for speaker in sorted(request.speakers):
        sha256s |= by_speaker.get(speaker, set())
        if speaker not in by_speaker:
            unmatched.append(f"{SPEAKER_PREFIX}{speaker}")
    uris = lake.uris_of(con, sha256s, without_hash)
    return Recordings(frozenset(sha256s), frozenset(uris), tuple(unmatched))


def _erase_copies(report: ErasureReport, settings: Settings, runs_dirs: list[Path], rows: RecordingRows) -> None:
    """Erase the copies outside the lake's tables: review audio on S3 and under <data_dir>/review,
    the runs' cached window scores (by clip id: call it while the lake still has the clips), and
    dead runs' work directories (decoded audio)."""
    if not report.dry_run and rows.clip_ids:
        report.review_objects_s3 = delete_review_audio(settings, rows.clip_ids)
    report.review_files = erase_review_copies(settings.data_dir, rows.clip_ids, report.dry_run)
    _record(report, CACHED_SCORES, _erase(cached_score_files(runs_dirs), rows, report.dry_run))
    if not report.dry_run:
        report.work_dirs_removed = [str(p) for p in sweep_stale_work(settings.work_dir)]
    if settings.work_dir.is_dir():
        report.work_dirs_in_use = sorted(str(p) for p in settings.work_dir.iterdir() if p.is_dir())


def erase_in_lake(recordings: Recordings, settings: Settings, runs_dirs: list[Path], delete_inputs: bool = False,
                  dry_run: bool = False) -> ErasureReport:
    """Erase the recordings everywhere (see the module's docstring): the copies outside it first (a failure there leaves the lake's
    rows, so a rerun finds the recordings again), then one commit that deletes their rows from
    every table and tombstones them, then their bytes purged from every snapshot and data file
    (lake.erase); then what follows any erasure (Label Studio tasks, runs, input files)."""
    target = lake.target_for(settings)
    report = ErasureReport(sorted(recordings.sha256s), list(recordings.unmatched), dry_run=dry_run,
                           lake=target.catalog_name())
    inputs = _input_files(recordings)
    with closing(lake.connect(target)) as con:
        rows = RecordingRows(recordings.sha256s, recordings.uris, lake.clip_ids_of(con, recordings.sha256s))
        report.rows = lake.rows_held(con, recordings.sha256s, recordings.uris)
        _erase_copies(report, settings, runs_dirs, rows)
        if not dry_run and (recordings.sha256s or recordings.uris):
            report.new_tombstones = len(recordings.sha256s - lake.forgotten(con, recordings.sha256s))
            lake.erase(con, target, recordings.sha256s, recordings.uris)
    _after_erasure(report, settings, runs_dirs, rows.clip_ids, inputs, delete_inputs)
    return report


def forget_in_lake(request: ForgetRequest, settings: Settings, runs_dirs: list[Path] | None = None,
                   delete_inputs: bool = False, dry_run: bool = False) -> ErasureReport:
    """`forget` in the lake (embedded or `[storage]`'s): every process and host sees the erasure and its tombstones."""
    with closing(lake.connect(lake.target_for(settings), read_only=True)) as con:
        recordings = identify_in_lake(request, con)
    return erase_in_lake(recordings, settings, [settings.runs_dir, *(runs_dirs or [])], delete_inputs, dry_run)
