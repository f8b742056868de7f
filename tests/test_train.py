"""Training end to end on small lake tables written in the clips schema, with a tiny Whisper-shaped
encoder (2 layers, random init): run directory, torchrun/gloo equals one process, kill and resume,
the CLI through the Prefect flow, and (slow) the real offline base encoder."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from tests.conftest import TEXT_DIM, lake_catalog, synthetic_clips, write_rows
from voxtox.models.trainer import Trainer, load_classifier
from voxtox.settings import Settings, TrainSettings
from voxtox.storage.clips import read_audio_bytes, read_clip_index
from voxtox.tasks.train import bucketed_batches, rank_micro_batches, train_model

RATE = 16_000
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("train-data")
    write_rows(directory, "clips", synthetic_clips(32, "train", 0).slice(0, 20), "src-train-a")
    write_rows(directory, "clips", synthetic_clips(32, "train", 0).slice(20), "src-train-b")
    write_rows(directory, "clips", synthetic_clips(12, "val", 1), "src-val")
    return directory


def settings_for(data_dir: Path, encoder: Path | str, **train: object) -> Settings:
    options = dict(
        encoder=str(encoder), loss="contrastive", alpha=0.5, epochs=2, batch_size=4, grad_accum=2,
        learning_rate=1e-3, num_workers=0, checkpoint_every=1, val_resamples=20, threads=1,
    ) | train
    return Settings(data_dir=data_dir, train=TrainSettings(**options))


def test_the_index_holds_the_filtered_rows_and_where_their_audio_is(data_dir: Path) -> None:
    catalog = lake_catalog(data_dir)
    clips = read_clip_index(catalog, "train", "label_no_violation = false")
    assert len(clips) == 27  # 32 less the 5 no_violation clips (every 6th)
    assert clips.text.shape == (len(clips), TEXT_DIM) and clips.labels[:, -1].sum() == 0
    # the audio is a local copy of the lake's at one snapshot, read by row (storage/catalog.py locate_clips)
    assert len(set(clips.files)) == 1 and Path(clips.files[0]).name.startswith("clips-")
    assert read_audio_bytes(clips.files[3], int(clips.rows[3]), clips.clip_ids[3])[:4] == b"fLaC"
    with pytest.raises(ValueError, match="no val clips"):
        read_clip_index(catalog, "val", "duration_s > 100")


def test_micro_batches_are_bucketed_and_split_across_ranks_as_one_process_would() -> None:
    durations = np.random.default_rng(0).uniform(1, 15, size=50)
    batches = bucketed_batches(durations, batch_size=4, pool=3, seed=0, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(50))
    for batch in batches:  # pools are sorted by duration, so a batch spans a narrow range
        assert len(batch) <= 4
    spreads = [np.ptp(durations[b]) for b in batches if len(b) == 4]
    assert np.mean(spreads) < np.ptp(durations) / 3
    one = rank_micro_batches(batches, world=1, rank=0, accum=4)
    two = [rank_micro_batches(batches, world=2, rank=r, accum=2) for r in (0, 1)]
    assert len(one) == len(two[0]) == 13 // 4
    for step, (first, second) in enumerate(zip(*two, strict=True)):
        assert one[step] == first + second
    assert bucketed_batches(durations, 4, 3, 0, 1) != batches  # a new order every epoch


def test_training_writes_the_run_directory(data_dir: Path, tiny_whisper: Path, tmp_path: Path) -> None:
    settings = settings_for(data_dir, tiny_whisper, num_workers=2, layer=1, loss="asymmetric-proxy")
    report = train_model(settings, tmp_path / "run")
    run = Path(report.run_dir)
    assert report.steps == 2 * (32 // 8) and len(report.history) == 2
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["loss"] == "asymmetric-proxy" and config["train_clips"] == 32
    lines = (run / "metrics.csv").read_text().splitlines()
    assert len(lines) == 3 and "val_mAP" in lines[0] and "val_ap_racism" in lines[0]
    assert json.loads((run / "metrics.json").read_text()) == report.history
    for row in report.history:
        assert np.isfinite(row["train_loss"]) and np.isfinite(row["train_text"]) and 0 <= row["val_mAP"] <= 1
    final = load_classifier(run / "final")
    assert final.inject_layer == 1 and final.injection_projection is not None
    assert (run / "best" / "model.safetensors").exists()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000007", "step-00000008"]


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "final" / "model.safetensors")


def _assert_same_run(a: Path, b: Path, atol: float) -> None:
    history_a = json.loads((a / "metrics.json").read_text())
    history_b = json.loads((b / "metrics.json").read_text())
    for row_a, row_b in zip(history_a, history_b, strict=True):
        for key in ("train_loss", "train_bce", "train_text", "val_mAP"):
            assert row_a[key] == pytest.approx(row_b[key], abs=atol), key
    weights_a, weights_b = _final_weights(a), _final_weights(b)
    for name, value in weights_a.items():
        torch.testing.assert_close(value, weights_b[name], atol=atol, rtol=0)


def test_two_gloo_processes_equal_one_process_with_the_same_global_batch(
    data_dir: Path, tiny_whisper: Path, tmp_path: Path
) -> None:
    """torchrun, 2 CPU ranks × 2 micro-batches of 4 == 1 process × 4 micro-batches of 4."""
    common = settings_for(data_dir, tiny_whisper, loss="ntxent-am", grad_accum=2)
    env = os.environ | {
        "VOXTOX_DATA_DIR": str(data_dir),
        "VOXTOX_TRAIN": common.train.model_dump_json(),
        "OMP_NUM_THREADS": "1",
    }
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
              "-m", "voxtox.flows.cli", "train", "--out", str(tmp_path / "ddp")]
    result = subprocess.run(launch, env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    single = settings_for(data_dir, tiny_whisper, loss="ntxent-am", grad_accum=4)
    train_model(single, tmp_path / "single")
    assert json.loads((tmp_path / "ddp" / "config.json").read_text())["world_size"] == 2
    _assert_same_run(tmp_path / "ddp", tmp_path / "single", atol=1e-5)


def _train_until_killed_in_step_3(settings: Settings, run: Path) -> None:
    """In a forked child: train, and SIGKILL the process in the middle of step 3, after the
    checkpoint of step 2 is on disk (no chance for cleanup, as with an OOM kill or a node loss)."""
    original = Trainer.step

    def step(self: Trainer, micro_batches: list) -> object:
        if (run / "checkpoints" / "step-00000002").exists():
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, micro_batches)

    Trainer.step = step  # type: ignore[method-assign]  # only in the child
    train_model(settings, run)


def test_a_killed_run_resumes_to_the_same_result(data_dir: Path, tiny_whisper: Path, tmp_path: Path) -> None:
    settings = settings_for(data_dir, tiny_whisper, checkpoint_every=2)
    child = multiprocessing.get_context("fork").Process(
        target=_train_until_killed_in_step_3, args=(settings, tmp_path / "resumed")
    )
    child.start()
    child.join(timeout=120)
    assert child.exitcode == -signal.SIGKILL
    assert not (tmp_path / "resumed" / "final").exists()
    train_model(settings, tmp_path / "resumed", resume=True)
    train_model(settings, tmp_path / "straight")
    _assert_same_run(tmp_path / "resumed", tmp_path / "straight", atol=1e-6)


def test_cli_trains_a_baseline_through_the_flow(data_dir: Path, tiny_whisper: Path, tmp_path: Path, prefect_harness) -> None:
    from voxtox.flows.cli import app

    config = tmp_path / "baseline.toml"
    config.write_text(f'data_dir = "{data_dir}"\n[train]\nthreads = 1\nnum_workers = 0\nval_resamples = 20\n'
                      f'batch_size = 4\ngrad_accum = 2\nlearning_rate = 1e-3\nencoder = "{tiny_whisper}"\n')
    result = CliRunner().invoke(app, ["train", "--config", str(config), "--alpha", "1", "--epochs", "1",
                                      "--out", str(tmp_path / "baseline")])
    assert result.exit_code == 0, result.output
    assert "best epoch 1" in result.output
    history = json.loads((tmp_path / "baseline" / "metrics.json").read_text())
    assert len(history) == 1 and np.isnan(history[0]["train_text"])
    assert load_classifier(tmp_path / "baseline" / "final").injection_projection is None


@pytest.mark.slow
def test_the_offline_base_encoder_trains_a_few_steps(data_dir: Path, tmp_path: Path) -> None:
    settings = settings_for(data_dir, "whisper-base", epochs=1, batch_size=4, grad_accum=2, threads=2,
                            learning_rate=3e-5, checkpoint_every=100)
    settings = settings.model_copy(update={"model_cache_dir": Settings().model_cache_dir})
    report = train_model(settings, tmp_path / "base")
    assert report.steps == 4 and np.isfinite(report.history[0]["train_loss"])
    assert sum(p.numel() for p in load_classifier(tmp_path / "base" / "final").encoder.parameters()) == 20_590_592


def test_best_is_chosen_on_the_classes_validation_can_measure() -> None:
    from voxtox.tasks.train import selection_score

    nan = float("nan")
    full = {"val_mAP": 0.4, "val_ap_profanity": 0.2, "val_ap_bullying": 0.6, "val_ap_racism": 0.4, "val_ap_dating_sexting": 0.4}
    assert selection_score(full) == 0.4
    no_dating = full | {"val_mAP": nan, "val_ap_dating_sexting": nan}  # no positive of one class in val
    assert selection_score(no_dating) == pytest.approx(0.4)
    assert selection_score({k: nan for k in full}) == float("-inf")


def test_the_feature_cache_trains_exactly_as_decoding_and_is_filled_once(
    data_dir: Path, tiny_whisper: Path, tmp_path: Path
) -> None:
    """Cached log-mel features are the decoding path's own (float32): the same run either way.
    The cache is Parquet keyed by clip id under the run, where `voxtox forget` erases rows."""
    from voxtox.storage.forget import cached_score_files

    common = dict(loss="contrastive", alpha=0.5, epochs=1, batch_size=8, grad_accum=1)
    train_model(settings_for(data_dir, tiny_whisper, feature_cache=False, **common), tmp_path / "decoded")
    train_model(settings_for(data_dir, tiny_whisper, **common), tmp_path / "cached")
    _assert_same_run(tmp_path / "decoded", tmp_path / "cached", atol=1e-6)
    assert not (tmp_path / "decoded" / "features").exists()
    parts = sorted((tmp_path / "cached" / "features" / "mel80").glob("part-*.parquet"))
    assert sum(pq.read_metadata(p).num_rows for p in parts) == 32 + 12  # train + val clips, once each
    assert set(parts) <= set(cached_score_files([tmp_path / "cached"]))  # what forget rewrites
    train_model(settings_for(data_dir, tiny_whisper, **common), tmp_path / "cached", resume=True)
    assert sorted((tmp_path / "cached" / "features" / "mel80").glob("part-*.parquet")) == parts  # read, not recomputed


def test_a_text_step_of_one_micro_batch_equals_the_cached_gradient_path(data_dir: Path, tiny_whisper: Path) -> None:
    """One micro-batch of 8 (one forward pass) gets the gradient that the same 8 clips get as
    two micro-batches of 4 (the no-grad pass caching the full-batch text loss's gradient)."""
    from voxtox.models.trainer import make_trainer, start_processes
    from voxtox.tasks.train import ClipFeatures, collate_clips

    settings = settings_for(data_dir, tiny_whisper, loss="contrastive", alpha=0.3, batch_size=8, grad_accum=1)
    catalog = lake_catalog(data_dir)
    clips = read_clip_index(catalog, "train", "TRUE")
    dataset = ClipFeatures(clips, 80, max_frames=None)
    batch = [dataset[i] for i in range(8)]
    trained = []
    for micro_batches in ([collate_clips(batch)], [collate_clips(batch[:4]), collate_clips(batch[4:])]):
        trainer = make_trainer(settings.train, clips, settings.model_cache_dir, 10, start_processes())
        trainer.optimizer = torch.optim.SGD(trainer.model.parameters(), lr=1.0)  # weights move by the gradient
        trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, lambda step: 1.0)
        losses = trainer.step(micro_batches)
        trained.append((losses, trainer.model.state_dict()))
    (one, weights_one), (two, weights_two) = trained
    assert one.text == pytest.approx(two.text, abs=1e-6) and one.bce == pytest.approx(two.bce, abs=1e-6)
    for name, value in weights_one.items():
        torch.testing.assert_close(value, weights_two[name], atol=1e-6, rtol=0)


def test_best_is_chosen_on_human_labels_where_the_catalog_has_them(tmp_path: Path) -> None:
    from test_evaluate import build_data_dir

    from voxtox.models.scoring import NoHumanLabelsError
    from voxtox.tasks.train import read_val_index

    labelled = build_data_dir(tmp_path / "labelled")
    catalog = lake_catalog(labelled)
    human, kind = read_val_index(catalog, TrainSettings())
    pipeline, pipeline_kind = read_val_index(catalog, TrainSettings(val_labels="pipeline"))
    assert (kind, pipeline_kind) == ("human", "pipeline") and len(human) == len(pipeline) == 18
    assert human.clip_ids == pipeline.clip_ids and not np.array_equal(human.labels, pipeline.labels)  # flipped
    unlabelled = build_data_dir(tmp_path / "unlabelled", with_human_labels=False)
    catalog = lake_catalog(unlabelled)
    assert read_val_index(catalog, TrainSettings())[1] == "pipeline"
    with pytest.raises(NoHumanLabelsError):
        read_val_index(catalog, TrainSettings(val_labels="human"))
