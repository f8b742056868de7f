"""The review loop through a real Label Studio (1.23.2, its own venv: scripts/labelstudio.sh),
started once for this module on 127.0.0.1: push a batch, play a task's audio, annotate through
the API as reviewers would in the browser, pull the export, import, check the reviews."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from labelstudio_server import TOKEN, LabelStudioProcess, log_in, open_task, take_early
from prefect_server import browser
from tests.conftest import lake_catalog, synthetic_clips, write_rows
from voxtox.flows.cli import app
from voxtox.labels import CLASSES
from voxtox.settings import ReviewSettings, Settings
from voxtox.storage.clips import read_clip_index
from voxtox.storage.reviews import read_reviews
from voxtox.storage.schema import label_column
from voxtox.storage.review_export import CHOICES, TEXT
from voxtox.storage.review_projects import pushed_projects
from voxtox.tasks.review_push import ReviewCycle, _import_finished

runner = CliRunner()


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(URL, document root): Label Studio serving local files below the root, with a login and a
    token; each test keeps its data dir below the root (`review.document_root`). The server
    tests/conftest.py started in the background when this module was collected, else one started
    now; stopped when the module is done."""
    server = take_early()
    if server is None:
        state = tmp_path_factory.mktemp("label-studio")
        server = LabelStudioProcess(tmp_path_factory.mktemp("review-root"), state, state / "server.log")
    try:
        yield server.wait(), server.document_root
    finally:
        server.stop()


def _settings(root: Path, name: str, **review: object) -> Settings:
    """A data dir below Label Studio's document root with 12 labelled train clips."""
    data_dir = root / name
    write_rows(data_dir, "clips", synthetic_clips(12, "train", 0), "src-train")
    return Settings(data_dir=data_dir, review=ReviewSettings(document_root=root, **review))


