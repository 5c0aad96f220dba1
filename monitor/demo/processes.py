"""Start the demo's servers as real processes, wait for them, and stop them cleanly.

The model server and the sidecar run exactly as a user would run them
(`thermostat model-server`, `thermostat serve`), each logging to a file under
the demo folder so a failure can be read afterwards.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from monitor.errors import ThermostatError


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ManagedProcess:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    base_url: str

    def wait_ready(self, path: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ThermostatError(
                    f"{self.name} exited early; see {self.log_path}: {self.tail()}"
                )
            try:
                if httpx.get(self.base_url + path, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        raise ThermostatError(
            f"{self.name} was not ready within {timeout:.0f} s; see {self.log_path}"
        )

    def tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1] if lines else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def start(
    name: str, args: list[str], env: dict[str, str], log_dir: Path, port: int
) -> ManagedProcess:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "monitor", *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return ManagedProcess(name, process, log_path, f"http://127.0.0.1:{port}")


def child_environment(**values: str) -> dict[str, str]:
    """The parent's environment without THERMOSTAT_* settings, plus `values`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("THERMOSTAT_")}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    env.update(values)
    return env
