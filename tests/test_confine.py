"""A served deployment reads only below its inbox (core/confine.py, flows/serve.py), and a run
of a served deployment cannot bring its own settings; a local user's runs are not confined."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from uuid import uuid4

import pytest
from prefect.client.schemas.objects import FlowRun
from prefect.context import FlowRunContext

from conftest import lake_catalog, spoken, write_audio
from voxtox.audio import discover_inputs
from voxtox.flows.label import label_flow
from voxtox.flows.nightly import nightly_flow
from voxtox.flows.serve import check_served_run
from voxtox.settings import Settings

from voxtox.confine import OUTSIDE_INBOX, SERVED_INBOX_ENV, confine
from voxtox.corpus.speech_synth import Utterance

#: Paths opened while `WATCHING` holds a directory: an audit hook sees every open() in the process.
OPENED: list[str] = []
WATCHING: list[str] = []


def _audit(event: str, args: tuple) -> None:
    if event == "open" and WATCHING and isinstance(args[0], str | bytes | os.PathLike):
        path = os.fsdecode(args[0])
        if any(path.startswith(root) for root in WATCHING):
            OPENED.append(path)


sys.addaudithook(_audit)


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    """An inbox whose val/ holds a real recording, a symlink to a recording outside, a `..`
    manifest line; and the secret recording outside. (val/: nightly labels it and, with no
    training clips, trains nothing.)"""
    secret = write_audio(tmp_path / "secret" / "voice.wav", spoken(Utterance("my private call", "en")))
    inbox = tmp_path / "inbox"
    inside = write_audio(inbox / "val" / "ok.wav", spoken(Utterance("good game everyone", "en")))
    (inbox / "val" / "leak.wav").symlink_to(secret)
    (inbox / "val" / "alias.wav").symlink_to(inside)
    (inbox / "list.csv").write_text("uri\nval/ok.wav\n../secret/voice.wav\n")
    return {"root": tmp_path, "inbox": inbox, "inside": inside, "secret": secret}


def test_paths_resolving_outside_the_inbox_are_rejected_with_a_reason(layout: dict[str, Path]) -> None:
    inbox, train = layout["inbox"].resolve(), layout["inbox"] / "val"
    found = discover_inputs(str(train)) + discover_inputs(str(layout["inbox"] / "list.csv"))
    given = [*found, f"{train}/../../secret/voice.wav", "https://example.com/a.wav", str(layout["secret"])]
    kept, rejected = confine(given, inbox)
    assert sorted(Path(k).name for k in kept) == ["alias.wav", "ok.wav"]  # the manifest names ok.wav too
    assert {r.uri for r in rejected} == {str(train / "leak.wav"), str(layout["inbox"] / "../secret/voice.wav"),
                                          f"{train}/../../secret/voice.wav", "https://example.com/a.wav", str(layout["secret"])}
    assert {r.reason for r in rejected} == {OUTSIDE_INBOX}
    assert "is a URL" in next(r.detail for r in rejected if r.uri.startswith("https"))
    assert confine(given, None) == (given, [])  # a local user's run reads what it is given


def test_a_served_run_never_opens_what_lies_outside_and_refuses_its_own_settings(
    layout: dict[str, Path], monkeypatch: pytest.MonkeyPatch, prefect_harness: None
) -> None:
    data_dir = layout["root"] / "data"
    monkeypatch.setenv(SERVED_INBOX_ENV, str(layout["inbox"]))  # what `voxtox serve` sets for its runs
    monkeypatch.setenv("VOXTOX_DATA_DIR", str(data_dir))
    monkeypatch.setenv("VOXTOX_SERVE__INBOX", str(layout["inbox"]))
    with pytest.raises(ValueError, match="cannot be given `settings`: it takes its settings from `voxtox serve`"):
        label_flow(inputs=[str(layout["inbox"])], settings=Settings(data_dir=layout["root"] / "elsewhere"))
    with pytest.raises(ValueError, match="cannot be given `allow_forgotten`"):
        label_flow(inputs=[str(layout["inbox"])], allow_forgotten=True)
    with pytest.raises(ValueError, match="inbox: .* is outside the inbox"):
        nightly_flow(inbox=str(layout["root"] / "secret"))

    WATCHING.append(str(layout["root"] / "secret"))
    try:
        # Nightly's label runs are subflows: they get nightly's settings, and stay confined.
        nightly = nightly_flow(night="2026-12-01")
        direct = label_flow(inputs=[str(layout["secret"]), str(layout["inbox"] / "list.csv")])
    finally:
        WATCHING.clear()

    assert OPENED == []
    assert nightly.labelled_clips["val"] >= 1 and not nightly.trained_now  # ok.wav (alias.wav: the same bytes)
    assert (direct.n_rejected_inputs, direct.n_skipped) == (2, 1)
    catalog = lake_catalog(data_dir)
    rejects = catalog.query("SELECT source_uri, reason FROM rejects WHERE reason = 'outside_inbox'").to_pylist()
    assert sorted(Path(r["source_uri"]).name for r in rejects) == ["leak.wav", "voice.wav", "voice.wav"]
    sources = catalog.query("SELECT source_uri FROM sources")["source_uri"].to_pylist()
    assert [Path(s).name for s in sources] in (["ok.wav"], ["alias.wav"])


def test_a_run_of_a_deployment_naming_a_parent_task_run_still_cannot_bring_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whoever creates a run through the API may name any parent task run: only an in-process
    subflow (no deployment; nightly's label runs) takes its parent's settings."""
    monkeypatch.setenv(SERVED_INBOX_ENV, str(tmp_path))
    spoofed = FlowRun(flow_id=uuid4(), deployment_id=uuid4(), parent_task_run_id=uuid4())
    with FlowRunContext.model_construct(flow_run=spoofed), pytest.raises(ValueError, match="cannot be given `settings`"):
        check_served_run(Settings(data_dir=tmp_path / "elsewhere"))
    subflow = FlowRun(flow_id=uuid4(), parent_task_run_id=uuid4())
    with FlowRunContext.model_construct(flow_run=subflow):
        assert check_served_run(Settings(data_dir=tmp_path)) == tmp_path.resolve()
