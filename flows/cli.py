"""The `voxtox` command line: the app and its command groups, each command registered here in the
order `voxtox --help` lists them; the commands themselves live in one module per group
(flows/cli_data.py, cli_lake.py, cli_labeller.py, cli_models.py, cli_corpus.py, cli_schedule.py)."""

from __future__ import annotations

import os
from typing import Annotated

# Quieten library chatter before those libraries are imported.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
import typer

from voxtox.flows import cli_corpus, cli_data, cli_labeller, cli_lake, cli_models, cli_schedule, cli_stream
from voxtox.flows.cli_review import review_app
from voxtox.flows.cli_common import console


class _App(typer.Typer):
    """The CLI, with Prefect's ephemeral start-up timeout turned into one line saying what to set."""

    def __call__(self, *args: object, **kwargs: object) -> object:
        from voxtox.prefect_env import ephemeral_timeout_message

        try:
            return super().__call__(*args, **kwargs)
        except RuntimeError as error:
            message = ephemeral_timeout_message(error)
            if message is None:
                raise
            console.print(f"[red]error:[/red] {message}", soft_wrap=True)
            raise SystemExit(1) from error


# Help texts are plain text with brackets ("[train] section"): rich markup would swallow them.
app = _App(
    help="voxtox: label voice chat for toxicity without human annotators.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="markdown",
)
labeller_app = typer.Typer(help="The text toxicity labeller.", no_args_is_help=True, rich_markup_mode="markdown")
app.add_typer(labeller_app, name="labeller")


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        console.print(f"voxtox {version('voxtox')}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="print voxtox's version and exit")] = False,
) -> None:
    """voxtox: label voice chat for toxicity without human annotators."""


app.command()(cli_data.label)
app.command()(cli_data.forget)
app.command()(cli_data.query)
app.command()(cli_data.compact)
app.command()(cli_lake.migrate)
app.command("export-dataset")(cli_lake.export_dataset)
app.command()(cli_models.train)
app.command()(cli_corpus.demo)
app.command()(cli_schedule.serve)
app.command()(cli_models.classify)
app.command()(cli_models.calibrate)
app.command("export")(cli_models.export_command)
app.command()(cli_corpus.synth)
app.command("import-labels")(cli_data.import_labels)
app.command("corpus-report")(cli_corpus.corpus_report)
app.command()(cli_models.evaluate)
app.command()(cli_models.ablate)

labeller_app.command("predict")(cli_labeller.labeller_predict)
labeller_app.command("train")(cli_labeller.labeller_train)
labeller_app.command("eval")(cli_labeller.labeller_eval)
labeller_app.command("functional")(cli_labeller.labeller_functional)

app.add_typer(review_app, name="review")
app.add_typer(cli_stream.stream_app, name="stream")

run_app = typer.Typer(help="Run a scheduled flow now, in this process.", no_args_is_help=True)
app.add_typer(run_app, name="run")
run_app.command("nightly")(cli_schedule.run_nightly)


if __name__ == "__main__":
    app()
