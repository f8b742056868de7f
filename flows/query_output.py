"""`voxtox query` output: a table for a person (`print_table`, also the demo's), and for machines
JSON Lines and CSV with every value in a standard form.

JSON Lines: one object per row; numbers, booleans and null as JSON's own, lists and structs
nested, timestamps and dates in ISO 8601, binary (the audio's FLAC bytes) in base64, NaN and
infinities as null (JSON has neither). CSV: the same text for nested and binary cells, so a list
column never stops the output.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
from decimal import Decimal
from typing import BinaryIO, TextIO

import pyarrow as pa
import pyarrow.csv as pacsv
from rich.console import Console
from rich.table import Table


def json_value(value: object) -> object:
    """A Python value from Arrow as a JSON-native value."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dict):
        return {key: json_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):  # lists, and maps (lists of key/value tuples)
        return [json_value(item) for item in value]
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return float(value)
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)


def write_jsonl(table: pa.Table, stream: TextIO) -> None:
    for batch in table.to_batches():
        for row in batch.to_pylist():
            stream.write(json.dumps(json_value(row), ensure_ascii=False, allow_nan=False) + "\n")


def _cell_text(value: object) -> str | None:
    if value is None:
        return None
    encoded = json_value(value)
    return encoded if isinstance(value, bytes) else json.dumps(encoded, ensure_ascii=False)


def csv_ready(table: pa.Table) -> pa.Table:
    """Nested columns as JSON text and binary ones as base64, which every CSV reader takes."""
    for index, field in enumerate(table.schema):
        kind = field.type
        if pa.types.is_nested(kind) or pa.types.is_binary(kind) or pa.types.is_large_binary(kind) \
                or pa.types.is_fixed_size_binary(kind):
            text = [_cell_text(value) for value in table[index].to_pylist()]
            table = table.set_column(index, field.name, pa.array(text, pa.string()))
    return table


def write_csv(table: pa.Table, stream: BinaryIO) -> None:
    """Write to the stream given (stdout as it was opened: `>>` appends), never to a path."""
    pacsv.write_csv(csv_ready(table), stream)


def print_table(console: Console, table: pa.Table, title: str | None = None, max_rows: int = 50) -> None:
    """Print a pyarrow table for a person (binary and long list columns abbreviated)."""
    view = Table(title=title, show_lines=False)
    for name in table.column_names:
        view.add_column(name, overflow="fold")
    for row in table.slice(0, max_rows).to_pylist():
        view.add_row(*[_cell(value) for value in row.values()])
    _print_full_width(console, view)
    if table.num_rows > max_rows:
        console.print(f"... {table.num_rows - max_rows} more rows (use --format csv for all)")


def _print_full_width(console: Console, view: Table) -> None:
    """Off a terminal (a log file, a pipe) rich would fold a table into 80 columns and drop the
    columns that do not fit; there is no screen to fit, so print it at its natural width (on a
    console of its own: the shared one keeps following the terminal's, or COLUMNS')."""
    if console.is_terminal:
        console.print(view)
        return
    natural = console.measure(view, options=console.options.update_width(10_000)).maximum
    wide = Console(file=console.file, width=max(console.width, natural), color_system=console.color_system)
    wide.print(view)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, dict) and "bytes" in value:
        return f"<audio {len(value['bytes'] or b'')} bytes>"
    if isinstance(value, list) and len(value) > 6:
        return f"[{len(value)} values]"
    return "" if value is None else str(value)
