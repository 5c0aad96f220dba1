"""deploy/Dockerfile: the two targets, and the /app layout the code relies on.

No image is built here. The build context is rebuilt in a temporary folder
from deploy/Dockerfile.dockerignore (what `COPY . /app` receives) and run from
there the way the image's editable install runs it: the package imported from
/app, so that `migrations/` and `alerts/` must sit beside `monitor/`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from monitor.cli import build_parser
from tests.deploy.manifests import DEPLOY, ROOT

DOCKERFILE = DEPLOY / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def stages() -> dict[str, list[tuple[str, str]]]:
    result: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for instruction, args in instructions():
        if instruction == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else words[0]
            current = result.setdefault(name, [])
        current.append((instruction, args))
    return result


def chain(name: str) -> list[tuple[str, str]]:
    """A stage's instructions with those of the stages it is built FROM, base first."""
    all_stages = stages()
    own = all_stages[name]
    parent = own[0][1].split()[0]
    inherited = chain(parent) if parent in all_stages else []
    copied = [
        step
        for instruction, args in own
        if instruction == "COPY" and (m := re.match(r"--from=(\S+)", args))
        for step in chain(m.group(1))
    ]
    return [*inherited, *copied, *own]


@pytest.mark.parametrize("target", ["api", "worker"])
def test_targets_run_thermostat_as_a_non_root_user_with_a_health_check(target: str) -> None:
    steps = stages()[target]
    final = {instruction: args for instruction, args in steps}
    assert json.loads(final["ENTRYPOINT"]) == ["thermostat"]
    argv = json.loads(final["CMD"])
    parsed = build_parser().parse_args(argv)
    assert parsed.command == "serve" and parsed.role == target and parsed.port == 8080
    assert f"{parsed.port}" in final["EXPOSE"].split()
    user = final["USER"].split(":")[0]
    assert user not in {"root", "0"}
    assert "HEALTHCHECK_URL" in final["HEALTHCHECK"]
    env = " ".join(args for instruction, args in chain(target) if instruction == "ENV")
    match = re.search(r"HEALTHCHECK_URL=(\S+)", env)
    assert match and match.group(1) == f"http://127.0.0.1:{parsed.port}/healthz"
    assert re.search(rf"useradd .*--uid {user}\b", " ".join(a for _, a in chain(target)))


def test_only_the_worker_image_carries_torch() -> None:
    api_installs = [
        args for instruction, args in chain("api") if instruction == "RUN" and "pip install" in args
    ]
    assert any("pip install -e /app" in args for args in api_installs)
    assert not any("torch" in args or "/app[" in args for args in api_installs)
    worker_steps = " ".join(args for _, args in chain("worker"))
    match = re.search(r"ARG TORCH_VERSION=(\S+)", "\n".join(f"{i} {a}" for i, a in chain("worker")))
    assert match, "the worker image pins torch with a build argument"
    setup_pin = re.search(r"torch==(\S+)", (ROOT / ".ci" / "setup").read_text())
    assert setup_pin and setup_pin.group(1) == match.group(1)
    assert "TORCH_INDEX_URL" in worker_steps and '/app[worker,model]"' in worker_steps


def ignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(excluded?, regex) per line of the Dockerfile's .dockerignore, Docker's glob syntax."""
    rules = []
    for raw in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        rules.append((not negated, re.compile(regex + "$")))
    return rules


def in_context(relative: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for exclude, regex in rules:
        if any(regex.match(prefix) for prefix in prefixes):
            excluded = exclude
    return not excluded


def test_the_api_image_builds_the_c_scanner_and_fails_without_it() -> None:
    """setup.py's extension is optional (a build without a compiler still works, on the
    slower Python path); the image must not silently end up there."""
    steps = [args for instruction, args in chain("api") if instruction == "RUN"]
    compiler = next(i for i, args in enumerate(steps) if "install" in args and " gcc" in args)
    install = next(i for i, args in enumerate(steps) if "pip install -e /app" in args)
    assert compiler < install
    assert "import monitor.proxy._logprob_scan" in steps[install]


def test_build_context_holds_the_source_and_nothing_local() -> None:
    rules = ignore_rules()
    for wanted in (
        "pyproject.toml",
        "setup.py",
        "README.md",
        "monitor/cli.py",
        "monitor/proxy/_logprob_scan.c",
        "migrations/env.py",
    ):
        assert in_context(wanted, rules), wanted
    for unwanted in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/conftest.py",
        "monitor/__pycache__/x.pyc",
        "monitor/proxy/_logprob_scan.cpython-311-x86_64-linux-gnu.so",  # built for the host
    ):
        assert not in_context(unwanted, rules), unwanted
    assert in_context("alerts/rules.yaml", rules)


def test_migrations_resolve_and_run_from_the_images_app_layout(tmp_path: Path) -> None:
    app = tmp_path / "app"
    rules = ignore_rules()
    copied = 0
    # Top-level folders outside the context are skipped whole (no rule re-includes a child).
    tops = [top for top in ROOT.iterdir() if in_context(top.name, rules)]
    for path in [*tops, *(p for top in tops if top.is_dir() for p in top.rglob("*"))]:
        relative = path.relative_to(ROOT).as_posix()
        if path.is_file() and in_context(relative, rules):
            target = app / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            copied += 1
    assert copied and (app / "migrations" / "env.py").is_file()

    env = {k: v for k, v in os.environ.items() if not k.startswith("THERMOSTAT_")}
    env.update(
        PYTHONPATH=str(app),
        THERMOSTAT_HOME=str(tmp_path / "home"),
        THERMOSTAT_DATABASE_URL=f"sqlite:///{tmp_path / 'image.db'}",
    )
    probe = (
        "import monitor, monitor.db.migrate as m; "
        "print(monitor.__file__); print(m.migrations_dir())"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    package, migrations = result.stdout.split()
    assert Path(package) == app / "monitor" / "__init__.py"
    assert Path(migrations) == app / "migrations"
    if (ROOT / "alerts").is_dir():
        assert sorted(p.name for p in (app / "alerts").iterdir()) == sorted(
            p.name for p in (ROOT / "alerts").iterdir() if p.is_file()
        )

    upgrade = subprocess.run(
        [sys.executable, "-m", "monitor", *shlex.split("db upgrade")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert upgrade.returncode == 0, upgrade.stderr
    assert "(head" in upgrade.stdout
