"""The ring's C hot path (_native*.c) and what it decides: which region a value goes to,
how long a reader spins, and the zero-copy pins.

The conformance suite (test_channel.py) already runs every plain value through the C
path and every other value through the Python path; these tests pin down the rest.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest
from transports_testing import Call, Peer, big_array

from raycg.transports import ChannelBroken, ChannelTimeout, ShmRing, _native
from raycg.transports._shm_ring import _LINE, _SLOT_RECORD, _WRITING

pytestmark = pytest.mark.timeout(60)


def record_offset(writer: object, seq: int) -> int:
    """Where value ``seq``'s bytes lie in the data segment (its slot record's offset)."""
    rec = _SLOT_RECORD.unpack_from(
        writer._ctrl.seg.view,  # type: ignore[attr-defined]
        writer._slots_off + _LINE * (seq % writer.spec.nslots),  # type: ignore[attr-defined]
    )
    assert rec[0] == seq
    return int(rec[5])


def test_one_value_in_flight_reuses_one_region() -> None:
    # The most recently freed region is the warmest: with each value read (and dropped)
    # before the next is written, every value lands in the same place. (Plain values go
    # through the C path, which skips the readers' cache lines and may rotate: a few
    # bytes each, they stay in cache either way.)
    value = big_array(1 << 18, 3)
    with ShmRing(4, 1, name="lifo") as ring:
        writer, reader = ring.open_writer(), ring.open_reader(0)
        offsets = set()
        for seq in range(12):
            writer.write(value)
            offsets.add(record_offset(writer, seq))
            got = reader.read()
            np.testing.assert_array_equal(got, value)
            del got
        assert len(offsets) == 1
        writer.close()
        reader.close()


def test_held_values_keep_their_regions() -> None:
    # Zero-copy values pin their regions: later values must go elsewhere, whatever
    # order the held values are dropped in.
    with ShmRing(4, 1, name="lifo-pins") as ring:
        writer, reader = ring.open_writer(), ring.open_reader(0)
        expected = {seq: big_array(1 << 17, seq) for seq in range(40)}
        held: dict[int, np.ndarray] = {}
        for seq, value in expected.items():
            writer.write(value, timeout_s=5)
            held[seq] = reader.read()
            if len(held) == 3:  # drop one of the three held: the oldest, then the middle one
                del held[sorted(held)[seq % 2]]
            for s, got in held.items():
                np.testing.assert_array_equal(got, expected[s])
        held.clear()
        writer.close()
        reader.close()


def test_a_second_writer_leaves_unread_values_alone() -> None:
    with ShmRing(3, 1, name="rewriter") as ring:
        first, reader = ring.open_writer(), ring.open_reader(0)
        first.write(big_array(1 << 16, 1))
        first.write("unread too")
        second = ring.open_writer()  # attaches with two values in the ring
        second.write(big_array(1 << 16, 2))
        np.testing.assert_array_equal(reader.read(copy=True), big_array(1 << 16, 1))
        assert reader.read() == "unread too"
        np.testing.assert_array_equal(reader.read(copy=True), big_array(1 << 16, 2))
        second.close()
        reader.close()


def test_plain_values_after_growth() -> None:
    # After a slot grows, the Python path writes until the old generation is freed,
    # then the C path takes over again, in the new generation.
    with ShmRing(2, 1, slot_bytes=4096, name="regrow") as ring:
        writer, reader = ring.open_writer(), ring.open_reader(0)
        for i in range(6):
            writer.write(i)
            assert reader.read() == i
        writer.write(b"x" * 100_000)  # grows
        assert writer._core.fast is False  # the old generation is not freed yet
        assert reader.read() == b"x" * 100_000
        for i in range(6):
            writer.write(i)
            assert reader.read() == i
        assert writer._core.fast is True
        writer.close()
        reader.close()


def test_reader_spins_through_a_copy_but_not_forever() -> None:
    # A writer that says it is copying value #0, then never publishes it (killed
    # mid-copy): the reader spins at most WRITING_SPIN_MAX_NS, then sleeps and times out.
    with ShmRing(1, 1, name="writing") as ring:
        writer, reader = ring.open_writer(), ring.open_reader(0)
        writer._ctrl.q[_WRITING // 8] = 1  # "copying value #0"
        t0 = time.monotonic()
        assert reader._core.spin() is False
        spun_s = time.monotonic() - t0
        assert spun_s >= _native.LAYOUT["WRITING_SPIN_MAX_NS"] * 1e-9
        with pytest.raises(ChannelTimeout):
            reader.read(timeout_s=0.2)
        writer.close()
        reader.close()


def test_writer_killed_mid_copy_is_noticed() -> None:
    # The writer said it was copying value #0 (its header line) and died: the reader
    # spins out its bound, sleeps, and finds the writer dead.
    with ShmRing(1, 1, name="midcopy") as ring, Peer(ring.spec, "writer") as writer:
        reader = ring.open_reader(0)
        reader._ctrl.q[_WRITING // 8] = 1
        waiting = Call(reader.read).wait_blocked()
        writer.kill()
        with pytest.raises(ChannelBroken, match=rf"writer \(pid {writer.pid}\) died"):
            waiting.outcome()
        reader.close()
        del waiting


def test_spinning_reader_lets_other_threads_run() -> None:
    # Past its first microseconds, a spinning reader releases the GIL: this thread runs
    # Python code while the reader's thread is still spinning.
    with ShmRing(1, 1, name="gil") as ring:
        writer, reader = ring.open_writer(), ring.open_reader(0, spin_s=30.0)
        spinning = Call(reader._core.spin)
        time.sleep(0.1)  # let it start spinning
        ticks, until = 0, time.monotonic() + 0.1
        while time.monotonic() < until:
            ticks += 1  # needs the GIL
        assert spinning.is_alive() and ticks > 100
        writer.write("done")  # ends the spin
        assert spinning.outcome() is True
        writer.close()
        reader.close()


def test_pin_is_a_read_only_view_that_reports_its_death() -> None:
    backing = bytearray(b"0123456789")
    addr = np.frombuffer(backing, np.uint8).ctypes.data
    dead: list[int] = []
    pin = _native.Pin(backing, addr + 2, 5, 42, dead.append)
    view = memoryview(pin)
    assert view.readonly and bytes(view) == b"23456"
    with pytest.raises(TypeError):
        view[0] = 0
    del pin
    assert dead == []  # the view still exports it
    del view
    assert dead == [42]


def test_pin_callback_error_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(seq: int) -> None:
        raise RuntimeError(f"unpin {seq}")

    reported: list[BaseException | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: reported.append(u.exc_value))
    backing = bytearray(8)
    pin = _native.Pin(backing, np.frombuffer(backing, np.uint8).ctypes.data, 8, 7, boom)
    del pin  # the error goes to sys.unraisablehook, never up this frame
    assert [str(e) for e in reported] == ["unpin 7"]


def test_a_reader_woken_from_its_sleep_reads_every_kind_of_value(monkeypatch: pytest.MonkeyPatch) -> None:
    # Past its spin a reader sleeps; woken with the value there, it decodes a plain one in
    # C (try_read again) and leaves any other (buffers, a new generation) to the Python
    # path, the value still unread. Each value below is written while the reader sleeps.
    tries: list[object] = []
    with ShmRing(2, 1, slot_bytes=1 << 16, name="woken") as ring:
        writer, reader = ring.open_writer(), ring.open_reader(0, spin_s=0)
        core = reader._core

        class Counted:  # counts the C path's answers (the core's type is not patchable)
            def __getattr__(self, name: str) -> object:
                return getattr(core, name)

            def __setattr__(self, name: str, value: object) -> None:
                setattr(core, name, value)  # the Python path moves core.next

            def try_read(self) -> object:
                value = core.try_read()
                tries.append(value is _native.MISS)
                return value

        monkeypatch.setattr(reader, "_core", Counted())
        bigger = big_array(1 << 18, 5)  # past the slot: a new generation, and buffers
        for value in (7, "plain", bigger, 8):
            waiting = Call(reader.read).wait_blocked()
            writer.write(value)
            got = waiting.outcome()
            assert np.array_equal(got, value) if isinstance(value, np.ndarray) else got == value
            del got, waiting
        # Each read: the first try misses (nothing there yet); the one after the wake
        # decodes the plain values in C, but the very first (the reader maps the data
        # segment on its first read, in Python) and the array (buffers, a new generation).
        assert tries == [True, True, True, False, True, True, True, False]
        writer.close()
        reader.close()
