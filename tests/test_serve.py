"""`voxtox serve`: the deployments and schedules it would register (built, not served)."""

from __future__ import annotations

from pathlib import Path

import pytest
import tzlocal
from typer.testing import CliRunner
from voxtox.flows.cli import app
from voxtox.flows.serve import DEPLOYABLES, DEPLOYMENT_NAME, build_deployments, next_runs

from voxtox.settings import NightlySettings, ServeSettings, Settings

def serve_settings(tmp_path: Path, **serve: object) -> Settings:
    return Settings(data_dir=tmp_path, serve=ServeSettings(**serve))


def schedules_of(deployment) -> list[tuple[str, str]]:
    return [(s.schedule.cron, s.schedule.timezone) for s in deployment.schedules or []]


def test_defaults_schedule_the_nightly_flow_at_two_local_time() -> None:
    serve = ServeSettings()
    assert serve.flows == ["nightly", "label"]
    assert (serve.cron, serve.timezone, serve.label_cron) == ("0 2 * * *", None, None)


def test_deployments_follow_settings(tmp_path: Path) -> None:
    deployments = {d.flow_name: d for d in build_deployments(serve_settings(tmp_path))}
    assert list(deployments) == ["nightly", "label"]
    inbox = (tmp_path / "inbox").resolve()
    local_zone = tzlocal.get_localzone_name()
    for name, deployment in deployments.items():
        assert deployment.name == DEPLOYMENT_NAME
        assert deployment.entrypoint == f"{DEPLOYABLES[name].module}.{DEPLOYABLES[name].attribute}"
        assert deployment.tags == ["voxtox"]
    label = deployments["label"]
    assert label.parameters == {"inputs": [str(inbox / "train")], "split": "train"}
    assert schedules_of(label) == []  # on demand unless label_cron is set
    nightly = deployments["nightly"]
    assert nightly.parameters == {"inbox": str(inbox)}
    assert schedules_of(nightly) == [("0 2 * * *", local_zone)]


def test_with_a_train_pool_the_nightlys_training_deployment_goes_on_the_pool(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, nightly=NightlySettings(train_pool="voxtox-gpu"))
    deployments = {f"{d.flow_name}/{d.name}": d for d in build_deployments(settings)}
    assert list(deployments) == ["nightly/voxtox", "train/voxtox", "label/voxtox"]
    train = deployments["train/voxtox"]
    assert train.work_pool_name == "voxtox-gpu" and train.entrypoint == "voxtox.flows.train_pool.train_run_flow"
    assert train.storage is None and schedules_of(train) == [] and train.parameters == {}
    assert [d.work_pool_name for name, d in deployments.items() if name != "train/voxtox"] == [None, None]  # served
    only_label = serve_settings(tmp_path, flows=["label"]).model_copy(update={"nightly": settings.nightly})
    assert [d.flow_name for d in build_deployments(only_label)] == ["label"]  # nothing triggers it
    with pytest.raises(ValueError, match="cannot serve train: known flows are nightly, label"):
        build_deployments(serve_settings(tmp_path, flows=["train"]))  # a worker runs it, never serve


def test_cron_timezone_and_inbox_come_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXTOX_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("VOXTOX_SERVE__FLOWS", '["label"]')
    monkeypatch.setenv("VOXTOX_SERVE__LABEL_CRON", "*/30 6-22 * * *")
    monkeypatch.setenv("VOXTOX_SERVE__TIMEZONE", "Europe/Berlin")
    monkeypatch.setenv("VOXTOX_SERVE__INBOX", str(tmp_path / "drop"))
    (label,) = build_deployments(Settings())
    assert schedules_of(label) == [("*/30 6-22 * * *", "Europe/Berlin")]
    assert label.parameters["inputs"] == [str(tmp_path / "drop" / "train")]
    (first,) = next_runs(label)
    assert first.tzinfo is not None and first.minute in (0, 30) and 6 <= first.hour <= 22


def test_the_nightly_run_is_at_two_in_the_configured_zone(tmp_path: Path) -> None:
    settings = serve_settings(tmp_path, timezone="America/Sao_Paulo")
    nightly = next(d for d in build_deployments(settings) if d.flow_name == "nightly")
    (first,) = next_runs(nightly)
    assert (first.hour, first.minute) == (2, 0)
    assert first.utcoffset().total_seconds() == -3 * 3600  # São Paulo has no DST since 2019


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot serve bogus"):
        build_deployments(Settings(data_dir=tmp_path, serve=ServeSettings(flows=["label", "bogus"])))
    with pytest.raises(ValueError, match="unknown timezone"):
        ServeSettings(timezone="Mars/Olympus_Mons")
    with pytest.raises(ValueError, match="Invalid cron"):
        build_deployments(serve_settings(tmp_path, label_cron="0 25 * * *"))


def test_cli_dry_run_lists_what_it_would_serve(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["serve", "--flow", "label", "--data-dir", str(tmp_path), "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    assert "label/voxtox" in result.output and "on demand" in result.output
    assert not (tmp_path / "inbox").exists()  # a dry run changes nothing

    bad = CliRunner().invoke(app, ["serve", "--flow", "bogus", "--dry-run"])
    assert bad.exit_code == 2 and "cannot serve bogus" in bad.output
