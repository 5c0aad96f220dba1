"""An append-only local spool for rows the database could not take right now.

While the database is down the recorder's writer (and the feedback API) append
rows here instead of losing them; the writer replays them, oldest first, once
the database is back. Format, per record: a little-endian header of payload
length and CRC-32, then a msgpack payload `{"k": kind, "r": row}`. Every
append is fsynced before it returns, which is what lets the feedback API
acknowledge a spooled write. A torn or corrupt tail (a crash mid-append) ends
the segment's readable records; it never poisons what follows, because after
a restart appends go to a fresh segment.

Segments (`segment-<seq>.spool`) are rotated when replay starts, so the files
being replayed are immutable while new rows keep arriving in a new one; a
segment is deleted only after its rows are committed. Replay inserts with
ON CONFLICT DO NOTHING, so a crash between commit and delete replays harmlessly.

One process at a time: the sequence numbers are read once at start and replay
deletes whole segments, so two processes on one folder would overwrite and
delete each other's rows. `claim_spool` takes an exclusive `flock` on the
folder's `.lock` for as long as this process runs a recorder (the OS drops it
when the process dies); another process waits a while (a restart overlapping
its predecessor's shutdown) and is then refused.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from monitor.errors import ThermostatError

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<II")  # payload length, crc32(payload)
_MAX_RECORD = 256 * 1024 * 1024
SEGMENT_MAX_BYTES = 16 * 1024 * 1024
GENERATION = "generation"
FEEDBACK = "feedback"

Entry = tuple[str, dict[str, Any]]

LOCK_NAME = ".lock"
_CLAIM_POLL_S = 0.1


class SpoolInUse(ThermostatError):
    """Another live process holds the spool folder."""

    code = "spool_in_use"


@dataclass(slots=True)
class _Held:
    fd: int
    claims: int


# This process's locks, by resolved folder: flock conflicts between two open
# files even within one process, so a second claim here (the serve pre-check,
# then the recorder; or several apps in one test process) shares the first.
_held: dict[Path, _Held] = {}
_held_lock = threading.Lock()


class SpoolClaim:
    """One claim on a spool folder; the lock goes when this process's last claim does."""

    def __init__(self, key: Path) -> None:
        self.directory = key
        self._released = False

    def release(self) -> None:
        with _held_lock:
            if self._released:
                return
            self._released = True
            held = _held[self.directory]
            held.claims -= 1
            if held.claims == 0:
                del _held[self.directory]
                fcntl.flock(held.fd, fcntl.LOCK_UN)
                os.close(held.fd)


def claim_spool(directory: Path, wait_s: float) -> SpoolClaim:
    """Lock `directory` for this process, waiting up to `wait_s` for another to let go.

    Raises `SpoolInUse` (one line, what to do) if another process still holds it.
    """
    directory.mkdir(parents=True, exist_ok=True)
    key = directory.resolve()
    with _held_lock:
        held = _held.get(key)
        if held is not None:
            held.claims += 1
        else:
            _held[key] = _Held(_lock(key, wait_s), 1)
    return SpoolClaim(key)


def _lock(directory: Path, wait_s: float) -> int:
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise SpoolInUse(
                        f"another thermostat process is using the spool at {directory}; "
                        "give each api process its own THERMOSTAT_HOME"
                    ) from None
                time.sleep(_CLAIM_POLL_S)
    except BaseException:
        os.close(fd)
        raise


@dataclass(frozen=True, slots=True)
class SpooledFeedback:
    """What a repeated idempotency key must answer while its feedback is only spooled."""

    id: uuid.UUID
    request_sha256: str | None
    row: dict[str, Any]