def _client(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Token {TOKEN}"}, timeout=60)


def _tasks(client: httpx.Client, project_url: str) -> list[dict]:
    listed = client.get("/api/tasks/", params={"project": int(project_url.rsplit("/", 1)[1]), "page_size": 100}).json()
    return sorted(listed["tasks"] if isinstance(listed, dict) else listed, key=lambda t: t["id"])


def _annotate(client: httpx.Client, task_id: int, labels: list[str], text: str | None = None,
              cancelled: bool = False) -> None:
    result = [{"from_name": CHOICES, "to_name": "audio", "type": "choices", "value": {"choices": labels}}]
    if text is not None:
        result.append({"from_name": TEXT, "to_name": "audio", "type": "textarea", "value": {"text": [text]}})
    answer = client.post(f"/api/tasks/{task_id}/annotations/", json={"result": [] if cancelled else result,
                                                                     "was_cancelled": cancelled})
    assert answer.status_code == 201, answer.text


def test_a_batch_goes_to_label_studio_and_its_answers_come_back(label_studio: tuple[str, Path],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    url, root = label_studio
    settings = _settings(root, "by-hand")
    data_dir = settings.data_dir
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", TOKEN)
    monkeypatch.setenv("VOXTOX_REVIEW__DOCUMENT_ROOT", str(root))  # the audio URLs are relative to it
    common = ["--data-dir", str(data_dir)]
    assert runner.invoke(app, ["review", "select", "--budget", "4", "--strategy", "random", *common]).exit_code == 0
    pushed = runner.invoke(app, ["review", "export", "--push", url, *common])
    assert pushed.exit_code == 0, pushed.output
    project = pushed_projects(settings)[-1]
    project_id = int(project.rsplit("/", 1)[1])

    client = _client(url)
    tasks = _tasks(client, project)
    assert len(tasks) == 4 and all(t["data"]["clip_id"].startswith("train-") for t in tasks)
    audio = client.get(tasks[0]["data"]["audio"])  # what the task page's player loads
    assert audio.status_code == 200 and audio.content[:4] == b"fLaC"

    first, second, third, _untouched = tasks
    _annotate(client, first["id"], ["racism"], "a corrected transcript")
    for labels in (["bullying"], ["bullying", "profanity"], ["bullying"]):  # three reviewers: majority
        _annotate(client, second["id"], labels)
    _annotate(client, third["id"], [], cancelled=True)  # skipped

    imported = runner.invoke(app, ["review", "import", "--pull", project, *common])
    assert imported.exit_code == 0, imported.output
    rows = {r["clip_id"]: r for r in read_reviews(settings).to_pylist()}
    assert set(rows) == {first["data"]["clip_id"], second["data"]["clip_id"]}
    one, two = rows[first["data"]["clip_id"]], rows[second["data"]["clip_id"]]
    assert [c for c in CLASSES if one[label_column(c)]] == ["racism"] and one["transcript"] == "a corrected transcript"
    assert one["reviewers"] == "reviewer@example.com" and one["task_id"] == first["id"] and one["project"] == project
    assert [c for c in CLASSES if two[label_column(c)]] == ["bullying"] and two["status"] == "majority"
    assert two["n_annotations"] == 3

    again = runner.invoke(app, ["review", "import", "--pull", project, *common])
    assert "0 new, 0 changed, 2 already imported" in " ".join(again.output.split())
    index = read_clip_index(lake_catalog(settings.data_dir), "train", "TRUE")
    assert index.n_reviewed == 2

    exported = client.get(f"/api/projects/{project_id}/export", params={"exportType": "JSON_MIN"})
    path = data_dir / "min.json"
    path.write_bytes(exported.content)
    from_file = runner.invoke(app, ["review", "import", str(path), *common])  # the same answers, another format
    assert from_file.exit_code == 0, from_file.output
    after = {r["clip_id"]: r for r in read_reviews(settings).to_pylist()}
    assert {k: [c for c in CLASSES if v[label_column(c)]] for k, v in after.items()} == \
        {k: [c for c in CLASSES if v[label_column(c)]] for k, v in rows.items()}
    assert pa.Table.from_pylist(list(after.values())).num_rows == 2

    # `voxtox forget` of the recording deletes its tasks (and their answers) in Label Studio too:
    # not yet on a lake (issue 28: storage/forget.py's lake version, branch lakeparity).


def test_the_nightly_step_brings_answers_back_and_sends_a_new_batch(label_studio: tuple[str, Path],
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    prefect_harness: None) -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from voxtox.flows.nightly import NightlyReport, _review

    url, root = label_studio
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", TOKEN)
    settings = _settings(root, "nightly", nightly=True, budget=4, strategy="random", label_studio_url=url)

    @flow
    def night(date: str) -> NightlyReport:
        report = NightlyReport(night=date)
        _review(settings, report)
        return report

    first = night("2026-12-06")
    assert first.review == "4 sent"
    project = pushed_projects(settings)[-1]
    sent_first = [t["data"]["clip_id"] for t in _tasks(_client(url), project)]
    _annotate(_client(url), _tasks(_client(url), project)[0]["id"], ["profanity", "racism"])

    second = night("2026-12-07")
    assert second.review.startswith("4 sent; 1 reviewed clips (1 new, 0 changed, 0 ties)")
    reviews = read_reviews(settings).to_pylist()
    assert [r["clip_id"] for r in reviews] == [sent_first[0]] and reviews[0]["project"] == project
    sent_second = [t["data"]["clip_id"] for t in _tasks(_client(url), pushed_projects(settings)[-1])]
    assert len(sent_second) == 4 and not set(sent_first) & set(sent_second)  # nothing is sent twice
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["review"])))
    assert any("came back from" in (a.data or "") and project in (a.data or "") for a in artifacts)

    # A project deleted in Label Studio is dropped from projects.json, not pulled every night.
    assert _client(url).delete(f"/api/projects/{int(project.rsplit('/', 1)[1])}/").status_code == 204
    cycle = ReviewCycle(imported={})
    _import_finished(settings, cycle)
    assert project not in pushed_projects(settings) and "dropped" in cycle.imported[project]


def test_a_task_page_plays_its_audio_in_chromium(label_studio: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    url, root = label_studio
    settings = _settings(root, "browser")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", TOKEN)
    monkeypatch.setenv("VOXTOX_REVIEW__DOCUMENT_ROOT", str(root))
    common = ["--data-dir", str(settings.data_dir)]
    assert runner.invoke(app, ["review", "select", "--budget", "2", *common]).exit_code == 0
    assert runner.invoke(app, ["review", "export", "--push", url, *common]).exit_code == 0
    project = pushed_projects(settings)[-1]
    task = _tasks(_client(url), project)[0]
    with browser() as session:
        log_in(session, url)
        # 206: the player asks for a byte range, as browsers do for audio
        assert open_task(session, url, int(project.rsplit("/", 1)[1]), task["id"]) in (200, 206)
        shown = session.evaluate("document.body.innerText + ' ' + "
                                 "[...document.querySelectorAll('textarea, input')].map(e => e.value).join(' ')")
    assert task["data"]["transcript"] in shown  # the transcript the reviewer corrects, pre-filled
