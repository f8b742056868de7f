"""Transcription against the peers a user would pick instead, on the same audio, in one run.

Voice-chat-like recordings from espeak-ng (benchmarks/_audio.py: 2-4 speakers taking turns with
0.3-8 s pauses over a faint noise floor; the spoken text and language of every line known), in
three variants: code-switched (lobbies in en/es/de, 30% of speakers in another of the three; or in en/fr/pt) and
single-language (English). Same model, compute type, threads and beam size everywhere; models
loaded and warmed before any timing; each method transcribes all files, in turns, `--repeats`
times in rotating order, so load from other work falls on all of them alike.

- faster-whisper `WhisperModel.transcribe()` per file (the naive loop);
- faster-whisper `BatchedInferencePipeline` (batch 8), and with `multilingual=True`;
- voxtox's transcription stage: ingest (decode + VAD) then `transcribe_sources` over all files
  as one unit, as the label flow runs it (the time includes ingest, as the peers' include their
  decoding and VAD); the peers transcribe one file at a time, as their API does.

WER and CER (jiwer) of each file's text against what was spoken (lower case, no punctuation);
language accuracy per spoken line: the language the method gave the time of the line's middle
(the file's language for per-file methods; n/a where a method has one but does not report it).

    python benchmarks/asr_peers.py                       # both variants, about 4.5 minutes each
    python benchmarks/asr_peers.py --minutes 2 --files 2 --variants code-switched
    python benchmarks/asr_peers.py --variants --flow-minutes 30   # the label flow vs its transcription stage
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import jiwer  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from faster_whisper import BatchedInferencePipeline  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _audio import build_audio  # noqa: E402

from voxtox.models.asr import load_whisper, warm_up  # noqa: E402
from voxtox.settings import Settings  # noqa: E402
from voxtox.storage.model_store import resolve_model  # noqa: E402
from voxtox.tasks.ingest import PreparedSource, make_units, prepare_source  # noqa: E402
from voxtox.tasks.transcribe import transcribe_sources  # noqa: E402

HERE = Path(__file__).resolve().parent
VARIANTS = {
    "code-switched": {"langs": ("en", "es", "de"), "other_share": 0.3, "seed": 11},
    "single-language": {"langs": ("en",), "other_share": 0.0, "seed": 12},
    # The labeller's other two languages, which whisper-base knows least (issue 31, fault 10).
    "code-switched-fr-pt": {"langs": ("en", "fr", "pt"), "other_share": 0.3, "seed": 13},
}


@dataclass
class Output:
    """What a method made of one file: text in time order, and its language over time."""

    text: str
    language_at: Callable[[float], str | None]


@dataclass
class Tally:
    wall_s: float = 0.0
    references: list[str] = field(default_factory=list)
    hypotheses: list[str] = field(default_factory=list)
    lines: int = 0
    languages_right: int = 0
    reports_language: bool = True


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


def per_file(language: str) -> Callable[[float], str]:
    return lambda _t: language


class Methods:
    def __init__(self, settings: Settings, work: Path) -> None:
        asr = settings.asr
        self.settings = settings
        self.work = work
        self.model_dir = resolve_model(asr.model, settings.model_cache_dir)
        self.model = load_whisper(self.model_dir, asr.device, asr.compute_type, asr.cpu_threads)
        self.batched = BatchedInferencePipeline(self.model)
        warm_up(self.model, asr)

    def naive(self, paths: list[Path]) -> list[Output]:
        outputs = []
        for path in paths:
            segments, info = self.model.transcribe(str(path), beam_size=self.settings.asr.beam_size)
            outputs.append(Output(" ".join(s.text for s in segments), per_file(info.language)))
        return outputs

    def batched_pipeline(self, paths: list[Path], multilingual: bool = False) -> list[Output]:
        outputs = []
        for path in paths:
            segments, info = self.batched.transcribe(
                str(path), batch_size=8, beam_size=self.settings.asr.beam_size, multilingual=multilingual
            )
            text = " ".join(s.text for s in segments)
            outputs.append(Output(text, per_file(info.language) if not multilingual else lambda _t: None))
        return outputs

    def voxtox(self, paths: list[Path], **asr_options: object) -> list[Output]:
        """All files as one unit, as the label flow gives them to the stage."""
        settings = self.settings.model_copy(update={"asr": self.settings.asr.model_copy(update=asr_options)})
        sources = [prepare_source(str(path), "test", settings, self.work) for path in paths]
        assert all(isinstance(s, PreparedSource) for s in sources), sources
        unit = transcribe_sources(sources, self.model_dir, settings, self.work / "unit")
        rows = pq.read_table(unit.transcripts).to_pylist()
        return [self._output(source, [r for r in rows if r["source_sha256"] == source.source_sha256])
                for source in sources]

    @staticmethod
    def _output(source: PreparedSource, rows: list[dict]) -> Output:
        rows = sorted(rows, key=lambda r: r["start_s"])
        chunks = [(c.start_s, c.end_s) for c in source.chunks]
        language = {(r["start_s"], r["end_s"]): r["lang"] for r in rows}

        def language_at(t: float) -> str | None:
            return next((language.get(span) for span in chunks if span[0] <= t <= span[1]), None)

        return Output(" ".join(r["transcript"] for r in rows), language_at)


#: voxtox with one setting changed, run with --ablations.
ABLATIONS = {
    "voxtox, no word times": {"word_timestamps": False},
    "voxtox, no temperature fallback": {"fallback_temperatures": []},
    "voxtox, any language (`asr.languages = []`)": {"languages": []},
    "voxtox, no language weights (`asr.language_weights = {}`)": {"language_weights": {}},
    "voxtox, second opinion (`asr.second_language_below = -0.8`)": {"second_language_below": -0.8},
}


def run_variant(
    methods: Methods, name: str, minutes: float, files: int, audio_root: Path, ablations: bool, repeats: int
) -> list[str]:
    recipe = VARIANTS[name]
    directory = audio_root / f"{name}-{minutes:g}min-{files}"
    audio = build_audio(directory, minutes, files, recipe["seed"], recipe["langs"], recipe["other_share"])
    manifest = {f["name"]: f for f in json.loads((directory / "manifest.json").read_text())["files"]}
    runs: dict[str, Callable[[list[Path]], list[Output]]] = {
        "faster-whisper `transcribe()` per file": methods.naive,
        "`BatchedInferencePipeline` (batch 8)": methods.batched_pipeline,
        "`BatchedInferencePipeline(multilingual=True)`": lambda p: methods.batched_pipeline(p, True),
        "**voxtox transcription stage** (ingest + `transcribe_sources`)": methods.voxtox,
    }
    if ablations:
        runs |= {label: (lambda p, o=options: methods.voxtox(p, **o)) for label, options in ABLATIONS.items()}
    tallies: dict[str, Tally] = defaultdict(Tally)
    labels = list(runs)
    for repeat in range(repeats):  # in rotating order, so load from other work falls on all alike
        for label in labels[repeat % len(labels) :] + labels[: repeat % len(labels)]:
            started = time.perf_counter()
            outputs = runs[label](audio.paths)
            tally = tallies[label]
            tally.wall_s += time.perf_counter() - started
            if repeat:
                continue  # the same outputs again
            for path, output in zip(audio.paths, outputs, strict=True):
                spoken = manifest[path.name]["utterances"]
                tally.references.append(normalise(" ".join(u["text"] for u in spoken)))
                tally.hypotheses.append(normalise(output.text))
                for line in spoken:
                    found = output.language_at((line["start_s"] + line["end_s"]) / 2)
                    tally.reports_language &= found is not None or "voxtox" in label
                    tally.lines += 1
                    tally.languages_right += found == line["lang"]
    naive = tallies[next(iter(runs))]
    peer = tallies["`BatchedInferencePipeline` (batch 8)"]
    lines = [
        f"\n### {name}: {len(audio.paths)} files, {audio.duration_s / 60:.1f} min of audio, "
        f"{100 * audio.speech_s / audio.duration_s:.0f}% speech\n",
        "| method | audio s / wall s | vs naive | vs batched | WER | CER | language right per line |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, tally in tallies.items():
        speed = audio.duration_s / tally.wall_s
        language = f"{tally.languages_right / tally.lines:.3f}" if tally.reports_language else "n/a"
        lines.append(
            f"| {label} | {speed:.2f} | {naive.wall_s / tally.wall_s:.2f}× | {peer.wall_s / tally.wall_s:.2f}× | "
            f"{jiwer.wer(tally.references, tally.hypotheses):.3f} | {jiwer.cer(tally.references, tally.hypotheses):.3f} | "
            f"{language} |"
        )
    return lines


def run_flow(settings: Settings, minutes: float, audio_root: Path, work: Path, repeats: int = 2) -> list[str]:
    """The whole `label` flow against its transcription stage alone, on the same audio, in
    alternating pairs (stage, flow, stage, flow, ...). The first flow starts the ephemeral
    Prefect API, as every `voxtox label` command does; later ones find it running, as under
    `voxtox serve` or with PREFECT_API_URL."""
    from prefect.task_runners import ThreadPoolTaskRunner

    from voxtox.flows.label import label_flow

    recipe = VARIANTS["code-switched"]
    files = max(1, round(minutes / 1.5))
    audio = build_audio(audio_root / f"flow-{minutes:g}min", minutes, files, recipe["seed"], recipe["langs"],
                        recipe["other_share"])
    model_dir = resolve_model(settings.asr.model, settings.model_cache_dir)
    lines = [
        f"\n### the label flow vs its transcription stage: {audio.duration_s / 60:.1f} min of audio, {files} files\n",
        "| run | stage wall s | flow wall s | flow audio s / wall s | flow vs stage |",
        "|---|---:|---:|---:|---:|",
    ]
    for repeat in range(repeats):
        started = time.perf_counter()
        sources = [prepare_source(str(p), "train", settings, work / f"stage-{repeat}") for p in audio.paths]
        prepared = [s for s in sources if isinstance(s, PreparedSource)]
        for index, unit in enumerate(make_units(prepared, settings.pipeline.unit_speech_s)):  # as the flow cuts them
            transcribe_sources(unit, model_dir, settings, work / f"stage-{repeat}-{index}")
        stage_s = time.perf_counter() - started
        flow_settings = settings.model_copy(update={"data_dir": work / f"flow-data-{repeat}"})  # nothing known yet
        started = time.perf_counter()
        label_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=1))(
            inputs=[str(p) for p in audio.paths], split="train", settings=flow_settings
        )
        flow_s = time.perf_counter() - started
        api = "ephemeral API started by this flow" if repeat == 0 else "API already running"
        lines.append(f"| {repeat + 1} ({api}) | {stage_s:.1f} | {flow_s:.1f} | {audio.duration_s / flow_s:.2f} | "
                     f"{stage_s / flow_s:.2f}× |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=4.5)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS),
                        help="audio variants to compare on (none: only --flow-minutes)")
    parser.add_argument("--ablations", action="store_true", help="also voxtox with one setting changed at a time")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes over the audio per method")
    parser.add_argument("--flow-minutes", type=float, default=0, help="also time the label flow on this much audio")
    parser.add_argument("--flow-repeats", type=int, default=2, help="alternating stage/flow pairs (the first flow starts the API)")
    parser.add_argument("--audio-dir", type=Path, default=HERE / ".cache" / "asr-peers")
    args = parser.parse_args()
    settings = Settings()
    print(f"# {platform.machine()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}; whisper "
          f"{settings.asr.model} {settings.asr.compute_type}, {settings.asr.cpu_threads} threads, beam "
          f"{settings.asr.beam_size}; voxtox languages {settings.asr.languages or 'any'}, word times "
          f"{settings.asr.word_timestamps}")
    with tempfile.TemporaryDirectory() as work:
        settings = settings.model_copy(update={"data_dir": Path(work) / "data"})
        if args.variants:
            methods = Methods(settings, Path(work))
            for variant in args.variants:
                lines = run_variant(methods, variant, args.minutes, args.files, args.audio_dir, args.ablations,
                                    args.repeats)
                print("\n".join(lines), flush=True)
        if args.flow_minutes:
            print("\n".join(run_flow(settings, args.flow_minutes, args.audio_dir, Path(work), args.flow_repeats)),
                  flush=True)


if __name__ == "__main__":
    main()
