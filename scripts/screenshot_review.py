"""Make docs/review-task.png: a Label Studio task page as a reviewer sees it.

    .venv/bin/python scripts/screenshot_review.py      # a few minutes on 2 cores (Label Studio's first start)

Speaks a few voice-chat lines with espeak-ng into clips of a temporary data dir, selects and pushes
them with `voxtox review select / export --push` to a Label Studio started by
scripts/labelstudio.sh, has headless Chromium log in and open the most doubtful task, waits until
the page has fetched its audio, and captures it.
"""

from __future__ import annotations

from contextlib import closing

import io
import os
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import soundfile
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the server helpers the tests use
sys.path.insert(0, str(ROOT))

from labelstudio_server import TOKEN, label_studio_server, log_in, open_task
from prefect_server import browser
from tests.conftest import synthetic_clips
from voxtox.audio import SAMPLE_RATE
from voxtox.flows.cli import app
from voxtox.labels import CLASSES
from voxtox.settings import Settings
from voxtox.storage.schema import label_column, prob_column
from voxtox.storage import lake
from voxtox.storage.review_projects import pushed_projects
from voxtox.corpus.speech_synth import Utterance, lay_out

#: (what is said, the pipeline's label, its score): close calls a reviewer should look at.
LINES = [
    ("you people are all the same, go back where you came from", "bullying", 0.56),
    ("nice shot mate, push mid with me", "no_violation", 0.93),
    ("what the hell is this lag, unbelievable", "profanity", 0.52),
]


def write_clips(data_dir: Path) -> None:
    rows = synthetic_clips(len(LINES), "train", 0).to_pylist()
    for row, (text, label, score) in zip(rows, LINES, strict=True):
        samples, _ = lay_out([Utterance(text, "en")], [])
        buffer = io.BytesIO()
        soundfile.write(buffer, samples, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        duration = len(samples) / SAMPLE_RATE
        row.update(transcript=text, audio={"bytes": buffer.getvalue(), "path": "clip.flac"}, end_s=duration,
                   duration_s=duration, **{prob_column(c): (score if c == label else 0.03) for c in CLASSES},
                   **{label_column(c): c == label for c in CLASSES})
    table = pa.Table.from_pylist(rows, synthetic_clips(1, "train", 0).schema)
    target = lake.embedded_target(data_dir)
    with closing(lake.connect(target)) as con:
        lake.replace_key(con, target, "screenshot", {"clips": table})


def main() -> None:
    runner = CliRunner()
    with tempfile.TemporaryDirectory(prefix="voxtox-review-") as tmp:
        data_dir = Path(tmp) / "data"
        write_clips(data_dir)
        os.environ["LABEL_STUDIO_API_KEY"] = TOKEN
        with label_studio_server(data_dir, Path(tmp) / "label-studio", Path(tmp) / "label-studio.log") as url:
            common = ["--data-dir", str(data_dir)]
            for command in (["review", "select", "--budget", "3", *common],
                            ["review", "export", "--push", url, "--title", "voxtox review: close calls", *common]):
                result = runner.invoke(app, command)
                if result.exit_code:
                    raise SystemExit(result.output)
            project = pushed_projects(Settings(data_dir=data_dir))[-1]
            project_id = int(project.rsplit("/", 1)[1])
            with browser() as session:
                log_in(session, url)
                status = open_task(session, url, project_id, 1)
                print(f"task page fetched its audio: HTTP {status}")
                session.screenshot(ROOT / "docs" / "review-task.png", 1440, 900)
    print(ROOT / "docs" / "review-task.png")


if __name__ == "__main__":
    main()
