"""Ablation grids: the paper's Table 2 (text-injection loss × α, at the last layer) and Table 3
(injection layer first / middle / last, one loss and α), each cell a training run plus its
evaluation, all compared with the baseline (α = 1) by paired bootstrap.

A grid file is TOML: `[grid]` (what varies), and the usual settings (`data_dir`, `[train]` for
what every cell shares, `[evaluate]`). Without `[grid]` the paper's full grid is run, so
`experiments/paper-table2.toml` works as is. A cell's run directory is `<out>/<cell name>`; a cell
whose run has `final/` and whose evaluation is saved is done and is not trained again, and a
cell interrupted mid-training resumes from its last checkpoint.
"""

from __future__ import annotations

import csv
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

import pyarrow.parquet as pq
from prefect import task
from pydantic import BaseModel, ConfigDict, Field, field_validator
from transformers import WhisperConfig

from voxtox.labels import TOXIC_CLASSES
from voxtox.models.metrics import MAP_NAME
from voxtox.models.whisper_encoder import ct2_encoder_config, read_ct2_variables
from voxtox.settings import Settings, TrainSettings, with_overrides
from voxtox.storage.catalog import Catalog
from voxtox.storage.model_store import resolve_model
from voxtox.storage.runs import RunDir
from voxtox.storage.runs import EVALUATION_DIR
from voxtox.models.scoring import read_eval_set
from voxtox.tasks.evaluate import RESULTS_FILE, Evaluation, default_out_dir, evaluate_runs, pin_evaluation_snapshot
from voxtox.models.evaluation_report import Row, Rows, format_ci, markdown_table
from voxtox.models.features import FEATURES_DIR
from voxtox.tasks.train import train_model

BASELINE = "baseline"
TEXT_LOSSES: tuple[str, ...] = get_args(TrainSettings.model_fields["loss"].annotation)
#: Text losses that are not the paper's (marked as variants in the tables).
VARIANT_LOSSES: tuple[str, ...] = ("mse-normalised",)
PAPER_LOSSES: tuple[str, ...] = tuple(loss for loss in TEXT_LOSSES if loss not in VARIANT_LOSSES)
LAYER_NAMES = ("first", "middle", "last")
TABLE_FILE = "results.md"
CSV_FILE = "results-grid.csv"
CSV_COLUMNS = ("table", "cell", "loss", "alpha", "layer", "lang", "train_clips", "train_minutes", "test_segments",
               "map", "map_low", "map_high", "diff", "diff_low", "diff_high")


class Grid(BaseModel):
    """What varies across the cells (`[grid]` of a grid file); defaults: the paper's grid."""

    model_config = ConfigDict(extra="forbid")

    losses: list[str] = Field([BASELINE, *PAPER_LOSSES], description="Table 2 rows: baseline and text losses")
    alphas: list[float] = Field([0.1, 0.5, 0.9], description="Table 2: α of every text loss")
    alphas_by_loss: dict[str, list[float]] = Field(
        {}, description="Table 2: α of the losses named here, instead of `alphas` (e.g. one row of a variant)"
    )
    name: str | None = Field(
        None, description="the `table` column of results-grid.csv for every row (e.g. figure2); default table2/table3"
    )
    layers: list[str | int] = Field(list(LAYER_NAMES), description="Table 3: first, middle, last, or layer numbers")
    layer_loss: str = Field("contrastive", description="Table 3's loss")
    layer_alpha: float = Field(0.1, gt=0, lt=1, description="Table 3's α")
    out: Path | None = Field(None, description="where cells' runs go (default runs/<grid file stem>)")
    workers: int = Field(1, ge=1, description="cells trained at once")

    @field_validator("losses")
    @classmethod
    def _known_losses(cls, losses: list[str]) -> list[str]:
        unknown = [loss for loss in losses if loss != BASELINE and loss not in TEXT_LOSSES]
        if unknown:
            raise ValueError(f"unknown losses {unknown}: use {BASELINE} or {', '.join(TEXT_LOSSES)}")
        return losses

    @field_validator("layer_loss")
    @classmethod
    def _known_layer_loss(cls, loss: str) -> str:
        if loss not in TEXT_LOSSES:
            raise ValueError(f"layer_loss must be one of {', '.join(TEXT_LOSSES)}, not {loss!r}")
        return loss

    @field_validator("alphas")
    @classmethod
    def _text_alphas(cls, alphas: list[float]) -> list[float]:
        if any(not 0 <= a < 1 for a in alphas):
            raise ValueError(f"alphas of a text loss lie in [0, 1) (1 is the baseline), got {alphas}")
        return alphas

    @field_validator("alphas_by_loss")
    @classmethod
    def _alphas_of_known_losses(cls, by_loss: dict[str, list[float]]) -> dict[str, list[float]]:
        unknown = [loss for loss in by_loss if loss not in TEXT_LOSSES]
        if unknown:
            raise ValueError(f"alphas_by_loss names unknown losses {unknown}: use {', '.join(TEXT_LOSSES)}")
        for alphas in by_loss.values():
            cls._text_alphas(alphas)
        return by_loss

    def alphas_of(self, loss: str) -> list[float]:
        return self.alphas_by_loss.get(loss, self.alphas)

    @field_validator("layers")
    @classmethod
    def _known_layers(cls, layers: list[str | int]) -> list[str | int]:
        unknown = [layer for layer in layers if isinstance(layer, str) and layer not in LAYER_NAMES]
        if unknown:
            raise ValueError(f"layers are numbers or {', '.join(LAYER_NAMES)}, not {unknown}")
        return layers


