"""The shared-memory ring across processes: zero copy, torch, growth, pinning.

Faults (killed peers), closing across processes and idle cost: test_shm_ring_faults.py.
"""

from __future__ import annotations

import gc
import os
import re
import threading

import numpy as np
import pytest
from transports_testing import Call, Peer, big_array, digest, mapping_of, open_fds, raycg_mappings

from raycg.transports import ChannelClosed, ShmRing, SlotPinned, ValueNotSerializable

pytestmark = pytest.mark.timeout(60)


def data_generations(name: str) -> set[int]:
    """The data generations of ring ``name`` this process maps."""
    return {int(m.rsplit(".", 1)[1]) for m in raycg_mappings() if m.startswith(f"raycg:{name}.data.")}


@pytest.mark.parametrize("nreaders", [1, 3])
def test_writer_and_readers_in_other_processes(nreaders: int) -> None:
    values = [*range(5), "text", {"k": [1, 2]}, big_array(1 << 18, 1), np.arange(10), None]
    values *= 4  # 40 values through 4 slots: the ring wraps and the writer waits
    with ShmRing(4, nreaders, slot_bytes=4096, name="xproc") as ring:
        readers = [Peer(ring.spec, "reader", i) for i in range(nreaders)]
        for r in readers:
            r.send("read_many", len(values))
        with Peer(ring.spec, "writer") as writer:
            writer.call("write_many", values)
            got = [r.recv() for r in readers]
        for r in readers:
            r.stop()
    assert got == [[digest(v) for v in values]] * nreaders


@pytest.mark.parametrize(
    "value",
    [
        big_array(1 << 20, 2),
        np.asfortranarray(big_array(1 << 17, 3).reshape(128, 128)),
        np.zeros(16384, np.int32),
    ],
    ids=["1MiB-float64", "fortran-order", "64KiB-int32"],
)
def test_large_array_is_read_without_a_copy(value: np.ndarray) -> None:
    with ShmRing(2, 1, name="zerocopy") as ring, Peer(ring.spec, "writer") as writer:
        reader = ring.open_reader(0)
        writer.call("write", {"array": value})
        got = reader.read()["array"]
        np.testing.assert_array_equal(got, value)
        assert got.flags.f_contiguous == value.flags.f_contiguous
        # The array's memory is the ring's data segment, shared with the writer's
        # process: nothing was copied. It is read-only, as other readers see it too.
        assert re.fullmatch(
            r"/memfd:raycg:zerocopy\.data\.\d+ \(deleted\)", mapping_of(got.ctypes.data) or ""
        )
        assert not got.flags.owndata and not got.flags.writeable
        assert got.ctypes.data % 64 == 0
        assert reader.pinned() == [(0, f"numpy.ndarray(shape={value.shape}, dtype={value.dtype})")]
        del got
        assert reader.pinned() == []
        reader.close()


def test_read_with_copy_does_not_pin() -> None:
    value = big_array(1 << 18, 4)
    with ShmRing(1, 1, name="copy") as ring:
        writer, reader = ring.open_writer(), ring.open_reader(0)
        writer.write(value)
        got = reader.read(copy=True)
        np.testing.assert_array_equal(got, value)
        assert got.flags.writeable and "raycg" not in (mapping_of(got.ctypes.data) or "")
        assert reader.pinned() == []
        writer.write("next", timeout_s=0)  # the slot was released at once
        assert reader.read() == "next"
        writer.close()
        reader.close()


def test_small_array_is_copied() -> None:
    value = np.arange(1000, dtype=np.float32)  # 4 KB: under the zero-copy threshold
    with ShmRing(2, 1, name="small") as ring, Peer(ring.spec, "writer") as writer:
        reader = ring.open_reader(0)
        writer.call("write", value)
        got = reader.read()
        np.testing.assert_array_equal(got, value)
        assert got.flags.writeable
        assert mapping_of(got.ctypes.data) is None or "raycg" not in mapping_of(got.ctypes.data)
        assert reader.pinned() == []
        reader.close()


def test_torch_tensors_round_trip() -> None:
    torch = pytest.importorskip("torch")
    from transports_testing import torch_cases

    expected = torch_cases()
    # Enough slots for every value: the ones read zero-copy pin theirs while we hold them.
    with ShmRing(16, 1, slot_bytes=1 << 16, name="torch") as ring, Peer(ring.spec, "writer") as writer:
        reader = ring.open_reader(0)
        writer.send("write_torch")
        got = {name: reader.read() for name in expected}
        together = reader.read()
        writer.recv()
        for name, exp in expected.items():
            for t in (got[name], together[name]):
                assert type(t) is torch.Tensor, name
                assert (t.dtype, t.shape) == (exp.dtype, exp.shape), name
                assert torch.equal(t, exp), name
        # Large tensors are read in place, small ones copied.
        assert "raycg:torch.data" in (mapping_of(got["bfloat16_big"].data_ptr()) or "")
        assert "raycg" not in (mapping_of(got["bfloat16_small"].data_ptr()) or "")
        del got, together
        reader.close()


