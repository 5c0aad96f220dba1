"""A built (non-editable) distribution carries the root `alerts/` and `migrations/`.

The checkout keeps them at the root; setup.py copies them into the package as
`monitor/_alerts/` and `monitor/_migrations/` when building, and MANIFEST.in puts
them in the sdist. Built here offline, through setuptools' PEP 517 backend (what
`pip wheel --no-build-isolation` calls), from a copy of the tree so the checkout
gets no build/ folder: an sdist, then a wheel from that sdist, which then runs
from a folder with no checkout beside it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from tests.deploy.manifests import ROOT

SOURCES = (
    "pyproject.toml",
    "setup.py",
    "MANIFEST.in",
    "README.md",
    "monitor",
    "alerts",
    "migrations",
)


def backend(hook: str, source: Path, out: Path) -> Path:
    """Run one build hook of setuptools.build_meta in `source`; the built file."""
    out.mkdir(parents=True, exist_ok=True)
    code = f"import setuptools.build_meta as b; print(b.{hook}({str(out)!r}))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PIP_NO_INDEX": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out / result.stdout.strip().splitlines()[-1]


def shipped(folder: str) -> list[str]:
    """The root folder's files, as paths relative to it."""
    top = ROOT / folder
    return sorted(
        p.relative_to(top).as_posix()
        for p in top.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    )


def test_sdist_and_wheel_carry_alerts_and_migrations(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "*.egg-info")
    for name in SOURCES:
        path = ROOT / name
        if not path.exists():
            continue
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=ignore)
        else:
            shutil.copy2(path, source / name)

    alerts, migrations = shipped("alerts"), shipped("migrations")
    assert any(name.endswith(".yaml") for name in alerts)
    assert {"env.py", "script.py.mako"} <= set(migrations)
    assert any(name.startswith("versions/") for name in migrations)

    sdist = backend("build_sdist", source, tmp_path / "dist")
    with tarfile.open(sdist) as archive:
        members = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
        archive.extractall(tmp_path / "unpacked", filter="data")
    assert {f"alerts/{name}" for name in alerts} <= members
    assert {f"migrations/{name}" for name in migrations} <= members

    (unpacked,) = (tmp_path / "unpacked").iterdir()
    wheel = backend("build_wheel", unpacked, tmp_path / "wheels")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path / "site")
    assert {f"monitor/_alerts/{name}" for name in alerts} <= names
    assert {f"monitor/_migrations/{name}" for name in migrations} <= names
    assert not any("__pycache__" in name for name in names)
    # Nothing was copied into the trees the builds ran in.
    for tree in (source, unpacked):
        assert not (tree / "monitor" / "_alerts").exists()
        assert not (tree / "monitor" / "_migrations").exists()

    # The installed layout: `monitor` in site-packages, no checkout beside it.
    site = tmp_path / "site"
    env = {k: v for k, v in os.environ.items() if not k.startswith("THERMOSTAT_")}
    env.update(PYTHONPATH=str(site), THERMOSTAT_HOME=str(tmp_path / "home"))
    probe = (
        "import monitor, monitor.db.migrate as m, monitor.alerting.rules as r; "
        "print(monitor.__file__, m.migrations_dir(), r.default_rules_path(), len(r.load_rules()))"
    )

    def python(*args: str) -> subprocess.CompletedProcess[str]:
        """This interpreter, from outside the checkout, with only the unpacked wheel."""
        return subprocess.run(
            [sys.executable, *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    result = python("-c", probe)
    assert result.returncode == 0, result.stderr
    package, found_migrations, found_rules, count = result.stdout.split()
    assert Path(package) == site / "monitor" / "__init__.py"
    assert Path(found_migrations) == site / "monitor" / "_migrations"
    assert Path(found_rules) == site / "monitor" / "_alerts"
    assert int(count) > 0

    upgrade = python("-m", "monitor", "db", "upgrade")
    assert upgrade.returncode == 0, upgrade.stderr
    assert "(head" in upgrade.stdout
