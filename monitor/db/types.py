"""Column types that behave the same on SQLite and Postgres."""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Dialect, LargeBinary, TypeDecorator, Uuid
from sqlalchemy.dialects.postgresql import BYTEA, JSONB


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes; naive values are refused, not guessed.

    SQLite has no timezone type: values are stored as UTC and made aware again
    on the way out, so code never compares naive with aware datetimes.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r} refused: use an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONType = JSON().with_variant(JSONB(), "postgresql")
BinaryType = LargeBinary().with_variant(BYTEA(), "postgresql")
UUIDType = Uuid(as_uuid=True)


def utcnow() -> datetime:
    return datetime.now(UTC)


def uuid7(unix_ms: int | None = None) -> uuid.UUID:
    """A time-ordered UUID (RFC 9562 v7): inserts append to the primary-key index.

    Python 3.11 has no uuid7; the layout is 48 bits of Unix milliseconds (now,
    unless `unix_ms` is given), the version, then random bits.
    """
    millis = time.time_ns() // 1_000_000 if unix_ms is None else unix_ms
    rand = int.from_bytes(os.urandom(10), "big")
    value = (millis & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= (rand >> 68) << 64  # 12 random bits
    value |= 0b10 << 62  # RFC 4122 variant
    value |= rand & ((1 << 62) - 1)
    return uuid.UUID(int=value)


def uuid7_unix_ms(value: uuid.UUID) -> int | None:
    """When a v7 id was made, in Unix milliseconds; None for any other version."""
    return value.int >> 80 if value.version == 7 else None


def storable_text(value: str) -> str:
    """Postgres text and JSONB cannot hold NUL: it becomes U+FFFD, on both backends."""
    return value.replace("\x00", "\ufffd")


def as_json(value: Any) -> Any:
    """JSON columns hold plain data; this normalises tuples, numpy scalars and NULs."""
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, dict):
        return {storable_text(str(k)): as_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [as_json(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value
