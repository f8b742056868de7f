"""The labelling flow end to end: real models, real speech, a real (ephemeral) Prefect API."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from typer.testing import CliRunner

from conftest import ASR_THREADS, make_broken_inputs, spoken, write_audio
from voxtox.flows.cli import app
from voxtox.flows.label import LabelReport, label_flow
from voxtox.settings import Settings
from voxtox.storage.catalog import Catalog
from voxtox.corpus.speech_synth import Utterance

GOOD = [  # espeak-ng sentences whisper-base recognises; the weakest in lossless formats
    ("en-1.wav", Utterance("what the fuck man, this lag is killing me", "en")),
    ("en-2.mp3", Utterance("good game everyone, see you tomorrow", "en")),
    ("en-3.ogg", Utterance("we need more healing in the team, good game", "en", "f3")),
    ("en-4.m4a", Utterance("nice shot mate, push mid with me", "en")),
    ("en-5.opus", Utterance("thanks for the heal, see you next round", "en", "m3")),
    ("es-1.flac", Utterance("buena partida amigos, nos vemos mañana por la noche", "es")),
    ("es-2.mp3", Utterance("vamos a ganar esta ronda todos juntos", "es")),
    ("de-1.wav", Utterance("wir brauchen mehr Heilung im Team, gut gespielt", "de")),
    ("fr-1.flac", Utterance("c'est une très bonne équipe, nous allons gagner ce match", "fr")),
    ("pt-1.wav", Utterance("vamos defender a base agora mesmo", "pt")),
]

#: Inputs that are not audio files at all, each a reject with its reason (reliability faults 7, 3).
NOT_FILES = {
    "dangling.wav": "broken_symlink",
    "loop-a.wav": "symlink_loop",
    "loop-b.wav": "symlink_loop",
    "folder.wav": "not_a_file",
    "resent-en-2.mp3": "duplicate",
}
#: A file whose name's bytes are not UTF-8 (issue 31, fault 1): before, the write task failed on
#: "surrogates not allowed" and no input of the run, nor of any rerun, was labelled.
UNREADABLE_NAME = os.fsdecode(b"bad\xff\xfename.wav")
UNREADABLE_SHOWN = "bad\\xff\\xfename.wav"


@pytest.fixture(scope="module")
def inbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 good recordings in every format (one stereo 44.1 kHz), 5 broken ones, and inputs that
    are not audio files: a broken and two looping symbolic links, a directory named like audio,
    and a second copy of one recording."""
    directory = tmp_path_factory.mktemp("inbox")
    for index, (name, utterance) in enumerate(GOOD):
        samples = spoken(utterance)
        stereo44 = index == 0
        write_audio(directory / name, samples, rate=44_100 if stereo44 else 16_000, channels=2 if stereo44 else 1)
    make_broken_inputs(directory, spoken(Utterance("this one will be broken", "en")))
    (directory / "dangling.wav").symlink_to(directory / "gone.wav")
    (directory / "loop-a.wav").symlink_to(directory / "loop-b.wav")
    (directory / "loop-b.wav").symlink_to(directory / "loop-a.wav")
    (directory / "folder.wav").mkdir()
    (directory / "resent-en-2.mp3").write_bytes((directory / "en-2.mp3").read_bytes())
    write_audio(directory / "unreadable-name.wav", spoken(Utterance("my name cannot be read", "en")))
    (directory / "unreadable-name.wav").rename(directory / UNREADABLE_NAME)
    return directory