class AblationPlan(BaseModel):
    """A grid with the settings every cell shares and where it all goes."""

    grid: Grid
    settings: Settings
    out: Path
    source: str  # the grid file


class Cell(BaseModel):
    """One training run of the grid and the table rows it fills."""

    name: str
    loss: str  # BASELINE or a text loss
    alpha: float
    layer: int  # as TrainSettings.layer (-1: the last)
    rows: list[str]  # "table2" and/or "table3:<layer name>"


def load_grid_file(
    path: Path, data_dir: Path | None = None, out: Path | None = None, workers: int | None = None
) -> AblationPlan:
    """Read a grid file: `[grid]` for the grid, the rest as voxtox settings; options given here win."""
    if not path.is_file():
        raise FileNotFoundError(f"no grid file {path}")
    with path.open("rb") as handle:
        document = tomllib.load(handle)
    grid = Grid.model_validate(document.pop("grid", {}))
    settings = Settings(**document)
    settings = with_overrides(settings, data_dir=data_dir)
    if workers is not None:
        grid = grid.model_copy(update={"workers": workers})
    target = out or grid.out or Path("runs") / path.stem
    return pin_snapshot(AblationPlan(grid=grid, settings=settings, out=target, source=str(path)))


def pin_snapshot(plan: AblationPlan) -> AblationPlan:
    """On a lake, every cell trains and is evaluated on one snapshot, so the cells compare models
    on the same data while labelling goes on: the one cells trained before recorded (a rerun of
    the grid), else the latest (`[storage] snapshot` wins). Without a lake, the plan as it is."""
    runs = sorted(p for p in plan.out.iterdir() if p.is_dir()) if plan.out.is_dir() else []
    return plan.model_copy(update={"settings": pin_evaluation_snapshot(plan.settings, runs, "run")})


def encoder_layer_count(settings: Settings) -> int:
    """Transformer blocks of the configured speech encoder, read from its config (no weights)."""
    location = Path(resolve_model(settings.train.encoder, settings.model_cache_dir))
    if (location / "model.bin").is_file():
        return ct2_encoder_config(read_ct2_variables(location / "model.bin", prefix="encoder/")).encoder_layers
    return WhisperConfig.from_pretrained(str(location)).encoder_layers