class Spool:
    """Thread-safe: the writer thread and request threads append concurrently.

    Not process-safe by itself: whoever reads or writes a folder holds
    `claim_spool` on it first (the recorder does).
    """

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._encoder = msgspec.msgpack.Encoder()
        self._active: Path | None = None
        self._active_fd: int | None = None
        self._active_bytes = 0
        self._bytes = 0
        # Ids whose rows sit in the spool: feedback for them is accepted, and a
        # repeated idempotency key answers from here until the rows are replayed.
        self._generation_ids: set[uuid.UUID] = set()
        self._feedback_keys: dict[str, SpooledFeedback] = {}
        self.directory.mkdir(parents=True, exist_ok=True)
        self._next_seq = 1 + max((_seq(p) for p in self._segments()), default=0)
        self._recover()

    # --- state -----------------------------------------------------------------

    @property
    def bytes(self) -> int:
        return self._bytes

    def has_data(self) -> bool:
        return self._bytes > 0

    def holds_generation(self, generation_id: uuid.UUID) -> bool:
        with self._lock:
            return generation_id in self._generation_ids

    def feedback_for_key(self, key: str) -> SpooledFeedback | None:
        with self._lock:
            return self._feedback_keys.get(key)

    # --- appending -------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> int:
        """Append and fsync; return how many fit (the rest exceed `max_bytes`)."""
        frames: list[bytes] = []
        for kind, row in entries:
            payload = self._encoder.encode({"k": kind, "r": row})
            frames.append(_HEADER.pack(len(payload), zlib.crc32(payload)) + payload)
        with self._lock:
            kept = 0
            size = 0
            for frame in frames:
                if self._bytes + size + len(frame) > self.max_bytes:
                    break
                size += len(frame)
                kept += 1
            if kept == 0:
                return 0
            fd = self._open_active()
            os.write(fd, b"".join(frames[:kept]))
            os.fsync(fd)
            self._active_bytes += size
            self._bytes += size
            for kind, row in entries[:kept]:
                self._index(kind, row)
            if self._active_bytes >= SEGMENT_MAX_BYTES:
                self._close_active()
            return kept

    def _open_active(self) -> int:
        if self._active_fd is None:
            self._active = self.directory / f"segment-{self._next_seq:012d}.spool"
            self._next_seq += 1
            self._active_fd = os.open(self._active, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._active_bytes = 0
            _fsync_dir(self.directory)
        return self._active_fd

    def _close_active(self) -> None:
        if self._active_fd is not None:
            os.close(self._active_fd)
        self._active_fd = None
        self._active = None
        self._active_bytes = 0

    def _index(self, kind: str, row: dict[str, Any]) -> None:
        if kind == GENERATION:
            self._generation_ids.add(_uuid(row["id"]))
        elif kind == FEEDBACK and row.get("idempotency_key"):
            self._feedback_keys[row["idempotency_key"]] = SpooledFeedback(
                _uuid(row["id"]), row.get("request_sha256"), row
            )

    # --- replaying -------------------------------------------------------------

    def sealed_segments(self) -> list[Path]:
        """Close the active segment and list every segment, oldest first."""
        with self._lock:
            self._close_active()
            return self._segments()

    def read(self, path: Path) -> list[Entry]:
        return list(_read_segment(path))

    def discard(self, path: Path, entries: Sequence[Entry]) -> None:
        """Forget a segment whose rows are committed."""
        with self._lock:
            size = path.stat().st_size if path.exists() else 0
            path.unlink(missing_ok=True)
            self._bytes = max(0, self._bytes - size)
            for kind, row in entries:
                if kind == GENERATION:
                    self._generation_ids.discard(_uuid(row["id"]))
                elif kind == FEEDBACK and row.get("idempotency_key"):
                    self._feedback_keys.pop(row["idempotency_key"], None)

    def close(self) -> None:
        with self._lock:
            self._close_active()

    # --- helpers ---------------------------------------------------------------

    def _segments(self) -> list[Path]:
        return sorted(self.directory.glob("segment-*.spool"), key=_seq)

    def _recover(self) -> None:
        """Index what a previous process left behind (it is replayed like any other)."""
        for path in self._segments():
            self._bytes += path.stat().st_size
            for kind, row in _read_segment(path):
                self._index(kind, row)


def _read_segment(path: Path) -> Iterator[Entry]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, crc = _HEADER.unpack_from(data, offset)
        start = offset + _HEADER.size
        payload = data[start : start + length]
        if length > _MAX_RECORD or len(payload) != length or zlib.crc32(payload) != crc:
            log.warning("spool %s: corrupt or torn record at byte %d; rest ignored", path, offset)
            return
        try:
            entry = msgspec.msgpack.decode(payload)
            yield str(entry["k"]), dict(entry["r"])
        except (msgspec.DecodeError, KeyError, TypeError):
            log.warning("spool %s: undecodable record at byte %d; skipped", path, offset)
        offset = start + length
    if offset != len(data):
        log.warning("spool %s: truncated record at byte %d ignored", path, offset)


def _seq(path: Path) -> int:
    try:
        return int(path.stem.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return 0


def _uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def _fsync_dir(directory: Path) -> None:
    """Make a new segment's directory entry durable too."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
