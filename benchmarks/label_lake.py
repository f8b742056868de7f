"""`voxtox label` on the embedded lake against today's Parquet shards (issue 28: wall time within 5%).

The shards were deleted after this was run (the embedded lake is the only store since then): it runs
as written at commit 9c3b714, where both stores exist (docs/benchmarks.md has its results).

The real command, as a subprocess, on the same audio, into a fresh data dir each run: once with no
`[storage]` (the shards) and once with the embedded lake (`VOXTOX_STORAGE__CATALOG_URL=<dir>/lake/
catalog.sqlite`, `VOXTOX_STORAGE__DATA_URL=<dir>/lake/data`), in pairs whose order alternates
(shards, lake / lake, shards / ...) so that load from other processes, and any drift in it, falls on
both alike. Reports each run's wall time (the command's, Python's start and the ephemeral Prefect
API included, and the flow's own `wall_s`), the medians, the lake/shards ratio with a bootstrap
interval over the pairs, the clips each run wrote and whether both stores hold the same clips.

Transcription dominates a run, so the storage part is also timed alone (`--write-rounds`): the
pipeline's stages run once in this process on the same audio, units cut as the flow cuts them, and
then the write stage (`write_sources`: FLAC-encode each clip, then replace its source's shards, or
one lake commit per source) runs on those rows into a fresh store of each kind, alternating.

The audio is asr_peers.py's code-switched voice chat (en/es/de lobbies, espeak-ng, 1.5 min a file),
cached in --audio-dir.

    python benchmarks/label_lake.py --minutes 30 --pairs 3 --write-rounds 3
    python benchmarks/label_lake.py --minutes 3 --pairs 1 --write-rounds 1     # quick
"""

from __future__ import annotations

import os

# CTranslate2's int8 results depend on the OpenMP thread count (the other benchmarks pin it too).
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import argparse  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import duckdb  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _audio import build_audio  # noqa: E402

from voxtox.storage import lake  # noqa: E402

HERE = Path(__file__).resolve().parent
VOXTOX = Path(sys.executable).with_name("voxtox")
#: asr_peers.py's code-switched recipe (its --flow-minutes audio): whisper-base transcribes it well.
RECIPE = {"langs": ("en", "es", "de"), "other_share": 0.3, "seed": 11}
STORES = ("shards", "lake")


@dataclass
class Run:
    store: str
    pair: int
    wall_s: float  # the command's, start to exit
    flow_s: float  # the flow's own wall_s (its report)
    n_clips: int  # what the run says it wrote
    clip_ids: frozenset[str]  # what the store holds afterwards
    load: float  # 1-min load average when it ended


def lake_target(data_dir: Path) -> lake.LakeTarget:
    return lake.LakeTarget(str(data_dir / "lake" / "catalog.sqlite"), str(data_dir / "lake" / "data"))


