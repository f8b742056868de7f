"""`voxtox demo`, `synth` and `corpus-report`: the synthetic corpus and the quick start."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from voxtox.flows.cli_common import (
    console,
    user_errors,
)
from voxtox.prefect_env import api_starting, start_api
from voxtox.settings import load_settings


def demo(
    data_dir: Annotated[Path, typer.Option(help="where the demo's audio, shards and catalog go")] = Path("voxtox-demo"),
) -> None:
    """The quick start: make multilingual voice-chat-like audio, label it, show the results."""
    with user_errors():
        with api_starting():  # while the demo's modules import; the API's output goes to its log, as for `label`
            from voxtox.flows.demo import run_demo
        run_demo(load_settings(data_dir), console)


def synth(
    out: Annotated[Path, typer.Option(help="corpus directory: <out>/train|val|test audio, <out>/truth")],
    hours: Annotated[float, typer.Option(help="hours of audio in all")] = 0.5,
    langs: Annotated[str, typer.Option(help="comma-separated: en,es,fr,de,pt")] = "en,es,fr,de,pt",
    seed: Annotated[int, typer.Option(help="same seed, byte-identical corpus")] = 7,
    splits: Annotated[str | None, typer.Option(help="train,val,test fractions, e.g. 0.6,0.2,0.2 "
                                                    "(default: the paper's Table 1, 0.81,0.13,0.06)")] = None,
    toxic_share: Annotated[float, typer.Option(help="share of utterances that are toxic (or other)")] = 0.25,
    snr: Annotated[str, typer.Option(help="background noise SNR range in dB, MIN:MAX")] = "10:30",
    noise_prob: Annotated[float, typer.Option(help="share of sessions with background noise")] = 0.7,
    telephone_prob: Annotated[float, typer.Option(help="share of sessions through a telephone band")] = 0.1,
    opus_prob: Annotated[float, typer.Option(help="share of sessions through an Opus round trip")] = 0.1,
    formats: Annotated[str, typer.Option(help="output formats with weights, e.g. ogg:2,wav:1,flac:1")] = "ogg:2,wav:1,flac:1",
    overlap_prob: Annotated[float, typer.Option(help="chance a turn starts before the last one ends")] = 0.08,
    session_s: Annotated[str, typer.Option(help="session length range in seconds, MIN:MAX (shorter sessions: "
                                                "more of them, so a bootstrap over sessions has more units)")] = "20:180",
) -> None:
    """Generate a multilingual synthetic voice-chat corpus with known labels (a Prefect flow)."""
    from voxtox.corpus.synth import SPLITS as SYNTH_SPLITS
    from voxtox.corpus.synth import TABLE1_FRACTIONS, SynthConfig
    from voxtox.flows.synth import synth_flow

    with user_errors():
        fractions = dict(TABLE1_FRACTIONS)
        if splits is not None:
            values = [float(x) for x in splits.split(",")]
            if len(values) != 3:
                raise ValueError(f"--splits needs three fractions (train,val,test), got {splits!r}")
            fractions = dict(zip(SYNTH_SPLITS, values, strict=True))
        weights = {}
        for item in formats.split(","):
            name, _, weight = item.partition(":")
            weights[name.strip()] = float(weight or 1)
        config = SynthConfig(
            hours=hours, langs=tuple(x.strip() for x in langs.split(",") if x.strip()), seed=seed,
            split_fractions=fractions, toxic_share=toxic_share, snr_db=_pair(snr, "snr"), noise_prob=noise_prob,
            telephone_prob=telephone_prob, opus_roundtrip_prob=opus_prob, formats=weights, overlap_prob=overlap_prob,
            session_s=_pair(session_s, "session-s"),
        )
    start_api()
    summary = synth_flow(out=str(out), config=config)
    table = Table(title="voxtox synth", show_header=False)
    for key, value in summary.items():
        table.add_row(key, str(value))
    console.print(table)
    _print_next_steps(out)


def _print_next_steps(out: Path) -> None:
    """The commands that label a synthetic corpus and import its truth, whole, to copy."""
    console.print(
        f"Next: voxtox label {out}/train --split train; voxtox label {out}/val --split val; "
        f"voxtox label {out}/test --split test;\n      voxtox import-labels {out}/truth/utterances-val.jsonl "
        f"{out}/truth/utterances-test.jsonl   (or all at once: voxtox corpus-report {out})",
        soft_wrap=True,
    )


def _pair(text: str, name: str) -> tuple[float, float]:
    try:
        low, high = (float(x) for x in text.split(":"))
    except ValueError as error:
        raise typer.BadParameter(f"--{name} must be MIN:MAX, e.g. 10:30, not {text!r}") from error
    return low, high


def corpus_report(
    corpus: Annotated[Path, typer.Argument(help="a corpus directory written by voxtox synth")],
    data_dir: Annotated[Path | None, typer.Option(help="the data dir: its lake (lake/catalog.sqlite, lake/data/) and work files")] = None,
    out: Annotated[Path | None, typer.Option(help="also write the Markdown report here, e.g. docs/corpus.md")] = None,
    label: Annotated[bool, typer.Option(help="run the label flow on val/test first (known audio is skipped)")] = True,
    label_train: Annotated[bool, typer.Option(help="also label the train split")] = False,
    resamples: Annotated[int, typer.Option(help="bootstrap resamples for the CIs")] = 1000,
) -> None:
    """Label a synth corpus, import its truth, and report label quality, WER and VAD error."""
    import shlex

    from voxtox.flows.synth import corpus_report_flow

    settings = load_settings(data_dir)
    command = " ".join([*(f"{k}={shlex.quote(v)}" for k, v in sorted(os.environ.items()) if k.startswith("VOXTOX_")),
                        "voxtox", *(shlex.quote(a) for a in sys.argv[1:])])
    with user_errors():
        if not (corpus / "corpus.json").exists():
            raise FileNotFoundError(f"{corpus} is not a voxtox synth corpus (no corpus.json)")
        start_api()
        text = corpus_report_flow(corpus=str(corpus), settings=settings, label=label, label_train=label_train,
                                  n_resamples=resamples, command=command)
    if out is not None:
        out.write_text(text)
    console.print(text)
