"""A throwaway PostgreSQL 15 cluster for fault tests: stop and start it at will.

`initdb` into a temp dir, a free loopback port, run as the `postgres` OS user
when the tests run as root. Durability is switched off (fsync, full pages):
these tests stop the server, they never need it to survive a power cut.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.servers import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")


class Cluster:
    def __init__(self, root: Path, port: int) -> None:
        self.root, self.port = root, port
        self.data = root / "data"
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *args: str, timeout: float = 30) -> None:
        subprocess.run([*self.as_postgres, *args], check=True, capture_output=True, timeout=timeout)

    def init(self) -> None:
        if self.as_postgres:
            shutil.chown(self.root, user="postgres", group="postgres")
        self._run(
            str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
            "--no-sync", "--no-instructions",
        )  # fmt: skip

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options,
            "-l", str(self.root / "log"), "-w", "-t", "20", "start",
        )  # fmt: skip

    def stop(self) -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"


@contextmanager
def running_cluster() -> Iterator[Cluster]:
    """A started cluster, stopped (immediately) and deleted afterwards; skips without pg 15."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip("PostgreSQL 15 server binaries are not installed")
    root = Path(tempfile.mkdtemp(prefix="thermostat-pg-", dir="/tmp"))
    root.chmod(0o755)
    cluster = Cluster(root, free_port())
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        if (cluster.data / "postmaster.pid").exists():
            subprocess.run(
                [*cluster.as_postgres, str(PG_BIN / "pg_ctl"), "-D", str(cluster.data),
                 "-m", "immediate", "-w", "stop"],
                capture_output=True, timeout=30, check=False,
            )  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)