def test_slot_grows_under_a_reader_in_another_process() -> None:
    # Slots start at 4 KiB; each of these values needs a bigger slot than the last.
    sizes = [8, 10_000, 100_000, 1 << 20, 8, 8, 5 << 20, 8, 50_000, 8]
    values = [big_array(n, seed) if n > 8 else seed for seed, n in enumerate(sizes)]
    with ShmRing(4, 1, slot_bytes=4096, name="grow") as ring:
        writer = ring.open_writer()
        with Peer(ring.spec, "reader") as reader:
            # Three generations in a row with every value still unread: the reader must
            # follow the first values back into generation 0, then forward.
            for v in values[:4]:
                writer.write(v, timeout_s=0)
            assert data_generations("grow") == {0, 1, 2, 3}
            reader.send("read_many", len(values))
            for v in values[4:]:  # more growth while the reader reads
                writer.write(v)
            assert reader.recv() == [digest(v) for v in values]
            reader.send("read_many", 1)
            writer.write("last")  # frees every generation the reader is done with
            assert reader.recv() == [digest("last")]
            assert data_generations("grow") == {0, 4}
        writer.close()


def test_unserializable_value_raises_at_the_writer() -> None:
    with ShmRing(1, 1, name="unpicklable") as ring:
        writer, reader = ring.open_writer(), ring.open_reader(0)
        for value, named in [
            (lambda: 0, "function"),
            (threading.Lock(), "lock"),
            ({"k": threading.Lock()}, "dict"),
        ]:
            with pytest.raises(ValueNotSerializable, match=named) as err:
                writer.write(value)
            assert isinstance(err.value, TypeError)
            with pytest.raises(TimeoutError):  # nothing was written
                reader.read(timeout_s=0)
        writer.write("fine")  # and the ring is usable
        assert reader.read() == "fine"
        writer.close()
        reader.close()


def _explode() -> None:
    raise RuntimeError("cannot rebuild this value here")


class _FailsToUnpickle:
    def __reduce__(self) -> tuple:
        return (_explode, ())


def test_value_that_fails_to_unpickle_still_frees_its_slot() -> None:
    with ShmRing(1, 1, name="badpickle") as ring:
        writer, reader = ring.open_writer(), ring.open_reader(0)
        for value in (_FailsToUnpickle(), [_FailsToUnpickle(), big_array(1 << 17)]):
            writer.write(value)
            with pytest.raises(RuntimeError, match="cannot rebuild"):
                reader.read()
            writer.write("next", timeout_s=0)  # the slot was released all the same
            assert reader.read() == "next"
        assert reader.pinned() == []
        writer.close()
        reader.close()


def test_slots_and_buffers_are_aligned() -> None:
    # 3 slots of 1000 bytes share one page: each slot must still start 64-byte aligned.
    with ShmRing(3, 1, slot_bytes=1000, name="align") as ring:
        writer, reader = ring.open_writer(), ring.open_reader(0, zero_copy_min_bytes=0)
        for i in range(6):
            writer.write(np.full(20, i, dtype=np.float64))
            got = reader.read()
            assert got.ctypes.data % 64 == 0 and got.flags.aligned
            np.testing.assert_array_equal(got, np.full(20, i, dtype=np.float64))
            del got
        writer.close()
        reader.close()


class TestPinnedSlot:
    """A reader that holds a zero-copy value pins its slot until the value is dropped."""

    def test_writer_across_processes(self) -> None:
        big = big_array(1 << 18, 7)
        with ShmRing(2, 1, name="pinned") as ring, Peer(ring.spec, "writer") as writer:
            reader = ring.open_reader(0)
            writer.call("write_many", [big, "small"])
            held = reader.read()  # value #0, zero-copy: pins slot 0
            assert reader.read() == "small"
            with pytest.raises(SlotPinned) as err:  # value #2 needs slot 0
                writer.call("write_pinned", "v2", None, True)
            desc = "numpy.ndarray(shape=(32768,), dtype=float64)"
            assert (err.value.reader_index, err.value.seq, err.value.description) == (0, 0, desc)
            assert re.search(rf"reader 0\b.*{re.escape(desc)}", str(err.value))
            with pytest.raises(SlotPinned):  # without raise_if_pinned: a timeout, naming it
                writer.call("write_pinned", "v2", 0.2, False)
            assert reader.pinned() == [(0, desc)]
            writer.send("write", "v2")  # waits...
            del held  # ...until the value is dropped, though this reader is idle
            writer.recv()
            assert reader.read() == "v2"
            assert reader.pinned() == []
            reader.close()

    def test_names_the_reader_that_pins(self) -> None:
        with ShmRing(1, 3, name="pinned3") as ring:
            writer = ring.open_writer()
            readers = [ring.open_reader(i) for i in range(3)]
            writer.write(big_array(1 << 17))
            dropped0, dropped1, kept = (r.read() for r in readers)
            del dropped0, dropped1  # only reader 2 keeps its value
            with pytest.raises(SlotPinned, match="reader 2") as err:
                writer.write(1, raise_if_pinned=True)
            assert err.value.reader_index == 2
            assert [r.pinned() != [] for r in readers] == [False, False, True]
            del kept
            writer.write(1, timeout_s=0)
            for ep in (writer, *readers):
                ep.close()

    def test_drop_while_the_reader_is_blocked_frees_the_slot(self) -> None:
        with ShmRing(1, 1, name="pinblock") as ring:
            writer, reader = ring.open_writer(), ring.open_reader(0)
            writer.write([big_array(1 << 17)])
            held = reader.read()
            reading = Call(reader.read).wait_blocked()  # waits for value #1
            writing = Call(lambda: writer.write("v1")).wait_blocked()  # slot 0 is pinned
            del held  # from this thread, while the reader's thread sleeps
            writing.outcome()
            assert reading.outcome() == "v1"
            writer.close()
            reader.close()

    def test_value_outlives_a_closed_reader(self) -> None:
        with ShmRing(1, 1, name="outlive") as ring:
            writer, reader = ring.open_writer(), ring.open_reader(0)
            value = big_array(1 << 17, 9)
            writer.write(value)
            held = reader.read()
            reader.close()
            writer.close()
            del reader, writer
            gc.collect()
            np.testing.assert_array_equal(held, value)  # still mapped: it owns the mapping
            assert raycg_mappings()
            del held
        assert raycg_mappings() == []


