"""How a client's request becomes the upstream request, and what to give back.

The sidecar always asks the upstream for `logprobs` with `top_logprobs = K`
(the task's `top_logprobs`), whatever the client asked, and remembers what the
client asked so the response can be stripped or trimmed to exactly that. A
task with `sampling: policy` has its sampling parameters enforced here. Each
request works on its own parsed dict: nothing here is shared between requests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from monitor.config import SamplingMode, TaskConfig, is_valid_task_name

Endpoint = Literal["chat", "completions"]
TASK_HEADER = "x-thermostat-task"
DEFAULT_TASK = "default"
SAMPLING_KEYS = (
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "stop",
    "n",
)


class BadRequest(ValueError):
    """The client's request is malformed; `param` names the field when there is one."""

    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status


@dataclass(slots=True)
class ClientAsk:
    """The logprobs the client asked for: none, or the top `top` alternatives."""

    logprobs: bool
    top: int


@dataclass(slots=True)
class Rewritten:
    body: dict[str, Any]
    task: str
    ask: ClientAsk
    upstream_top: int
    stream: bool
    sampling: dict[str, Any]


def resolve_task(header_value: str | None, body: dict[str, Any]) -> str:
    """Header first, then `metadata.task` (removed before forwarding), else `default`."""
    metadata = body.get("metadata")
    from_body = None
    if isinstance(metadata, dict) and "task" in metadata:
        from_body = metadata.pop("task")
        if not metadata:
            del body["metadata"]
    task = header_value or from_body or DEFAULT_TASK
    if not isinstance(task, str) or not is_valid_task_name(task):
        raise BadRequest(
            f"task {task!r} is not a valid task name (lowercase letters, digits, '_', '.', '-';"
            " at most 64 characters)",
            param="metadata.task" if not header_value else "X-Thermostat-Task",
            status=422,
        )
    return task


def client_ask(body: dict[str, Any], endpoint: Endpoint) -> ClientAsk:
    if endpoint == "chat":
        wanted = body.get("logprobs")
        top = body.get("top_logprobs")
        if wanted not in (None, True, False):
            raise BadRequest("logprobs must be a boolean", param="logprobs")
        if top is not None and (not isinstance(top, int) or isinstance(top, bool) or top < 0):
            raise BadRequest("top_logprobs must be a non-negative integer", param="top_logprobs")
        return ClientAsk(bool(wanted), int(top or 0) if wanted else 0)
    value = body.get("logprobs")
    if value is None or value is False:
        return ClientAsk(False, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadRequest("logprobs must be a non-negative integer", param="logprobs")
    return ClientAsk(True, int(value))


def apply_policy(body: dict[str, Any], config: TaskConfig, temperature_scale: float) -> None:
    """Enforce the task's sampling policy and, if asked, scale temperature by T."""
    if config.sampling == SamplingMode.policy:
        for key, value in config.policy.model_dump(exclude_none=True).items():
            body[key] = value
        if config.policy.max_tokens is not None:
            body.pop("max_completion_tokens", None)
    if config.apply_calibration_to_sampling and temperature_scale != 1.0:
        base = body.get("temperature")
        body["temperature"] = (1.0 if base is None else float(base)) * temperature_scale


def rewrite(
    body: dict[str, Any],
    endpoint: Endpoint,
    task: str,
    config: TaskConfig,
    temperature: float,
) -> Rewritten:
    """Mutates `body` (the request's own parse) into the upstream request."""
    ask = client_ask(body, endpoint)
    upstream_top = max(config.top_logprobs, ask.top)
    if endpoint == "chat":
        body["logprobs"] = True
        body["top_logprobs"] = upstream_top
    else:
        body["logprobs"] = upstream_top
    apply_policy(body, config, temperature)
    stream = bool(body.get("stream"))
    sampling = {key: body[key] for key in SAMPLING_KEYS if body.get(key) is not None}
    return Rewritten(body, task, ask, upstream_top, stream, sampling)
