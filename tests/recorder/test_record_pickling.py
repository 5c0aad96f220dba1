"""A `GenerationRecord` crosses to the writer process by pickle, its arrays as raw bytes.

Whatever the record holds, the child must see the same record: the row it packs
from the copy must be the row the parent would have packed.
"""

from __future__ import annotations

import pickle
from dataclasses import fields
from multiprocessing.reduction import ForkingPickler

import numpy as np
import pytest

from monitor.proxy.records import GenerationRecord, generation_row
from tests.recorder.helpers import make_record


def _round_trip(record: GenerationRecord) -> GenerationRecord:
    copy = pickle.loads(ForkingPickler.dumps(record))
    assert isinstance(copy, GenerationRecord)
    return copy


def _assert_same(copy: GenerationRecord, record: GenerationRecord) -> None:
    for f in fields(GenerationRecord):
        mine, theirs = getattr(copy, f.name), getattr(record, f.name)
        if isinstance(theirs, np.ndarray):
            assert isinstance(mine, np.ndarray), f.name
            assert mine.dtype == theirs.dtype and mine.shape == theirs.shape, f.name
            np.testing.assert_array_equal(mine, theirs, err_msg=f.name)
        else:
            assert mine == theirs and type(mine) is type(theirs), f.name


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"prompt": [{"role": "user", "content": "hi"}], "sampling": {"temperature": 0.7}},
        {"chosen": None, "top": None, "chosen_rank": None},
        {"n": 0},
        {"n": 200, "k": 20},
        # a view that is not contiguous, float64 and -inf: kept as they are
        {"top": np.full((4, 5), -np.inf)[:, ::-1], "chosen": np.arange(4.0)},
    ],
)
def test_a_pickled_record_is_the_same_record(overrides: dict[str, object]) -> None:
    record = make_record(**overrides)  # type: ignore[arg-type]
    copy = _round_trip(record)
    _assert_same(copy, record)
    assert generation_row(copy) == generation_row(record)


def test_pickled_arrays_are_raw_bytes_not_numpy_reductions() -> None:
    record = make_record(n=200, k=5)
    data = ForkingPickler.dumps(record)
    assert b"numpy" not in bytes(data)  # no array (or dtype) object was pickled
    arrays = sum(a.nbytes for a in (record.chosen, record.top, record.chosen_rank))  # type: ignore[union-attr]
    assert len(data) < arrays + 1_000