def test_close_unmaps_an_endpoint_at_once_and_a_held_value_keeps_its_own() -> None:
    # With the collector off and the endpoints still referenced: close() alone must
    # unmap their control segments (and the data nothing holds); a zero-copy value
    # the caller holds keeps its slot's mapping, and stays readable.
    gc.disable()
    try:
        ring = ShmRing(2, 1, name="unmap")
        writer, reader = ring.open_writer(), ring.open_reader(0)
        value = big_array(1 << 17, 3)
        writer.write(value)
        held = reader.read()
        ring.close()  # closes the channel; the owner's own mappings go now
        assert "raycg:unmap.ctrl" in raycg_mappings()  # the endpoints'
        reader.close()
        writer.close()
        left = raycg_mappings()
        assert [m for m in left if m.startswith("raycg:unmap.ctrl")] == [], left
        assert [m for m in left if m.startswith("raycg:unmap.data")] != []  # the held value's
        np.testing.assert_array_equal(held, value)
        with pytest.raises(ChannelClosed):
            reader.read(timeout_s=0)
        with pytest.raises(ChannelClosed):
            writer.write(1, timeout_s=0)
        del held
        assert raycg_mappings() == []
    finally:
        gc.enable()


def test_a_close_from_another_thread_wakes_a_blocked_read_then_unmaps() -> None:
    with ShmRing(1, 1, name="unmapwait") as ring:
        writer, reader = ring.open_writer(), ring.open_reader(0, liveness_interval_s=600)
        waiting = Call(reader.read).wait_blocked()  # holds the control mapping as it sleeps
        reader.close()
        with pytest.raises(ChannelClosed):
            waiting.outcome()
        writer.close()
        ring.close()
        del waiting
        gc.collect()  # the exception it kept: its traceback's frames (a cycle) held the mapping
        assert raycg_mappings() == []


@pytest.mark.parametrize("cyclic", [False, True], ids=["refcount", "cycle"])
def test_a_dropped_endpoint_closes_the_channel(cyclic: bool) -> None:
    with ShmRing(1, 1, name="dropclose") as ring:
        writer = ring.open_writer()
        reader = ring.open_reader(0, liveness_interval_s=600)  # only a close can wake it
        waiting = Call(reader.read).wait_blocked()
        if cyclic:  # collected by the cycle collector, which unmaps before finalizing
            writer.cycle = writer  # type: ignore[attr-defined]
        del writer
        gc.collect()
        with pytest.raises(ChannelClosed):
            waiting.outcome()
        reader.close()


def test_endpoint_dropped_in_a_forked_child_leaves_the_channel_open() -> None:
    with ShmRing(1, 1, name="fork") as ring:
        writer, reader = ring.open_writer(), ring.open_reader(0)
        pid = os.fork()
        if pid == 0:  # the child drops its copies of the endpoints, then exits
            try:
                del writer, reader
                gc.collect()
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        writer.write("still open")
        assert reader.read() == "still open"
        writer.close()
        reader.close()


def test_dropped_ring_and_endpoints_free_their_fds() -> None:
    fds = open_fds()
    ring = ShmRing(2, 1, name="dropped")
    writer, reader = ring.open_writer(), ring.open_reader(0)
    writer.write(big_array(1 << 16))  # grows: the writer owns a new generation
    reader.read()
    del ring, writer, reader  # never closed
    gc.collect()
    assert open_fds() == fds
    assert raycg_mappings() == []


def test_reader_index_out_of_range() -> None:
    with ShmRing(1, 2, name="index") as ring, pytest.raises(ValueError, match="out of range"):
        ring.open_reader(2)
