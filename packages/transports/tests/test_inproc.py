"""The in-process ring (its Channel behaviour is in test_channel.py)."""

from __future__ import annotations

import gc
import weakref

import pytest

from raycg.transports import InprocRing


class Value:
    pass


def test_values_are_passed_by_reference() -> None:
    ring = InprocRing(2, 2)
    writer, r0, r1 = ring.writer(), ring.reader(0), ring.reader(1)
    v = Value()
    writer.write(v)
    assert r0.read() is v and r1.read() is v
    ring.close()


def test_ring_drops_a_value_once_every_reader_has_it() -> None:
    ring = InprocRing(2, 2)
    writer, r0, r1 = ring.writer(), ring.reader(0), ring.reader(1)
    writer.write(Value())
    ref = weakref.ref(r0.read())
    gc.collect()
    assert ref() is not None  # reader 1 has not read it yet
    r1.read()
    gc.collect()
    assert ref() is None


def test_close_drops_unread_values() -> None:
    ring = InprocRing(2, 1)
    v = Value()
    ring.writer().write(v)
    ref = weakref.ref(v)
    del v
    ring.close()
    assert ref() is None


@pytest.mark.parametrize(("nslots", "nreaders"), [(0, 1), (1, 0)])
def test_needs_a_slot_and_a_reader(nslots: int, nreaders: int) -> None:
    with pytest.raises(ValueError):
        InprocRing(nslots, nreaders)


def test_reader_index_out_of_range() -> None:
    with pytest.raises(ValueError, match="out of range"):
        InprocRing(1, 2).reader(2)
