"""Peak memory against recording length: streaming ingest vs decoding the whole file.

Voice-chat recordings run for hours. Ingest decodes, runs the VAD and stages audio block by
block (tasks/ingest.py); before, it decoded the whole file into memory and grew by about 37 MB
per minute. For recordings of 1, 20 and 120 minutes (a one-minute pattern of three espeak-ng
lines over a faint noise floor, repeated; Ogg/Opus, as voice chat is stored), each measurement
runs in a fresh process and reports that process's peak RSS:

- `ingest (streaming)`: `prepare_source`, what the label flow runs per input;
- `ingest (whole file)`: the previous way, `load_audio` then `chunk_speech` (same VAD settings),
  the obvious alternative, in the same run;
- `label flow`: the whole `label` flow (ingest, ASR, labeller, embedder, write, an ephemeral
  Prefect API) on the file, in-process task runner;
- with `--classify-run RUN` (any trained run directory): `classify (streaming)`, what `voxtox
  classify` runs (`classify_inputs` with the VAD), against `classify (whole file)`, the previous
  way: `load_audio`, the VAD on the array, the same window scorer on its speech segments.

    python benchmarks/ingest_memory.py                      # 1, 20 and 120 minutes
    python benchmarks/ingest_memory.py --minutes 1 20 --skip-flow
    python benchmarks/ingest_memory.py --skip-flow --skip-ingest --classify-run runs/demo-baseline
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np  # noqa: E402
import soundfile  # noqa: E402

from voxtox.audio import SAMPLE_RATE  # noqa: E402
from voxtox.corpus.speech_synth import Utterance, lay_out  # noqa: E402

LINES = (
    Utterance("good game everyone, see you tomorrow night", "en"),
    Utterance("nice shot mate, push mid with me", "en", "f3"),
    Utterance("we need more healing in the team", "en", "m3"),
)

PROBES = {
    "ingest (streaming)": """
        from voxtox.tasks.ingest import prepare_source
        result = prepare_source(path, "train", settings, out / "work")
        n_chunks = len(result.chunks)
    """,
    "ingest (whole file)": """
        from voxtox.chunk import chunk_speech
        from voxtox.audio import load_audio
        n_chunks = len(chunk_speech(load_audio(path).samples, settings.vad).chunks)
    """,
    "label flow": """
        from prefect.task_runners import ThreadPoolTaskRunner
        from voxtox.flows.label import label_flow
        report = label_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=1))(
            inputs=[path], split="train", settings=settings)
        n_chunks = report.n_clips
    """,
}
CLASSIFY_PROBES = {
    "classify (streaming)": """
        from voxtox.models.classify import classify_inputs, load_model
        model = load_model(run).model
        (result,) = classify_inputs([path], model, vad=settings.vad)
        n_chunks = len(result.windows)
    """,
    "classify (whole file)": """
        from voxtox.audio import load_audio
        from voxtox.models.inference import WindowScorer
        from voxtox.chunk import chunk_speech
        from voxtox.models.classify import load_model
        scorer = WindowScorer(load_model(run).model)
        samples = load_audio(path).samples
        spans = [(int(c.start_s * 16000), int(c.end_s * 16000)) for c in chunk_speech(samples, settings.vad).chunks]
        n_chunks = sum(len(p) for p in scorer.score_many([samples[a:b] for a, b in spans]))
    """,
}


def _probe_code(body: str) -> str:
    return textwrap.dedent(
        """
        import resource, sys, time
        from pathlib import Path
        from voxtox.settings import Settings
        path, out, run = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
        settings = Settings(data_dir=out)
        started = time.perf_counter()
        """
    ) + textwrap.dedent(body) + textwrap.dedent(
        """
        wall = time.perf_counter() - started
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, n_chunks, round(wall, 1))
        """
    )


def make_recording(directory: Path, minutes: int) -> Path:
    """`minutes` of a one-minute pattern (three lines, then quiet), as Ogg/Opus."""
    path = directory / f"chat-{minutes}min.ogg"
    if path.exists():
        return path
    speech, _ = lay_out(list(LINES), [1.5, 2.0], lead_s=1.0, tail_s=0.0)
    minute = np.zeros(60 * SAMPLE_RATE, np.float32)
    minute[: len(speech)] = speech
    minute += np.random.default_rng(0).normal(0, 0.0015, minute.size).astype(np.float32)
    wav = directory / f"chat-{minutes}min.wav"
    with soundfile.SoundFile(wav, "w", SAMPLE_RATE, 1, subtype="PCM_16") as out:
        for _ in range(minutes):
            out.write(minute)
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(wav), "-c:a", "libopus", "-b:a", "24k",
                    str(path)], check=True)
    wav.unlink()
    return path


def measure(probe: str, path: Path, work: Path, run: str) -> tuple[int, int, float]:
    env = os.environ | {"PREFECT_HOME": str(work / "prefect-home")}
    body = (PROBES | CLASSIFY_PROBES)[probe]
    done = subprocess.run([sys.executable, "-c", _probe_code(body), str(path), str(work), run],
                          capture_output=True, text=True, env=env, timeout=7200)
    if done.returncode:
        raise RuntimeError(f"{probe} on {path.name} failed:\n{done.stderr[-3000:]}")
    peak_mb, chunks, wall = done.stdout.split()[-3:]
    return int(peak_mb), int(chunks), float(wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=int, nargs="+", default=[1, 20, 120])
    parser.add_argument("--audio-dir", type=Path, default=Path(tempfile.gettempdir()) / "voxtox-bench-memory")
    parser.add_argument("--skip-flow", action="store_true", help="leave out the label flow")
    parser.add_argument("--skip-ingest", action="store_true", help="leave out the two ingest probes")
    parser.add_argument("--classify-run", default="", help="a trained run: also measure voxtox classify")
    args = parser.parse_args()
    args.audio_dir.mkdir(parents=True, exist_ok=True)
    probes = [p for p in PROBES if not (args.skip_flow and p == "label flow")
              and not (args.skip_ingest and p.startswith("ingest"))]
    probes += list(CLASSIFY_PROBES) if args.classify_run else []
    print(f"# {platform.machine()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}\n")
    print("| recording | file MB | " + " | ".join(f"{p}: peak RSS MB (wall s)" for p in probes) + " |")
    print("|---|---:|" + "---:|" * len(probes))
    first: dict[str, int] = {}
    for minutes in args.minutes:
        path = make_recording(args.audio_dir, minutes)
        cells = []
        for probe in probes:
            with tempfile.TemporaryDirectory() as work:
                peak, _, wall = measure(probe, path, Path(work), args.classify_run)
            first.setdefault(probe, peak)
            cells.append(f"{peak} ({wall:.0f}) {100 * (peak - first[probe]) / first[probe]:+.0f}%")
        print(f"| {minutes} min | {path.stat().st_size / 1e6:.1f} | " + " | ".join(cells) + " |", flush=True)
    print("\nPercentages: peak RSS against the first (shortest) recording of the same column.")


if __name__ == "__main__":
    main()
