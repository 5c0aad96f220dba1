"""Calibration admin routes of the reference server, and their effect on sampling."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

pytest.importorskip("openai")

PROMPT = "The garden was"


def _admin(server: Any) -> str:
    return f"{server.base_url}/admin/calibration"


def _sample(server: Any, task: str, seed: int, **kwargs: Any) -> Any:
    client = server.client(**{"X-Thermostat-Task": task})
    return client.completions.create(
        model=server.model, prompt=PROMPT, max_tokens=12, seed=seed, logprobs=1, **kwargs
    ).choices[0]


@pytest.fixture
def clean_table(server: Any) -> Any:
    httpx.put(_admin(server), json={"tasks": {}}).raise_for_status()
    yield
    httpx.put(_admin(server), json={"tasks": {}}).raise_for_status()


def test_get_put_and_full_table_swap(server: Any, clean_table: Any) -> None:
    assert httpx.get(_admin(server)).json() == {"tasks": {}}
    entry = {"task": "qa", "temperature": 1.7, "version": 3, "apply_to_sampling": False}
    resp = httpx.put(_admin(server), json=entry)
    assert resp.status_code == 200
    want_qa = {"temperature": 1.7, "version": 3, "apply_to_sampling": False}
    assert resp.json() == {"tasks": {"qa": want_qa}}
    httpx.put(_admin(server), json={"task": "math", "temperature": 0.8, "version": None})
    assert set(httpx.get(_admin(server)).json()["tasks"]) == {"qa", "math"}
    table = {"tasks": {"mc": {"temperature": 2.0, "version": 1, "apply_to_sampling": True}}}
    assert httpx.put(_admin(server), json=table).json() == table
    assert httpx.get(_admin(server)).json() == table


@pytest.mark.parametrize(
    "body",
    [
        {"task": "qa", "temperature": 0},
        {"task": "qa", "temperature": -1.0},
        {"task": "Bad Name", "temperature": 1.0},
        {"task": "qa"},
        {"tasks": {"ok": {"temperature": "hot"}}},
        {"tasks": {"UPPER": {"temperature": 1.0}}},
        [1, 2],
    ],
)
def test_put_rejects_invalid_bodies(server: Any, clean_table: Any, body: Any) -> None:
    resp = httpx.put(_admin(server), json=body)
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["message"]
    assert httpx.get(_admin(server)).json() == {"tasks": {}}


def test_apply_to_sampling_takes_effect_on_next_request(server: Any, clean_table: Any) -> None:
    greedy = _sample(server, "greedy-task", seed=0, temperature=0)
    seeds = range(1, 7)
    hot = [_sample(server, "greedy-task", seed=s, temperature=1.0).text for s in seeds]
    assert any(text != greedy.text for text in hot), "plain sampling should vary"

    # A tiny calibration temperature sharpens sampling to the argmax.
    entry = {"task": "greedy-task", "temperature": 1e-3, "apply_to_sampling": True}
    httpx.put(_admin(server), json=entry).raise_for_status()
    for seed in seeds:
        sharp = _sample(server, "greedy-task", seed=seed, temperature=1.0)
        assert sharp.text == greedy.text
        # Sampling changed; reported logprobs did not (they stay raw).
        assert sharp.logprobs.token_logprobs == pytest.approx(
            greedy.logprobs.token_logprobs, abs=1e-6
        )
    # Other tasks are untouched by this task's entry.
    other = [_sample(server, "other-task", seed=s, temperature=1.0).text for s in seeds]
    assert other == hot

    # Stored but not applied: sampling goes back to normal on the next request.
    entry["apply_to_sampling"] = False
    httpx.put(_admin(server), json=entry).raise_for_status()
    again = [_sample(server, "greedy-task", seed=s, temperature=1.0).text for s in seeds]
    assert again == hot


@pytest.mark.parametrize("name", ["quiz\n", "q" * 64 + "\n"])
def test_task_names_with_a_trailing_newline_are_refused(name: str) -> None:
    """`re.match` lets `$` match before a final newline; the table must not."""
    from pydantic import ValidationError

    from monitor.serving.model_server.calibration import CalibrationTable, TaskCalibrationUpdate

    with pytest.raises(ValidationError, match="invalid task name"):
        CalibrationTable.model_validate({"tasks": {name: {"temperature": 1.5}}})
    with pytest.raises(ValidationError):
        TaskCalibrationUpdate.model_validate({"task": name, "temperature": 1.5})
    table = CalibrationTable.model_validate({"tasks": {name.strip(): {"temperature": 1.5}}})
    assert list(table.tasks) == [name.strip()]
