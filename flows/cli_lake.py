"""`voxtox migrate` and `voxtox export-dataset`: the labelled data into a lake, and out as plain
Parquet (docs/storage.md)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from voxtox.flows.cli_common import console, errors, user_errors
from voxtox.settings import load_settings

if TYPE_CHECKING:
    from voxtox.settings import Settings


def migrate(
    data_dir: Annotated[Path | None, typer.Option(help="the data dir whose shards move into the lake")] = None,
) -> None:
    """Move an old data dir's single-machine shards into the lake every command uses (the one
    `[storage]` names; without it, the embedded lake under the data dir, <data_dir>/lake). Rows
    of a recording the lake already holds stay as they are: a rerun adds nothing. The shards are
    left in place."""
    from voxtox.storage import lake
    from voxtox.storage.migrate import migrate as migrate_shards

    settings = load_settings(data_dir)
    target = lake.target_for(settings)
    with user_errors():
        results = migrate_shards(settings.shards_dir, target)
    view = Table("table", "rows in the shards", "rows added", "recordings or keys", "already in the lake",
                 title=f"voxtox migrate -> {target.catalog_name()}")
    for result in results:
        view.add_row(result.table, str(result.shard_rows), str(result.added), str(result.keys), str(result.keys_kept))
    console.print(view)


def export_dataset(
    out: Annotated[Path, typer.Argument(help="a new folder: README.md (the dataset card) and data/<split>-*.parquet")],
    data_dir: Annotated[Path | None, typer.Option(help="the data dir: its lake (lake/catalog.sqlite, lake/data/) and work files")] = None,
) -> None:
    """Write the clips as a plain Parquet folder with the Hugging Face Audio feature and the train,
    validation and test splits (`datasets.load_dataset(OUT)`), from the lake."""
    from voxtox.storage.catalog import Catalog, CatalogError
    from voxtox.storage.export import export_dataset as export

    settings = load_settings(data_dir)
    say_unmigrated(settings)
    try:
        with user_errors():
            rows = export(Catalog.from_settings(settings), out)
    except CatalogError as error:
        errors.print(f"error: {error}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from error
    console.print(f"exported {sum(rows.values())} clips to {out} ("
                  + ", ".join(f"{name}: {n}" for name, n in rows.items()) + ")", highlight=False)
    console.print(f"Load it: datasets.load_dataset({str(out)!r})", highlight=False)


def say_unmigrated(settings: Settings) -> None:
    """An old data dir (its shards hold recordings, the lake none, e.g. the embedded lake not made
    yet): one line naming `voxtox migrate`. The check itself never stops a command."""
    import duckdb

    from voxtox.storage import lake
    from voxtox.storage.migrate import migrate_hint, unmigrated

    target = lake.target_for(settings)
    if not (settings.shards_dir / "sources").is_dir():
        return  # the usual case, without opening the lake
    sqlite = lake.sqlite_catalog_path(target.catalog_url)
    try:
        pending = sqlite is not None and not sqlite.exists()
        if not pending:
            with lake.connect(target, read_only=True) as con:
                pending = unmigrated(settings.shards_dir, con)
    except (lake.LakeError, duckdb.Error, OSError):
        pending = False  # the command itself says what is wrong with the lake
    if pending:
        errors.print(migrate_hint(settings.shards_dir, target), markup=False, highlight=False, soft_wrap=True)
