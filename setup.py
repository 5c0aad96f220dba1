"""The optional native scanner, and the root folders bundled into the package.

Everything else is in pyproject.toml.

`optional=True`: where no C compiler is available the build still succeeds and
`monitor.proxy.capture` uses its pure-Python path (same results, slower).

`alerts/` and `migrations/` stay at the repository root (a checkout and an
editable install use them there); a built wheel carries copies as
`monitor/_alerts/` and `monitor/_migrations/`, where `default_rules_path()` and
`migrations_dir()` look when the root folders are not beside the package.
MANIFEST.in puts the root folders in the sdist so a wheel built from it has them.
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_py import build_py
from setuptools.errors import FileError

ROOT = Path(__file__).resolve().parent

# Root folder -> folder inside the `monitor` package of a built wheel.
BUNDLED = {"alerts": "_alerts", "migrations": "_migrations"}


def bundled_files() -> list[tuple[Path, str]]:
    """(source file, path relative to `monitor/`) for every bundled file."""
    pairs: list[tuple[Path, str]] = []
    for folder, target in BUNDLED.items():
        source = ROOT / folder
        if not source.is_dir():
            raise FileError(f"{source} is missing: the package would ship without it")
        for path in sorted(source.rglob("*")):
            relative = path.relative_to(source)
            if not path.is_file() or "__pycache__" in relative.parts:
                continue
            if path.suffix in (".pyc", ".pyo"):
                continue
            pairs.append((path, f"{target}/{relative.as_posix()}"))
    return pairs


class BuildPyWithBundledFolders(build_py):
    """build_py that also copies the root `alerts/` and `migrations/` into build_lib.

    Editable installs skip it (they use the root folders); nothing is ever written
    into the source tree.
    """

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        for source, target in self._bundled_outputs():
            self.mkpath(os.path.dirname(target))
            self.copy_file(str(source), target, preserve_mode=False)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = super().get_outputs(include_bytecode)
        if self.editable_mode:
            return outputs
        return [*outputs, *(target for _, target in self._bundled_outputs())]

    def _bundled_outputs(self) -> list[tuple[Path, str]]:
        package = os.path.join(self.build_lib, "monitor")
        return [(source, os.path.join(package, *rel.split("/"))) for source, rel in bundled_files()]


setup(
    cmdclass={"build_py": BuildPyWithBundledFolders},
    ext_modules=[
        Extension(
            "monitor.proxy._logprob_scan",
            ["monitor/proxy/_logprob_scan.c"],
            optional=True,
        )
    ],
)