def resolve_layer(layer: str | int, n_layers: int) -> int:
    """first = block 1, middle = block L/2 (6 of 12, as the paper), last = the encoder's output."""
    if layer == "first":
        return 1
    if layer == "middle":
        return max(1, n_layers // 2)
    if layer == "last":
        return n_layers
    number = int(layer)
    return number + n_layers + 1 if number < 0 else number


def _alpha_name(alpha: float) -> str:
    return f"a{alpha:g}"


def plan_cells(plan: AblationPlan) -> list[Cell]:
    """The grid's cells, the baseline first; a run shared by both tables appears once."""
    grid = plan.grid
    n_layers = encoder_layer_count(plan.settings)
    cells: dict[tuple[str, float, int], Cell] = {}

    def add(loss: str, alpha: float, layer: int, row: str) -> None:
        absolute = resolve_layer(layer, n_layers)
        key = (loss, alpha, absolute if loss != BASELINE else n_layers)
        if key not in cells:
            name = BASELINE if loss == BASELINE else f"{loss}-{_alpha_name(alpha)}"
            if loss != BASELINE and absolute != n_layers:
                name += f"-layer{absolute}"
            cells[key] = Cell(name=name, loss=loss, alpha=alpha, layer=-1 if absolute == n_layers else absolute, rows=[])
        if row not in cells[key].rows:
            cells[key].rows.append(row)

    add(BASELINE, 1.0, -1, "table2")
    for loss in grid.losses:
        for alpha in [] if loss == BASELINE else grid.alphas_of(loss):
            add(loss, alpha, -1, "table2")
    for layer in grid.layers:
        add(grid.layer_loss, grid.layer_alpha, resolve_layer(layer, n_layers), f"table3:{layer}")
    return list(cells.values())


def cell_settings(plan: AblationPlan, cell: Cell) -> Settings:
    """The cell's training settings: the grid's, its loss, α and layer, and the log-mel feature
    cache shared by every cell (`<out>/features`, unless the file names one)."""
    settings = plan.settings
    options: dict[str, object] = {"alpha": cell.alpha, "layer": cell.layer}
    options |= {} if cell.loss == BASELINE else {"loss": cell.loss}
    options |= {"feature_cache_dir": settings.train.feature_cache_dir or plan.out / FEATURES_DIR}
    return with_overrides(settings, train=options)


def cell_dir(plan: AblationPlan, cell: Cell) -> Path:
    return plan.out / cell.name


def cell_evaluation(plan: AblationPlan, cell: Cell) -> Path:
    return default_out_dir([cell_dir(plan, cell)], plan.settings.evaluate.split) / RESULTS_FILE


def is_trained(plan: AblationPlan, cell: Cell) -> bool:
    return RunDir(cell_dir(plan, cell)).is_finished()


def is_done(plan: AblationPlan, cell: Cell) -> bool:
    return is_trained(plan, cell) and cell_evaluation(plan, cell).is_file()


def describe_cells(plan: AblationPlan, cells: list[Cell]) -> str:
    body = [[c.name, c.loss, f"{c.alpha:g}", "last" if c.layer == -1 else c.layer, ", ".join(c.rows),
             "done" if is_done(plan, c) else "trained, to evaluate" if is_trained(plan, c) else "to train"]
            for c in cells]
    return (f"Ablation grid `{plan.source}` → `{plan.out}` ({len(cells)} cells, "
            f"{sum(is_done(plan, c) for c in cells)} done)\n\n"
            + markdown_table(["cell", "loss", "α", "layer", "table rows", "state"], body))


def preflight(plan: AblationPlan) -> None:
    """Fail before any training when the cells could not be evaluated (no evaluation segments,
    no human labels): hours of training would otherwise end in that error."""
    settings, options = plan.settings, plan.settings.evaluate
    catalog = Catalog.from_settings(settings)
    catalog.refresh_views()
    read_eval_set(catalog, options.split, options.labels, options.filter)
    if settings.train.val_labels == "human":
        read_eval_set(catalog, "val", "human", settings.train.val_filter)


def run_cell(plan: AblationPlan, cell: Cell) -> dict[str, object]:
    """Train the cell unless its run is final (resuming an interrupted run), then evaluate it
    unless its evaluation is saved."""
    run_dir = cell_dir(plan, cell)
    settings = cell_settings(plan, cell)
    trained = evaluated = False
    if not is_trained(plan, cell):
        train_model(settings, run_dir, resume=True)
        trained = True
    if not cell_evaluation(plan, cell).is_file():
        evaluate_runs([run_dir], settings)
        evaluated = True
    return {"cell": cell.name, "run_dir": str(run_dir), "trained": trained, "evaluated": evaluated}


# --- the paper's tables ----------------------------------------------------------------------


def grid_evaluation(plan: AblationPlan, cells: list[Cell]) -> Evaluation:
    """Every cell against the baseline on the same resamples (window scores come from each run's
    cache, so nothing is scored again)."""
    run_dirs = [cell_dir(plan, c) for c in cells]
    return evaluate_runs(run_dirs, plan.settings, plan.out / EVALUATION_DIR / plan.settings.evaluate.split)


def _cell_text(rows: Rows, cell: Cell, name: str) -> str:
    found = rows.get("model", cell.name, "all", "ap", name)
    text = format_ci(found)
    difference: Row | None = rows.get("difference", f"{cell.name} − {BASELINE}", "all", "ap_difference", name)
    if difference and difference["excludes_zero"]:
        text += " ↑" if float(difference["point"]) > 0 else " ↓"  # type: ignore[arg-type]
    return text


def loss_label(loss: str) -> str:
    """A loss as the tables name it; a loss the paper lacks says so."""
    return f"{loss} (variant, not the paper's)" if loss in VARIANT_LOSSES else loss


def _difference_text(rows: Rows, cell: Cell, lang: str = "all") -> str:
    if cell.loss == BASELINE:
        return ""
    return format_ci(rows.get("difference", f"{cell.name} − {BASELINE}", lang, "ap_difference", MAP_NAME), signed=True)


def paper_tables(results: Path, cells: list[Cell], n_layers: int) -> str:
    """Tables 2 and 3 in the paper's shape: AP per toxic class and mAP, in %, with 95% intervals;
    ↑/↓ where the paired difference to the baseline excludes 0, and that difference for mAP."""
    rows = Rows(pq.read_table(results))
    columns = [*TOXIC_CLASSES, MAP_NAME]
    difference = f"Δ {MAP_NAME} vs baseline"
    table2 = [[loss_label(c.loss), f"{c.alpha:g}", *(_cell_text(rows, c, n) for n in columns), _difference_text(rows, c)]
              for c in cells if "table2" in c.rows]
    text = "## Table 2: text-injection loss and α (last layer)\n\n"
    text += markdown_table(["loss", "α", *columns, difference], table2)
    layer_rows = table3_rows(cells, n_layers)
    if layer_rows:
        number = {name: layer_number(name, n_layers) for name, _ in layer_rows}
        table3 = [[f"{name} ({number[name]} of {n_layers})", f"{loss_label(c.loss)} α={c.alpha:g}",
                   *(_cell_text(rows, c, n) for n in columns), _difference_text(rows, c)] for name, c in layer_rows]
        baseline = next(c for c in cells if c.loss == BASELINE)
        table3.append(["baseline", "α=1", *(_cell_text(rows, baseline, n) for n in columns), ""])
        text += "\n## Table 3: injection layer\n\n" + markdown_table(["layer", "loss", *columns, difference], table3)
    return text


def layer_number(name: str, n_layers: int) -> int:
    return resolve_layer(name if name in LAYER_NAMES else int(name), n_layers)


def table3_rows(cells: list[Cell], n_layers: int) -> list[tuple[str, Cell]]:
    """(layer name, cell) of Table 3, from the first layer to the last."""
    found = [(row.split(":", 1)[1], c) for c in cells for row in c.rows if row.startswith("table3:")]
    return sorted(found, key=lambda pair: layer_number(pair[0], n_layers))


# --- results-grid.csv ------------------------------------------------------------------------


def _percent(value: object) -> float | None:
    return None if value is None else round(100 * float(value), 2)  # type: ignore[arg-type]


def grid_csv_rows(plan: AblationPlan, cells: list[Cell], evaluation: Evaluation) -> list[dict[str, object]]:
    """One row per cell, table and language (`CSV_COLUMNS`): mAP (%) with its interval and the
    paired difference to the baseline (points); `all` stands for the one language of a
    single-language evaluation."""
    rows = Rows(pq.read_table(evaluation.results))
    n_layers = encoder_layer_count(plan.settings)
    langs = rows.langs
    baseline = next(c for c in cells if c.loss == BASELINE)
    memberships = [("table2", c) for c in cells if "table2" in c.rows]
    table3 = table3_rows(cells, n_layers)
    memberships += [("table3", c) for _, c in table3] + ([("table3", baseline)] if table3 else [])
    out: list[dict[str, object]] = []
    for table, cell in memberships:
        config = json.loads((cell_dir(plan, cell) / "config.json").read_text())
        for lang in langs:
            found = rows.get("model", cell.name, lang, "ap", MAP_NAME) or {}
            difference = rows.get("difference", f"{cell.name} − {BASELINE}", lang, "ap_difference", MAP_NAME) or {}
            out.append({
                "table": plan.grid.name or table, "cell": cell.name, "loss": cell.loss, "alpha": cell.alpha,
                "layer": n_layers if cell.layer == -1 else cell.layer,
                "lang": evaluation.languages[0] if lang == "all" and len(evaluation.languages) == 1 else lang,
                "train_clips": config.get("train_clips"), "train_minutes": config.get("train_minutes"),
                "test_segments": found.get("n_segments"), "map": _percent(found.get("point")),
                "map_low": _percent(found.get("low")), "map_high": _percent(found.get("high")),
                "diff": _percent(difference.get("point")), "diff_low": _percent(difference.get("low")),
                "diff_high": _percent(difference.get("high")),
            })
    return out


def write_grid_csv(path: Path, rows: list[dict[str, object]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def grid_report(plan: AblationPlan, cells: list[Cell], evaluation: Evaluation) -> str:
    options = plan.settings.evaluate
    n_layers = encoder_layer_count(plan.settings)
    header = (
        f"# Ablation `{plan.source}`\n\n"
        f"- data: `{plan.settings.data_dir}`, split `{options.split}`, {evaluation.n_segments} evaluation segments "
        f"from {evaluation.n_sources} sources, {options.labels} labels"
        + (" (**not human labels**)" if options.labels == "pipeline" else "") + "\n"
        f"- encoder `{plan.settings.train.encoder}` ({n_layers} layers), epochs per cell: {plan.settings.train.epochs}; "
        f"models: `{options.checkpoint}/`\n"
        f"- AP in %, {options.confidence:.0%} bootstrap percentile intervals over {options.n_resamples} resamples of "
        f"{'sources' if options.resample_by == 'source' else 'segments'}; ↑/↓: the paired difference to the baseline "
        "excludes 0 (better / worse)\n"
        f"- per-language tables, differences with intervals, operating points and calibration: "
        f"`{evaluation.report}`; plot: `{evaluation.plots[0]}`\n\n"
    )
    return header + paper_tables(Path(evaluation.results), cells, n_layers)


# --- the flow's tasks (flows/ablate.py) --------------------------------------------------------


@dataclass
class AblationResult:
    report: str  # the tables (Markdown)
    results: str  # the metric rows of every cell and its difference to the baseline (Parquet)
    grid_csv: str  # mAP and the difference to the baseline per cell, table and language (CSV)
    evaluation_id: str
    cells: list[dict[str, object]] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # cell name -> what went wrong


@task(name="ablation-cell", task_run_name="cell-{cell.name}")
def cell_task(plan: AblationPlan, cell: Cell) -> dict[str, object]:
    return run_cell(plan, cell)


@task(name="ablation-tables")
def tables_task(plan: AblationPlan, cells: list[Cell], failed: dict[str, str]) -> AblationResult:
    evaluation = grid_evaluation(plan, cells)
    text = grid_report(plan, cells, evaluation)
    if failed:
        text += "\n## Cells that failed (not in the tables; the next run retries them)\n\n"
        text += "".join(f"- `{name}`: {reason}\n" for name, reason in failed.items())
    path = plan.out / TABLE_FILE
    path.write_text(text)
    csv_path = write_grid_csv(plan.out / CSV_FILE, grid_csv_rows(plan, cells, evaluation))
    return AblationResult(str(path), evaluation.results, str(csv_path), evaluation.evaluation_id, failed=failed)
