"""Request and response shapes of the feedback API, and the parsing both routes share.

Bodies are parsed here rather than by FastAPI's body injection so that the
token is checked before the body (a caller without a token gets 401, not a
422 about its JSON) and so that one bad item in a batch is one 422 result
instead of failing the whole batch.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    ValidationError,
    field_validator,
)

from monitor.errors import NotFoundError, ValidationFailed
from monitor.http_errors import describe_request_error

SOURCE_PATTERN = r"^[a-z0-9][a-z0-9_.:-]{0,63}$"
MAX_COMMENT = 4000
MAX_BATCH = 1000


class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    generation_id: uuid.UUID
    label: StrictBool | None = None
    # Strict: a number (an integer too), never a boolean or a numeric string.
    score: StrictFloat | None = Field(default=None, ge=0.0, le=1.0, allow_inf_nan=False)
    source: str = Field(default="user", pattern=SOURCE_PATTERN)
    comment: str | None = Field(default=None, max_length=MAX_COMMENT)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=255)

    @field_validator("comment", "idempotency_key")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        # Postgres text cannot hold NUL; refused here so both backends answer alike.
        if value is not None and "\x00" in value:
            raise ValueError("must not contain NUL (\\u0000) characters")
        return value

    @property
    def kind(self) -> Literal["label", "score"]:
        return "label" if self.label is not None else "score"

    @property
    def value(self) -> float:
        if self.label is not None:
            return 1.0 if self.label else 0.0
        assert self.score is not None
        return float(self.score)

    def request_sha256(self) -> str:
        """What "the same body" means for an idempotency key (the key itself excluded)."""
        canonical = {
            "generation_id": str(self.generation_id),
            "kind": self.kind,
            "value": self.value,
            "source": self.source,
            "comment": self.comment,
        }
        encoded = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(encoded.encode()).hexdigest()


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[Any] = Field(min_length=1, max_length=MAX_BATCH)


class FeedbackOut(BaseModel):
    id: uuid.UUID
    generation_id: uuid.UUID
    label: bool | None
    score: float | None
    source: str
    comment: str | None
    idempotency_key: str | None
    created_at: datetime
    # "database": committed; "spool": the database was down, kept on local disk
    # (fsynced) and replayed into the database when it is back.
    stored: Literal["database", "spool"] = "database"


class ItemError(BaseModel):
    message: str
    code: str
    param: str | None = None


class BatchResult(BaseModel):
    index: int
    status: int
    id: uuid.UUID | None = None
    generation_id: uuid.UUID | None = None
    error: ItemError | None = None


class BatchOut(BaseModel):
    items: list[BatchResult]


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ValidationFailed("request body is not valid JSON") from None


def parse_item(data: Any, prefix: str = "") -> FeedbackIn:
    """Validate one feedback object; ValidationFailed names the offending field.

    A `generation_id` that is a string but no UUID names no generation there
    could be: NotFoundError (404, as for any unknown id), once the rest of the
    item is valid.
    """
    try:
        item = FeedbackIn.model_validate(data)
    except ValidationError as exc:
        errors = [dict(e) for e in exc.errors() if not _names_no_generation(data, e)]
        if not errors:  # only the id: valid otherwise (the label/score check below too)?
            parse_item({**data, "generation_id": str(uuid.UUID(int=0))}, prefix)
            name = f"{prefix}.generation_id" if prefix else "generation_id"
            message = f"generation {data['generation_id']!r} not found"
            raise NotFoundError(message, field=name) from None
        message, field = describe_request_error(errors)
        if not field and not isinstance(data, dict):
            message = "expected a JSON object"
        if prefix:
            field = f"{prefix}.{field}" if field else prefix
            message = f"{prefix}.{message}" if ":" in message else f"{prefix}: {message}"
        raise ValidationFailed(message, field=field) from None
    if (item.label is None) == (item.score is None):
        field = "label" if item.label is None else "score"
        name = f"{prefix}.{field}" if prefix else field
        raise ValidationFailed(f"{name}: give exactly one of label or score", field=name)
    return item


def _names_no_generation(data: Any, error: Any) -> bool:
    """Whether `error` is only that `generation_id`, a non-empty string, is no UUID."""
    return (
        tuple(error["loc"]) == ("generation_id",)
        and isinstance(data, dict)
        and isinstance(data.get("generation_id"), str)
        and bool(data["generation_id"].strip())
    )


def parse_batch(data: Any) -> list[Any]:
    try:
        return BatchIn.model_validate(data).items
    except ValidationError as exc:
        message, field = describe_request_error([dict(e) for e in exc.errors()])
        raise ValidationFailed(message, field=field) from None
