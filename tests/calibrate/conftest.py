"""One tiny model per test session for the `thermostat calibrate` tests.

Training it takes 15-90 s on a loaded CPU, so every test here shares one build
(the builder is keyed by its recipe, so the directory is reused as is).
The build is the session-wide `tiny_model_path` of tests/conftest.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.fixture(scope="session")
def tiny_model(tiny_model_path: Path) -> Path:
    return tiny_model_path
