"""Make the Prefect UI screenshots in docs/: a real server, `voxtox serve`, one labelling run.

    .venv/bin/python scripts/screenshot_ui.py          # about a minute on 2 cores

It starts `prefect server start` behind a login (basic auth; SQLite in a temporary PREFECT_HOME),
speaks a few voice-chat lines with espeak-ng into an inbox, serves the label deployment with
`voxtox serve`, runs it once through the API, and has headless Chromium log in to the UI and
capture the flow run's page and its table of clips and labels per language.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import soundfile
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the server helpers the tests use

from prefect_server import browser, log_in, prefect_server, run_served_deployment
from voxtox.audio import SAMPLE_RATE
from voxtox.corpus.speech_synth import Utterance, lay_out

#: A throwaway login for the temporary server.
AUTH_STRING = "voxtox:screenshots"
SESSIONS = {
    "lobby-en.wav": [Utterance("what the fuck man, this lag is killing me", "en"),
                     Utterance("good game everyone, see you tomorrow", "en", "f3")],
    "ranked-en.wav": [Utterance("you are worthless trash, uninstall the game", "en", "m3"),
                      Utterance("nice shot mate, push mid with me", "en")],
    "partida-es.wav": [Utterance("buena partida amigos, nos vemos mañana por la noche", "es")],
}


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="voxtox-ui-") as tmp:
        data_dir = Path(tmp) / "data"
        inbox = data_dir / "inbox" / "train"
        inbox.mkdir(parents=True)
        for name, utterances in SESSIONS.items():
            samples, _ = lay_out(utterances, [0.8] * (len(utterances) - 1))
            soundfile.write(inbox / name, samples, SAMPLE_RATE)
        with prefect_server(Path(tmp) / "prefect-home", auth_string=AUTH_STRING) as server:
            _, flow_run = run_served_deployment(server, data_dir, "label/voxtox", "serve", "--flow", "label")
            print(f"flow run {flow_run.name}: {flow_run.state.name}")
            with server.client() as client:
                (counts,) = client.read_artifacts(
                    artifact_filter=ArtifactFilter(
                        flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]),
                        key=ArtifactFilterKey(any_=["label-counts"]),
                    )
                )
            shots = [
                (ROOT / "docs" / "prefect-ui-flow-run.png", server.flow_run_page(flow_run.id), 1000),
                (ROOT / "docs" / "prefect-ui-artifact.png", f"{server.url}/artifacts/artifact/{counts.id}", 560),
            ]
            with browser() as session:
                if not log_in(session, server.url, AUTH_STRING):
                    raise RuntimeError("the UI refused the login")
                for (out, url, height), text in zip(shots, ([flow_run.name, "Task runs"], ["en", "clips"]), strict=True):
                    session.open(url)
                    session.wait_for_text(*text)
                    session.screenshot(out, height=height)
                    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