@pytest.fixture(scope="module")
def manifest(inbox: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A manifest naming one unreachable URL (no HTTP client installed, or nothing listening)
    beside a good file: the URL must become a reject without costing the good file."""
    path = tmp_path_factory.mktemp("manifest") / "batch.jsonl"
    path.write_text(f'{{"uri": "http://127.0.0.1:9/offline.wav"}}\n{{"uri": "{inbox / "en-4.m4a"}"}}\n')
    return path


def settings_for(data_dir: Path, labeller: Path) -> Settings:
    settings = Settings(data_dir=data_dir)
    return settings.model_copy(
        update={
            "labeller": settings.labeller.model_copy(update={"model": str(labeller)}),
            "asr": settings.asr.model_copy(update={"languages": ["en", "es", "fr", "de", "pt"]}),
        }
    )


@pytest.fixture(scope="module")
def first_run(inbox: Path, manifest: Path, tiny_labeller: Path, prefect_harness, tmp_path_factory) -> tuple[LabelReport, Settings]:
    settings = settings_for(tmp_path_factory.mktemp("data"), tiny_labeller)
    return label_flow(inputs=[str(inbox), str(manifest)], split="train", settings=settings), settings


def clips_of(settings: Settings) -> pa.Table:
    catalog = Catalog.from_settings(settings)
    return catalog.query(
        "SELECT clip_id, source_uri, lang, transcript, start_s, end_s, prob_profanity, "
        "label_no_violation, text_embedding FROM clips ORDER BY clip_id"
    )


#: The good recordings whose clips do not hinge on the last bit of an int8 kernel.
FIRM = {name for name, utterance in GOOD if utterance.lang in ("en", "es", "de")}


def firm_clips(clips: pa.Table) -> pa.Table:
    names = pa.array([Path(s).name for s in clips["source_uri"].to_pylist()], pa.string())
    return clips.filter(pc.is_in(names, value_set=pa.array(sorted(FIRM))))


def accounted_for(settings: Settings) -> set[str]:
    """Names of the recordings that gave clips or were dropped at transcription with a reason."""
    sql = "SELECT source_uri FROM clips UNION SELECT source_uri FROM rejects WHERE stage = 'transcribe'"
    return {Path(s).name for s in Catalog.from_settings(settings).query(sql).column("source_uri").to_pylist()}


def test_good_files_give_rows_and_broken_files_give_rejects(first_run) -> None:
    report, settings = first_run
    assert (report.n_inputs, report.n_sources, report.n_rejected_inputs) == (22, 10, 12)
    catalog = Catalog.from_settings(settings)
    labelled = {Path(s).name for s in catalog.query("SELECT source_uri FROM sources").column("source_uri").to_pylist()}
    assert labelled == {name for name, _ in GOOD}
    # Every good recording gives clips, or its speech is dropped at transcription for a stated
    # reason: espeak-ng's French and Portuguese are weak for whisper-base, and an int8 decode of
    # them can come out as a hallucination on one CPU family and not another (fr-1 does on AMD EPYC).
    assert accounted_for(settings) >= labelled
    with_clips = {Path(s).name for s in catalog.query("SELECT DISTINCT source_uri FROM clips")
                  .column("source_uri").to_pylist()}
    assert FIRM <= with_clips
    rejects = catalog.query(
        "SELECT source_uri, reason, detail FROM rejects WHERE stage IN ('ingest', 'chunk') ORDER BY reason"
    ).to_pylist()
    assert {Path(r["source_uri"]).name: r["reason"] for r in rejects} == {
        "blip.wav": "too_short",
        "nan.wav": "invalid_samples",
        "notes.wav": "not_audio",
        "truncated.wav": "truncated",
        "zero.wav": "empty",
        "offline.wav": "unreadable",
        UNREADABLE_SHOWN: "unreadable_name",
        **NOT_FILES,
    }
    # Of two paths with the same content, the first in sorted order is labelled.
    duplicate = next(r for r in rejects if r["reason"] == "duplicate")
    assert duplicate["detail"].endswith("/en-2.mp3")


def test_a_file_name_that_is_not_utf8_is_a_reject_and_the_others_are_labelled(first_run) -> None:
    """Issue 31, fault 1: the run completes, the name is on record with its bytes escaped, and
    the run's other recordings are labelled."""
    report, settings = first_run
    catalog = Catalog.from_settings(settings)
    rejected = catalog.query("SELECT source_uri, detail FROM rejects WHERE reason = 'unreadable_name'").to_pylist()
    assert [Path(r["source_uri"]).name for r in rejected] == [UNREADABLE_SHOWN]
    assert "not valid UTF-8" in rejected[0]["detail"]
    sources = catalog.query("SELECT count(*) AS n FROM sources").column("n")[0].as_py()
    assert report.n_sources == sources == 10


def test_the_same_audio_twice_is_labelled_once(first_run) -> None:
    report, settings = first_run
    catalog = Catalog.from_settings(settings)
    clips = catalog.query("SELECT count(*) AS n, count(DISTINCT clip_id) AS ids FROM clips").to_pylist()[0]
    sources = catalog.query("SELECT count(*) AS n, sum(n_clips) AS clips FROM sources").to_pylist()[0]
    assert clips["n"] == clips["ids"] == report.n_clips == sources["clips"]
    assert sources["n"] == 10


def test_a_finished_run_leaves_no_work_files(first_run) -> None:
    _, settings = first_run
    assert not settings.work_dir.exists() or not any(settings.work_dir.iterdir())


def test_rows_carry_languages_labels_embeddings_and_audio(first_run) -> None:
    _, settings = first_run
    catalog = Catalog.from_settings(settings)
    rows = catalog.query(
        "SELECT source_uri, lang, transcript, duration_s, audio, text_embedding, split, "
        "prob_profanity, label_profanity, labeller_model, asr_model FROM clips"
    ).to_pylist()
    # espeak-ng's English, Spanish and German are recognised on every CPU; its French and
    # Portuguese are weak for whisper-base (../shared/DESIGN.md §7), so they are not required.
    assert {"en", "es", "de"} <= {row["lang"] for row in rows}
    for row in rows:
        assert 1.0 <= row["duration_s"] <= 15.0 and row["split"] == "train"
        assert row["transcript"] and len(row["text_embedding"]) == 512
        assert row["audio"]["bytes"][:4] == b"fLaC" and row["audio"]["path"].endswith(".flac")
        assert 0.0 <= row["prob_profanity"] <= 1.0
    # Compared by what was spoken, not by the exact words that came out: which words an int8
    # decode gives differs between CPU families, but the swearing is unmistakable speech.
    profanity = {}
    for row in rows:
        name = Path(row["source_uri"]).name
        profanity[name] = max(profanity.get(name, 0.0), row["prob_profanity"])
    benign = [profanity[name] for name in ("en-2.mp3", "en-4.m4a", "en-5.opus") if name in profanity]
    assert len(benign) >= 2 and profanity["en-1.wav"] > max(benign)


def test_rerun_adds_no_rows(first_run, inbox: Path) -> None:
    report, settings = first_run
    before = clips_of(settings)
    again = label_flow(inputs=[str(inbox)], split="train", settings=settings)
    assert again.n_skipped == 11 and again.n_clips == 0  # the copy of en-2 is skipped as well
    assert clips_of(settings).equals(before)
    catalog = Catalog.from_settings(settings)
    assert catalog.query("SELECT count(*) AS n FROM rejects WHERE stage = 'ingest'").column("n")[0].as_py() == 12


def test_query_cli_answers_the_readme_query(first_run) -> None:
    _, settings = first_run
    result = CliRunner().invoke(
        app, ["query", "SELECT lang, count(*) FROM clips GROUP BY lang ORDER BY lang", "--data-dir", str(settings.data_dir)]
    )
    assert result.exit_code == 0, result.output
    langs = set(Catalog.from_settings(settings).query("SELECT DISTINCT lang FROM clips").column("lang").to_pylist())
    assert {"de", "en", "es"} <= langs  # fr and pt: see test_good_files_give_rows_and_broken_files_give_rejects
    for lang in langs:
        assert lang in result.output
    rejects = CliRunner().invoke(app, ["query", "--table", "rejects", "--data-dir", str(settings.data_dir)])
    assert rejects.exit_code == 0 and "truncated" in rejects.output


def test_dask_cluster_gives_the_same_rows(first_run, inbox: Path, tiny_labeller: Path, tmp_path: Path) -> None:
    import dask
    from prefect_dask import DaskTaskRunner

    _, settings = first_run
    dask_settings = settings_for(tmp_path / "dask-data", tiny_labeller)
    runner = DaskTaskRunner(cluster_kwargs={"n_workers": 2, "threads_per_worker": 1, "processes": True})
    # Dask starts workers with one OpenMP thread; give them the thread count this process has.
    threads = {f"distributed.nanny.pre-spawn-environ.{name}": ASR_THREADS for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    with dask.config.set(threads):
        label_flow.with_options(task_runner=runner)(inputs=[str(inbox)], split="train", settings=dask_settings)
    # The same rows, compared on the recordings whisper-base recognises firmly: under pytest-xdist
    # fr-1 (espeak-ng French, on the edge of a hallucination, see the test above) came out as clips
    # in the Dask workers and as a hallucination reject in the pytest worker (3 of 5 runs); in the
    # other 2, words' start times moved by up to 0.1 s between the two processes (clip ids hash the
    # times) while the texts and everything after them agreed. The cause was not found (the
    # fallback's sampling was one, fixed: models/asr.py, `_sampling_replica`). Every recording must
    # be accounted for in both runs.
    assert accounted_for(dask_settings) == {name for name, _ in GOOD}
    local, distributed = firm_clips(clips_of(settings)), firm_clips(clips_of(dask_settings))
    local, distributed = (t.sort_by([("source_uri", "ascending"), ("start_s", "ascending")]) for t in (local, distributed))
    assert {Path(s).name for s in local["source_uri"].to_pylist()} == FIRM
    assert list(zip(local["source_uri"].to_pylist(), local["transcript"].to_pylist(), strict=True)) == \
        list(zip(distributed["source_uri"].to_pylist(), distributed["transcript"].to_pylist(), strict=True))
    for times in ("start_s", "end_s"):
        np.testing.assert_allclose(local[times].to_numpy(), distributed[times].to_numpy(), atol=0.15)
    np.testing.assert_allclose(
        local.column("prob_profanity").to_numpy(), distributed.column("prob_profanity").to_numpy(), atol=1e-5
    )


def test_run_publishes_prefect_artifacts(first_run) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    report, settings = first_run

    def latest(key: str):  # noqa: ANN202
        with get_client(sync_client=True) as client:
            found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
        return [a for a in found if str(a.flow_run_id) == report.run_id]

    counts = latest("label-counts")
    assert counts and counts[0].type == "table"
    langs = set(Catalog.from_settings(settings).query("SELECT DISTINCT lang FROM clips").column("lang").to_pylist())
    assert {row["lang"] for row in json.loads(counts[0].data)} == langs >= {"en", "es", "de"}
    assert latest("label-summary")[0].type == "markdown"
    progress = latest("label-progress")
    assert progress and progress[0].data == 100.0
