"""Incremental server-sent-events parser for the upstream byte stream.

The proxy relays streams chunk by chunk (CONTRACT: "no buffering"), but TCP
reads cut events anywhere. ``SSEParser.feed`` takes whatever bytes arrived and
returns the events completed so far, each with its ``data`` payload (the
``data:`` lines joined, or None for comments and data-less events) and the
exact raw bytes, so an event the proxy does not modify is forwarded byte for
byte. At most one incomplete event is held back.

Events end at a blank line; lines end in ``\\n``, ``\\r\\n`` or ``\\r`` (the
spec allows all three). The common upstream form, ``data: {...}\\n\\n`` with no
``\\r`` at all, takes a ``bytes.find`` fast path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A line terminator followed by another one. A lone "\r" counts only when not
# followed by "\n", so "\r\n" is never taken for two line ends.
_BLANK_LINE = re.compile(rb"(?:\r\n|\n|\r(?!\n))(?:\r\n|\n|\r(?!\n))")
_ENDS_WITH_BLANK_LINE = re.compile(rb"(?:\r\n|\n|\r(?!\n))(?:\r\n|\n|\r(?!\n))\Z")
_LINE_SPLIT = re.compile(rb"\r\n|\n|\r")
DONE = b"[DONE]"


@dataclass(slots=True, frozen=True)
class SSEEvent:
    """One complete event: ``raw`` as received (terminator included), ``data`` payload."""

    raw: bytes
    data: bytes | None
    event: str | None = None

    @property
    def is_done(self) -> bool:
        return self.data is not None and self.data.strip() == DONE


def _parse_fields(block: bytes) -> tuple[bytes | None, str | None]:
    """``data`` (lines joined by \\n) and ``event`` of one event block without its terminator."""
    if block.startswith(b"data: ") and b"\n" not in block and b"\r" not in block:
        return block[6:], None  # the usual single-line event
    data: list[bytes] = []
    event: str | None = None
    for line in _LINE_SPLIT.split(block):
        if not line or line[:1] == b":":
            continue  # blank or comment
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            data.append(value)
        elif name == b"event":
            event = value.decode("utf-8", "replace")
    return (b"\n".join(data) if data else None), event


def ended(raw: bytes) -> bytes:
    """``raw`` with the blank line that dispatches an event, added after its last line
    end (in the same style) where the stream stopped before it."""
    if not raw or _ENDS_WITH_BLANK_LINE.search(raw):
        return raw
    return raw + (b"\r\n" if raw.endswith(b"\r\n") else raw[-1:])


def encode_event(data: bytes) -> bytes:
    """A one-line ``data:`` event (JSON payloads never contain raw newlines)."""
    return b"data: " + data + b"\n\n"


class SSEParser:
    """Feed raw bytes, get complete events; ``close()`` returns what is left over."""

    __slots__ = ("_buf", "_crlf")

    def __init__(self) -> None:
        self._buf = b""
        self._crlf = False  # a "\r" was seen: use the general matcher from now on

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if not chunk:
            return []
        buf = self._buf + chunk if self._buf else bytes(chunk)
        if not self._crlf and b"\r" in chunk:
            self._crlf = True
        events: list[SSEEvent] = []
        pos = 0
        if not self._crlf:
            while True:
                i = buf.find(b"\n\n", pos)
                if i < 0:
                    break
                block = buf[pos:i]
                data, event = _parse_fields(block)
                events.append(SSEEvent(buf[pos : i + 2], data, event))
                pos = i + 2
        else:
            while True:
                m = _BLANK_LINE.search(buf, pos)
                # A trailing "\r" may be the first half of "\r\n": wait for more.
                if m is None or (m.end() == len(buf) and buf.endswith(b"\r")):
                    break
                data, event = _parse_fields(buf[pos : m.start()])
                events.append(SSEEvent(buf[pos : m.end()], data, event))
                pos = m.end()
        self._buf = buf[pos:]
        return events

    @property
    def pending(self) -> int:
        """Bytes held back: the start of an event not yet complete."""
        return len(self._buf)

    def close(self) -> list[SSEEvent]:
        """End of stream: a complete last event missing only its blank line is still
        returned with its data; a cut one (no line end at all) comes back with
        ``data=None`` so its bytes can still be forwarded."""
        buf, self._buf = self._buf, b""
        if not buf:
            return []
        if buf.endswith((b"\n", b"\r")):
            data, event = _parse_fields(buf.rstrip(b"\r\n"))
            return [SSEEvent(buf, data, event)]
        return [SSEEvent(buf, None, None)]