def store_env(store: str, data_dir: Path) -> dict[str, str]:
    """The environment of a run: no `[storage]` for the shards, the embedded lake in `data_dir`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXTOX_STORAGE__")}
    env["COLUMNS"] = "200"  # rich's summary table on one line per row
    if store == "lake":
        target = lake_target(data_dir)
        env["VOXTOX_STORAGE__CATALOG_URL"] = target.catalog_url
        env["VOXTOX_STORAGE__DATA_URL"] = target.data_url
    return env


def held_clip_ids(store: str, data_dir: Path) -> frozenset[str]:
    """The clip ids the store holds, read directly (the shards' Parquet files, or the lake)."""
    if store == "lake":
        with lake.connect(lake_target(data_dir), read_only=True) as con:
            rows = con.execute(f"SELECT clip_id FROM {lake.ALIAS}.clips").fetchall()
    else:
        glob = str(data_dir / "shards" / "clips" / "**" / "*.parquet")
        rows = duckdb.sql(f"SELECT clip_id FROM read_parquet('{glob}', hive_partitioning = true)").fetchall()
    return frozenset(clip for (clip,) in rows)


def summary_value(stdout: str, key: str) -> str:
    """A row of `voxtox label`'s summary table (`│ n_clips │ 123 │`)."""
    found = re.search(rf"[│|]\s*{key}\s*[│|]\s*([^│|]+?)\s*[│|]", stdout)
    if found is None:
        raise SystemExit(f"voxtox label printed no {key} in its summary:\n{stdout[-2000:]}")
    return found.group(1)


def label_once(store: str, pair: int, audio_dir: Path, work: Path) -> Run:
    """One `voxtox label` of the audio into a fresh data dir, on `store`."""
    data_dir = work / f"{store}-{pair}-{uuid.uuid4().hex[:6]}"
    command = [str(VOXTOX), "label", str(audio_dir), "--data-dir", str(data_dir)]
    started = time.perf_counter()
    done = subprocess.run(command, env=store_env(store, data_dir), capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} ({store}) failed ({done.returncode}):\n{done.stderr[-3000:]}")
    run = Run(store, pair, wall, float(summary_value(done.stdout, "wall_s")),
              int(summary_value(done.stdout, "n_clips")), held_clip_ids(store, data_dir), os.getloadavg()[0])
    shutil.rmtree(data_dir, ignore_errors=True)
    print(f"pair {pair + 1} {store}: {run.wall_s:.1f} s (flow {run.flow_s:.1f} s), {run.n_clips} clips, "
          f"load {run.load:.2f}", file=sys.stderr, flush=True)
    return run


def bootstrap_ratio(lake_s: list[float], shards_s: list[float], resamples: int = 10_000) -> tuple[float, float]:
    """95% percentile interval of median(lake) / median(shards), resampling the pairs."""
    rng = random.Random(0)
    pairs = list(zip(lake_s, shards_s, strict=True))
    ratios = []
    for _ in range(resamples):
        drawn = [rng.choice(pairs) for _ in pairs]
        ratios.append(statistics.median(a for a, _ in drawn) / statistics.median(b for _, b in drawn))
    ratios.sort()
    return ratios[int(0.025 * resamples)], ratios[int(0.975 * resamples) - 1]


def compare_runs(audio_dir: Path, pairs: int, work: Path) -> list[Run]:
    runs = []
    for pair in range(pairs):
        order = STORES if pair % 2 == 0 else STORES[::-1]
        runs += [label_once(store, pair, audio_dir, work) for store in order]
    return runs


def print_runs(runs: list[Run], audio_s: float) -> None:
    print("\n| pair | store | order | `voxtox label` wall s | flow wall_s | clips written | clips held | "
          "1-min load after |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for index, run in enumerate(runs):
        print(f"| {run.pair + 1} | {run.store} | {index % 2 + 1} | {run.wall_s:.1f} | {run.flow_s:.1f} | "
              f"{run.n_clips} | {len(run.clip_ids)} | {run.load:.2f} |")
    by = {store: [r for r in runs if r.store == store] for store in STORES}
    print("\n| store | median wall s (min–max) | median flow wall_s | audio s / wall s | wall s per audio min |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for store, mine in by.items():
        walls = [r.wall_s for r in mine]
        median = statistics.median(walls)
        print(f"| {store} | {median:.1f} ({min(walls):.1f}–{max(walls):.1f}) | "
              f"{statistics.median(r.flow_s for r in mine):.1f} | {audio_s / median:.2f} | {median / (audio_s / 60):.2f} |")
    lake_s, shards_s = [r.wall_s for r in by["lake"]], [r.wall_s for r in by["shards"]]
    ratio = statistics.median(lake_s) / statistics.median(shards_s)
    per_pair = [a / b for a, b in zip(lake_s, shards_s, strict=True)]
    low, high = bootstrap_ratio(lake_s, shards_s)
    flow = statistics.median(r.flow_s for r in by["lake"]) / statistics.median(r.flow_s for r in by["shards"])
    print(f"\nlake / shards, median wall: **{ratio:.3f}×** (bootstrap 95% over pairs {low:.3f}–{high:.3f}; "
          f"per pair {', '.join(f'{p:.3f}' for p in per_pair)}); by the flow's own wall_s {flow:.3f}×. "
          f"Target ≤ 1.05×: {'met' if ratio <= 1.05 else 'NOT met'}.")
    ids = {r.clip_ids for r in runs}
    counts = sorted({len(r.clip_ids) for r in runs})
    print(f"every run's store holds the same clips: {'yes' if len(ids) == 1 else 'NO'} "
          f"({', '.join(map(str, counts))} clips; written as said: "
          f"{'yes' if all(r.n_clips == len(r.clip_ids) for r in runs) else 'NO'})")


# --- the write stage alone --------------------------------------------------------------------


@dataclass
class WriteRound:
    store: str
    write_s: float  # write_sources over every unit, as the flow calls it (one lake connection a unit)
    reads_s: float  # what a run reads of the store besides: known sources, forgotten, views, a summary


def prepare_units(paths: list[Path], work: Path) -> list[tuple[list, Path, Path]]:
    """The pipeline's stages before the write, in this process, units cut as the flow cuts them:
    (sources, embedded rows, dropped segments) per unit."""
    from voxtox.settings import Settings
    from voxtox.storage.model_store import resolve_model
    from voxtox.tasks.embed import embed_transcripts, resolve_text_encoder
    from voxtox.tasks.ingest import PreparedSource, make_units, prepare_source
    from voxtox.tasks.label import label_transcripts
    from voxtox.tasks.transcribe import transcribe_sources

    settings = Settings()
    asr = resolve_model(settings.asr.model, settings.model_cache_dir)
    labeller = resolve_model(settings.labeller.model, settings.model_cache_dir)
    encoder = resolve_text_encoder(settings)
    prepared = [prepare_source(str(p), "train", settings, work / "staged") for p in paths]
    prepared = [p for p in prepared if isinstance(p, PreparedSource)]
    units = []
    for index, unit in enumerate(make_units(prepared, settings.pipeline.unit_speech_s)):
        out = work / f"unit-{index:04d}"
        transcribed = transcribe_sources(unit, asr, settings, out)
        labelled = label_transcripts(Path(transcribed.transcripts), labeller, settings, out / "labelled.parquet")
        units.append((unit, embed_transcripts(labelled, encoder, settings, out / "embedded.parquet"),
                      Path(transcribed.dropped)))
    return units


def write_round(store: str, units: list[tuple[list, Path, Path]], root: Path) -> WriteRound:
    """Every unit's write into a fresh store, then the reads a run makes of it."""
    from voxtox.flows.label import _known_sources
    from voxtox.settings import Settings
    from voxtox.storage.catalog import Catalog
    from voxtox.tasks.write import write_sources

    target = lake_target(root) if store == "lake" else None
    storage = {"catalog_url": target.catalog_url, "data_url": target.data_url} if target else {}
    settings = Settings(data_dir=root, storage=storage)
    run_id = uuid.uuid4().hex
    started = time.perf_counter()
    for sources, embedded, dropped in units:
        write_sources(sources, embedded, dropped, settings.shards_dir, settings.asr.model, run_id, False, target)
    write_s = time.perf_counter() - started
    started = time.perf_counter()
    catalog = Catalog.from_settings(settings)
    _known_sources(catalog, settings, False)
    catalog.refresh_views()
    catalog.query(f"SELECT lang, count(*) FROM clips WHERE run_id = '{run_id}' GROUP BY lang")
    return WriteRound(store, write_s, time.perf_counter() - started)


def print_write_stage(paths: list[Path], rounds: int, work: Path) -> None:
    started = time.perf_counter()
    units = prepare_units(paths, work / "stages")
    n_sources = sum(len(sources) for sources, _, _ in units)
    print(f"\n### the write stage alone: {n_sources} sources in {len(units)} units "
          f"(stages before it: {time.perf_counter() - started:.0f} s, not timed)", flush=True)
    results: list[WriteRound] = []
    for index in range(rounds):
        for store in STORES if index % 2 == 0 else STORES[::-1]:
            results.append(write_round(store, units, work / f"write-{store}-{index}"))
            print(f"write round {index + 1} {store}: {results[-1].write_s:.2f} s", file=sys.stderr, flush=True)
    connects, target = [], lake_target(work / f"write-lake-{rounds - 1}")
    for _ in range(5):
        began = time.perf_counter()
        lake.connect(target).close()
        connects.append(time.perf_counter() - began)
    print("\n| store | write stage s, each round | median | per source ms | the run's reads of the store s (median) |")
    print("| --- | --- | ---: | ---: | ---: |")
    for store in STORES:
        mine = [r for r in results if r.store == store]
        median = statistics.median(r.write_s for r in mine)
        print(f"| {store} | {', '.join(f'{r.write_s:.2f}' for r in mine)} | {median:.2f} | "
              f"{1000 * median / n_sources:.0f} | {statistics.median(r.reads_s for r in mine):.2f} |")
    print(f"\nconnecting to the lake ({', '.join(target.extensions())} loaded, the SQLite catalog attached), alone: median "
          f"{1000 * statistics.median(connects):.0f} ms of 5; the write stage connects once per unit.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="audio, in files of 1.5 min")
    parser.add_argument("--pairs", type=int, default=3, help="(shards, lake) pairs of runs, order alternating")
    parser.add_argument("--write-rounds", type=int, default=3, help="rounds of the write stage alone (0: skip)")
    parser.add_argument("--audio-dir", type=Path, default=HERE / ".cache" / "label-lake")
    args = parser.parse_args()
    files = max(1, round(args.minutes / 1.5))
    cache = HERE / ".cache"  # generated audio; never committed
    cache.mkdir(exist_ok=True)
    if not (cache / ".gitignore").exists():
        (cache / ".gitignore").write_text("*\n")
    audio_dir = args.audio_dir / f"{args.minutes:g}min-{files}"
    audio = build_audio(audio_dir, args.minutes, files, RECIPE["seed"], RECIPE["langs"], RECIPE["other_share"])
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M %Z')}; "
          f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}; {len(audio.paths)} files, "
          f"{audio.duration_s / 60:.1f} min of code-switched voice chat; 1-min load average at start "
          f"{os.getloadavg()[0]:.2f}")
    print(f"# command: {VOXTOX.name} label {audio_dir} --data-dir <fresh dir>  (lake: + VOXTOX_STORAGE__CATALOG_URL="
          "<dir>/lake/catalog.sqlite VOXTOX_STORAGE__DATA_URL=<dir>/lake/data)", flush=True)
    with tempfile.TemporaryDirectory(prefix="voxtox-label-lake-") as work:
        runs = compare_runs(audio_dir, args.pairs, Path(work))
        print_runs(runs, audio.duration_s)
        if args.write_rounds:
            print_write_stage(audio.paths, args.write_rounds, Path(work))
    print(f"\n1-min load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
