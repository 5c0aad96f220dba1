"""`thermostat model-server` start-up: what cannot load fails in one line, before binding.

The model (and the device) are resolved by the command before uvicorn starts;
in the app's lifespan a failure was a traceback from uvicorn and exit code 3.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import assert_one_line_error
from tests.support.servers import free_port

torch = pytest.importorskip("torch")


def model_server(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("THERMOSTAT_")}
    env.update(THERMOSTAT_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "monitor", "model-server", "--port", str(free_port()), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.mark.parametrize(
    ("config", "expected"),
    [("{}", "model_type"), ("{not json", "cannot load the model")],
)
def test_broken_model_folder_is_one_line(tmp_path: Path, config: str, expected: str) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(config)
    result = model_server("--model", str(folder), "--device", "cpu", tmp_path=tmp_path)
    assert_one_line_error(result, "model-server", expected)
    assert str(folder) in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_one_line(tiny_model_dir: Path, tmp_path: Path) -> None:
    result = model_server("--model", str(tiny_model_dir), "--device", "cuda", tmp_path=tmp_path)
    assert_one_line_error(result, "model-server", "CUDA is not available")


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--port", "70000"),
        ("--port", "-1"),
        ("--port", "http"),
        ("--threads", "0"),
        ("--threads", "two"),
    ],
)
def test_bad_port_or_threads_is_a_usage_error(
    option: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from monitor.cli import main

    with pytest.raises(SystemExit) as info:
        main(["model-server", "--model", str(tmp_path / "missing"), option, value])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith(f"thermostat model-server: error: argument {option}")


@pytest.fixture
def torch_threads_restored() -> Iterator[None]:
    """The test changes this process's torch threads; later tests get them back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("torch_threads_restored")
def test_threads_sets_torch_cpu_threads_before_serving(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import uvicorn

    from monitor.cli import main

    torch.set_num_threads(2)
    seen: list[int] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: seen.append(torch.get_num_threads()))
    argv = ["model-server", "--model", str(tiny_model_dir), "--device", "cpu", "--port", "0"]
    assert main([*argv, "--threads", "1"]) == 0
    assert seen == [1]
    assert "model on cpu; torch threads: 1" in caplog.text
    assert main(argv) == 0  # without the option the command leaves the threads alone
    assert seen == [1, 1]


def test_the_command_loads_the_engine_once_before_serving(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine the command loaded is the one the app serves; the lifespan loads nothing."""
    import uvicorn
    from fastapi.testclient import TestClient

    from monitor.cli import main
    from monitor.serving.model_server import app as app_module
    from monitor.serving.model_server import generation

    events: list[str] = []
    real_load = generation.load_engine

    def counting_load(*args: Any) -> Any:
        events.append("load")
        return real_load(*args)

    def fake_run(app: Any, **kwargs: Any) -> None:
        events.append(f"serve:{kwargs['port']}")
        # Idle connections outlive the clients' 5 s (httpx, openai): no close races a request.
        assert kwargs["timeout_keep_alive"] > 5
        with TestClient(app) as client:
            assert client.get("/healthz").json() == {"status": "ok", "model_loaded": True}
            card = client.get("/v1/models").json()["data"][0]
            assert card["id"] == str(tiny_model_dir)

    monkeypatch.setattr(generation, "load_engine", counting_load)
    monkeypatch.setattr(app_module, "load_engine", counting_load)
    monkeypatch.setattr(uvicorn, "run", fake_run)
    argv = ["model-server", "--model", str(tiny_model_dir), "--device", "cpu", "--port", "0"]
    assert main(argv) == 0
    assert events == ["load", "serve:0"]


def test_app_built_directly_still_loads_in_its_lifespan(tiny_model_dir: Path) -> None:
    from fastapi.testclient import TestClient

    from monitor.serving.model_server import create_model_server_app

    app = create_model_server_app(str(tiny_model_dir), device="cpu", served_model_name="tiny")
    assert app.state.engine is None
    with TestClient(app) as client:
        assert client.get("/v1/models").json()["data"][0]["id"] == "tiny"
