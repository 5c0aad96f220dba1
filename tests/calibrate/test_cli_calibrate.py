"""`thermostat calibrate` as users run it: a real process, the tiny model, the shipped sets.

The fixtures in tests/fixtures/ mix multiple-choice and arithmetic target lines
drawn from the tiny model's corpus (some seen in training, some new), so the
model is right on some and wrong on others and a fit has something to do.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from monitor.db.engine import build_engine
from monitor.db.models import Calibration, Task
from monitor.db.session import make_session_factory, session_scope
from tests.support.cli import assert_one_line_error

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
GOOD_SET = FIXTURES / "calibration_set.jsonl"
BAD_SET = FIXTURES / "calibration_bad.jsonl"
GOOD_LINES = 110
BAD_LINE_NUMBERS = (3, 10, 17, 25, 33, 41)
BIN_ROW = re.compile(r"^\((\d\.\d{3}), (\d\.\d{3})\]\s+(\d+)\s+(\S+)\s+(\S+)\s+(\S+)$")


def thermostat(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "monitor", "calibrate", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    values = {k: v for k, v in os.environ.items() if not k.startswith("THERMOSTAT_")}
    values["THERMOSTAT_HOME"] = str(tmp_path / "home")
    values["HF_HUB_OFFLINE"] = "1"
    return values


def calibrations(url: str, task: str) -> list[Calibration]:
    engine = build_engine(url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            stmt = select(Calibration).where(Calibration.task == task).order_by(Calibration.version)
            return list(session.scalars(stmt))
    finally:
        engine.dispose()


def reliability_tables(stdout: str) -> list[list[tuple[float, float, int, str, str, str]]]:
    """Every printed reliability table, as parsed rows."""
    tables: list[list[tuple[float, float, int, str, str, str]]] = []
    lines = stdout.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("reliability on the held-out split"):
            continue
        assert lines[i + 1].split() == ["range", "count", "mean", "conf", "accuracy", "gap"]
        rows = []
        for row in lines[i + 2 :]:
            m = BIN_ROW.match(row)
            if not m:
                break
            lo, hi, n, conf, acc, gap = m.groups()
            rows.append((float(lo), float(hi), int(n), conf, acc, gap))
        tables.append(rows)
    return tables


def metric_row(stdout: str, name: str) -> tuple[float, float]:
    for line in stdout.splitlines():
        parts = line.split()
        if parts and parts[0] == name and len(parts) == 4:
            return float(parts[1]), float(parts[2])
    raise AssertionError(f"no {name} row in:\n{stdout}")


def before_after(calibration: Calibration) -> tuple[dict[str, Any], dict[str, Any]]:
    assert calibration.metrics_before is not None and calibration.metrics_after is not None
    return calibration.metrics_before, calibration.metrics_after


def check_sane(calibration: Calibration, n_examples: int) -> None:
    assert calibration.source == "offline"
    assert calibration.n_train + calibration.n_holdout == n_examples
    assert calibration.n_holdout == round(0.2 * n_examples)
    assert calibration.device == "cpu"
    assert calibration.fit_seconds is not None and calibration.fit_seconds >= 0
    assert 0.05 <= calibration.temperature <= 20
    before, after = before_after(calibration)
    for metrics in (before, after):
        assert 0.0 <= metrics["ece"] <= 1.0 and 0.0 <= metrics["mce"] <= 1.0
        assert 0.0 <= metrics["brier"] <= 1.0 and metrics["nll"] > 0
        assert 0.0 <= metrics["accuracy"] <= 1.0
        assert metrics["n"] == calibration.n_holdout
        assert sum(b["count"] for b in metrics["bins"]) == calibration.n_holdout
    assert before["temperature"] == 1.0
    assert after["temperature"] == pytest.approx(calibration.temperature)


@pytest.mark.postgres
def test_calibrate_stores_and_activates_a_version(
    env: dict[str, str], tiny_model: Path, db_url: str
) -> None:
    env["THERMOSTAT_DATABASE_URL"] = db_url
    # An active version from elsewhere: activation must retire it.
    engine = build_engine(db_url)
    with session_scope(make_session_factory(engine)) as session:
        session.add(Task(name="qa", config={}, configured=False))
        session.flush()
        session.add(Calibration(task="qa", version=1, temperature=1.3, status="active"))
    engine.dispose()

    result = thermostat(
        *("--task", "qa", "--model", str(tiny_model), "--data", str(GOOD_SET)),
        *("--device", "cpu", "--activate"),
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "running the model" in result.stderr and f"{GOOD_LINES}/{GOOD_LINES}" in result.stderr
    out = result.stdout
    assert "gate: accepted" in out, out
    assert "stored calibration" in out and "version 2, status active" in out

    rows = calibrations(db_url, "qa")
    assert [(c.version, c.status) for c in rows] == [(1, "retired"), (2, "active")]
    assert rows[0].retired_at is not None and rows[1].activated_at is not None
    new = rows[1]
    check_sane(new, GOOD_LINES)
    before, after = before_after(new)
    assert new.method == "temperature" and new.bias is None
    assert new.params is not None and new.params["fit_on"] == "mixed"
    assert new.params["n_multiple_choice"] + new.params["n_target"] == GOOD_LINES
    assert after["ece"] < before["ece"] and after["nll"] < before["nll"]

    # What is printed is what is stored.
    ece_before, ece_after = metric_row(out, "ECE")
    assert ece_before == pytest.approx(before["ece"], abs=1e-4)
    assert ece_after == pytest.approx(after["ece"], abs=1e-4)
    assert metric_row(out, "n") == (new.n_holdout, new.n_holdout)
    tables = reliability_tables(out)
    assert len(tables) == 2  # before and after
    for table, stored in zip(tables, (before, after), strict=True):
        assert len(table) == 15
        assert table[0][0] == 0.0 and table[-1][1] == 1.0
        assert [row[2] for row in table] == [b["count"] for b in stored["bins"]]
        for lo, hi, count, conf, acc, gap in table:
            if count == 0:
                assert (conf, acc, gap) == ("-", "-", "-")
            else:
                assert lo <= float(conf) <= hi + 1e-9
                assert float(gap) == pytest.approx(float(acc) - float(conf), abs=2e-4)


def test_bad_lines_are_reported_with_line_numbers_and_skipped(
    env: dict[str, str], tiny_model: Path, tmp_path: Path
) -> None:
    result = thermostat(
        "--task",
        "qa",
        "--model",
        str(tiny_model),
        "--data",
        str(BAD_SET),
        "--max-bad-fraction",
        "0.2",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    skipped = [line for line in result.stderr.splitlines() if ": skipped: " in line]
    assert [int(line.split(":")[1]) for line in skipped] == list(BAD_LINE_NUMBERS)
    assert all(line.startswith(f"{BAD_SET}:") for line in skipped)
    assert "invalid JSON" in skipped[0] and "out of range" in skipped[3]
    # The embedded default was created and migrated on first use.
    url = f"sqlite:///{tmp_path / 'home' / 'thermostat.db'}"
    (stored,) = calibrations(url, "qa")
    check_sane(stored, 46 - len(BAD_LINE_NUMBERS))
    # Without --activate a version is only a candidate (or rejected by the gate).
    assert stored.status in ("candidate", "rejected") and stored.activated_at is None
    assert f"status {stored.status}" in result.stdout


def test_vector_on_a_small_set_falls_back_to_temperature_and_says_so(
    env: dict[str, str], tiny_model: Path, tmp_path: Path
) -> None:
    result = thermostat(
        "--task",
        "mc",
        "--model",
        str(tiny_model),
        "--data",
        str(GOOD_SET),
        "--method",
        "vector",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "target lines not used" in result.stderr
    (stored,) = calibrations(f"sqlite:///{tmp_path / 'home' / 'thermostat.db'}", "mc")
    n_choice = sum('"choices"' in line for line in GOOD_SET.read_text().splitlines())
    check_sane(stored, n_choice)
    # 60 examples over 4 answer positions is below vector scaling's threshold.
    assert stored.method == "temperature" and stored.bias is None
    assert stored.params is not None and stored.params["requested_method"] == "vector"
    assert "temperature scaling used" in (stored.reason or "")
    assert "method temperature" in result.stdout


@pytest.fixture
def in_process_env(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("THERMOSTAT_HOME", env["THERMOSTAT_HOME"])
    yield


def test_activate_refuses_a_version_the_gate_rejected(
    in_process_env: None,
    tiny_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from monitor import cli
    from monitor.commands import calibrate

    real_fit = calibrate.fit

    def rejecting_fit(*args: Any, **kwargs: Any) -> Any:
        result = real_fit(*args, **kwargs)
        return dataclasses.replace(result, accepted=False, reason="forced by the test")

    monkeypatch.setattr(calibrate, "fit", rejecting_fit)
    argv = ["calibrate", "--task", "qa", "--model", str(tiny_model), "--data", str(BAD_SET)]
    code = cli.main([*argv, "--max-bad-fraction", "0.2", "--activate"])
    err = capsys.readouterr().err
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("thermostat calibrate: error: version 1 was rejected")
    assert "forced by the test" in last and "not activated" in last
    (stored,) = calibrations(f"sqlite:///{tmp_path / 'home' / 'thermostat.db'}", "qa")
    assert stored.status == "rejected" and stored.activated_at is None


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"--data": "missing.jsonl"}, "calibration data not found"),
        ({"--model": "no-such-model"}, "model path does not exist"),
        ({"--model": "."}, "no config.json"),
        ({"--task": "Bad Task!"}, "task name 'Bad Task!' must match"),
        ({"--data": str(BAD_SET)}, "6 of 46 lines are invalid (limit 10%); line 3"),
    ],
    ids=["missing-data", "missing-model", "not-a-model", "bad-task", "too-many-bad-lines"],
)
def test_expected_errors_are_one_line_exit_1(
    env: dict[str, str], tmp_path: Path, change: dict[str, str], expected: str
) -> None:
    values = {"--task": "qa", "--model": str(tmp_path), "--data": str(GOOD_SET)}
    (tmp_path / "config.json").write_text("{}")  # passes the model-path check
    values.update(change)
    if values["--model"] == ".":
        values["--model"] = str(tmp_path / "empty")
        (tmp_path / "empty").mkdir()
    args = [item for pair in values.items() for item in pair]
    result = thermostat(*args, env=env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("thermostat calibrate: error: ")
    assert expected in lines[0]
    assert not (tmp_path / "home" / "thermostat.db").exists()  # failed before any write


BROKEN_MODELS = {
    # name: (config.json, files copied from the tiny model, expected in the error)
    "empty-config": ("{}", [], "config.json has no model_type"),
    "config-not-json": ("{not json", [], "config.json is not valid JSON"),
    "config-not-object": ("[1]", [], "config.json is not a JSON object"),
    "unknown-model-type": (
        '{"model_type": "nosuchmodel"}',
        [],
        "config.json: model_type 'nosuchmodel' is unknown to transformers",
    ),
    "not-causal": (
        '{"model_type": "t5"}',
        [],
        "config.json: model_type 't5' is not a causal language model",
    ),
    "no-tokenizer": (None, ["model.safetensors"], "no usable tokenizer"),
    "bad-tokenizer": (None, ["tokenizer_config.json"], "the tokenizer does not load"),
}


@pytest.mark.parametrize("case", list(BROKEN_MODELS))
def test_broken_model_folder_names_the_real_problem(
    env: dict[str, str], tmp_path: Path, tiny_model: Path, case: str
) -> None:
    """Each is one line naming its cause, before the database is opened.

    An empty config.json used to be reported as a tokenizer backend failure, and
    a folder without tokenizer files loaded an empty tokenizer without a word.
    """
    config, copied, expected = BROKEN_MODELS[case]
    folder = tmp_path / "model"
    folder.mkdir()
    config_text = (tiny_model / "config.json").read_text() if config is None else config
    (folder / "config.json").write_text(config_text)
    for name in copied:
        (folder / name).write_bytes((tiny_model / name).read_bytes())
    if case == "bad-tokenizer":
        (folder / "tokenizer.json").write_text('{"model": {"type": "Nope"}}')
    result = thermostat("--task", "qa", "--model", str(folder), "--data", str(GOOD_SET), env=env)
    assert_one_line_error(result, "calibrate", f"cannot load the model from {folder}: {expected}")
    assert not (tmp_path / "home" / "thermostat.db").exists()


def test_missing_weights_are_one_line(
    env: dict[str, str], tmp_path: Path, tiny_model: Path
) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    for source in tiny_model.iterdir():
        if source.name != "model.safetensors":
            (folder / source.name).write_bytes(source.read_bytes())
    result = thermostat("--task", "qa", "--model", str(folder), "--data", str(GOOD_SET), env=env)
    assert_one_line_error(result, "calibrate", "no file named model.safetensors")


@pytest.mark.postgres
def test_unmigrated_postgres_is_refused_before_the_model_runs(
    env: dict[str, str], tiny_model: Path, empty_db_url: str, backend: str
) -> None:
    if backend != "postgres":
        pytest.skip("embedded SQLite migrates itself on open")
    env["THERMOSTAT_DATABASE_URL"] = empty_db_url
    result = thermostat(
        "--task", "qa", "--model", str(tiny_model), "--data", str(GOOD_SET), env=env
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("thermostat calibrate: error: ")
    assert "thermostat db upgrade" in lines[0]
    assert "running the model" not in result.stderr
