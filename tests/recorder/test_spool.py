"""The spool file format: fsynced appends, torn tails, size limit, segments."""

from __future__ import annotations

import uuid
from pathlib import Path

from monitor.proxy.spool import FEEDBACK, GENERATION, Spool


def _row(i: int) -> dict[str, object]:
    return {"id": str(uuid.uuid4()), "task": "qa", "n": i, "blob": bytes([i % 256]) * 10}


def test_entries_round_trip_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    rows = [_row(i) for i in range(5)]
    assert spool.append([(GENERATION, r) for r in rows]) == 5
    [segment] = spool.sealed_segments()
    entries = spool.read(segment)
    assert [(k, r["n"], r["blob"]) for k, r in entries] == [
        (GENERATION, r["n"], r["blob"]) for r in rows
    ]
    assert spool.bytes == segment.stat().st_size
    spool.discard(segment, entries)
    assert not spool.has_data() and not segment.exists()


def test_torn_and_corrupt_tails_are_tolerated(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append([(GENERATION, _row(i)) for i in range(3)])
    spool.close()
    [segment] = sorted(tmp_path.glob("segment-*.spool"))
    with segment.open("ab") as handle:
        handle.write(b"\x40\x00\x00\x00\x01\x02")  # a header promising 64 bytes, then a crash

    reopened = Spool(tmp_path, max_bytes=1 << 20)
    assert [r["n"] for _, r in reopened.read(segment)] == [0, 1, 2]
    reopened.append([(FEEDBACK, {"id": str(uuid.uuid4()), "idempotency_key": "k1"})])
    segments = reopened.sealed_segments()
    assert len(segments) == 2  # new appends never follow a torn tail
    assert reopened.feedback_for_key("k1") is not None

    data = bytearray(segments[0].read_bytes())
    data[12] ^= 0xFF  # corrupt the first record's payload: nothing after it is trusted
    segments[0].write_bytes(bytes(data))
    assert reopened.read(segments[0]) == []


def test_max_bytes_keeps_what_fits(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1024)
    kept = spool.append([(GENERATION, _row(i)) for i in range(100)])
    assert 0 < kept < 100
    assert spool.bytes <= 1024
    assert spool.append([(GENERATION, _row(0))]) == 0
