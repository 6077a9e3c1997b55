"""Tensors through a real ring: zero copy, pinned like arrays, and no reader can change
what another reader sees (copy-on-write views; arrays stay read-only)."""

from __future__ import annotations

import multiprocessing
from typing import Any

import numpy as np
import pytest

from raycg.transports import ShmRing, SlotPinned

torch = pytest.importorskip("torch")

SPAWN = multiprocessing.get_context("spawn")
N = 1 << 18  # 1 MiB of float32: read zero-copy


def _child(spec: Any, index: int, conn: Any) -> None:
    """A reader in its own process: reads, changes what it got in place, says what it saw."""
    import torch  # noqa: F401  (the tensors arrive as tensors)

    from raycg.transports import open_reader

    reader = open_reader(spec, index)
    held: list[object] = []
    try:
        while (op := conn.recv()) != "exit":
            if op == "drop":
                held.clear()
                conn.send(None)
                continue
            value = reader.read(30)
            t = value["t"] if isinstance(value, dict) else value
            before = float(t.sum())
            t.add_(1)  # in place: must stay private to this reader
            zero_copy = "raycg" in _mapping(t.data_ptr())
            report = {"before": before, "after": float(t.sum()), "zero_copy": zero_copy}
            if isinstance(value, dict):  # an array beside tensors: private as well
                report["array_before"] = float(value["a"].sum())
                value["a"] += 1
            held.append(value)
            del value, t  # only ``held`` keeps it (and so its slot pinned)
            conn.send(report)
    finally:
        held.clear()
        reader.close()


def _mapping(address: int) -> str:
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split(maxsplit=5)
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if start <= address < end:
                return fields[5].strip() if len(fields) > 5 else ""
    return ""


class _Reader:
    def __init__(self, spec: Any, index: int):
        self.conn, child_conn = SPAWN.Pipe()
        self.proc = SPAWN.Process(target=_child, args=(spec, index, child_conn), daemon=True)
        self.proc.start()
        child_conn.close()

    def call(self, op: str) -> Any:
        self.conn.send(op)
        return self.conn.recv()

    def stop(self) -> None:
        self.conn.send("exit")
        self.proc.join(30)
        if self.proc.exitcode is None:
            self.proc.kill()
            self.proc.join()
        self.conn.close()
        self.proc.close()


def test_fan_out_readers_in_other_processes_cannot_change_each_others_tensor() -> None:
    with ShmRing(1, 2, slot_bytes=1 << 16, name="cow") as ring:
        writer = ring.open_writer()
        readers = [_Reader(ring.spec, 0), _Reader(ring.spec, 1)]
        try:
            for k in range(4):  # one slot: every value reuses the region the last one used
                t = torch.full((N,), float(k))
                writer.write(t if k % 2 else {"t": t, "a": np.zeros(N // 2)}, timeout_s=30)
                first = readers[k % 2].call("read")  # changes its copy in place first
                second = readers[1 - k % 2].call("read")
                for got in (first, second):
                    assert got["before"] == k * N and got["after"] == (k + 1) * N
                    assert got["zero_copy"]
                    assert got.get("array_before", 0.0) == 0.0
                for r in readers:
                    r.call("drop")
        finally:
            for r in readers:
                r.stop()
            writer.close()


def test_readers_in_one_process_are_kept_apart_and_see_every_later_value() -> None:
    with ShmRing(1, 2, slot_bytes=1 << 16, name="cow1") as ring:
        writer, r0, r1 = ring.open_writer(), ring.open_reader(0), ring.open_reader(1)
        for k in range(5):
            writer.write(torch.full((N,), float(k)))
            a = r0.read()
            a.mul_(0).add_(-1)  # every page copied, privately
            b = r1.read()
            assert torch.equal(b, torch.full((N,), float(k))), k
            assert torch.equal(a, torch.full((N,), -1.0))
            assert a.data_ptr() != b.data_ptr()
            del a, b  # the copied pages go; the next value in this region shows through
        for ep in (writer, r0, r1):
            ep.close()


def test_a_held_tensor_pins_its_slot_like_an_array() -> None:
    with ShmRing(1, 1, slot_bytes=1 << 16, name="cowpin") as ring:
        writer, reader = ring.open_writer(), ring.open_reader(0)
        writer.write(torch.ones(4, N // 4))
        held = reader.read()
        with pytest.raises(SlotPinned, match=r"torch\.Tensor\(shape=\(4, 65536\), dtype=torch\.float32\)"):
            writer.write(1, timeout_s=5, raise_if_pinned=True)
        view = held[1:3]  # a view keeps the slot pinned too
        del held
        with pytest.raises(SlotPinned):
            writer.write(1, timeout_s=0, raise_if_pinned=True)
        del view
        writer.write(torch.zeros(3), timeout_s=5)
        assert torch.equal(reader.read(), torch.zeros(3))
        writer.close()
        reader.close()


def test_an_unaligned_slot_gives_tensors_a_copy() -> None:
    # Regions that do not own whole pages cannot be viewed copy-on-write: a copy then.
    with ShmRing(3, 2, slot_bytes=N * 4 + 64 * 100, name="cowodd") as ring:
        writer, r0, r1 = ring.open_writer(), ring.open_reader(0), ring.open_reader(1)
        writer.write(torch.arange(N, dtype=torch.float32))
        a, b = r0.read(), r1.read()
        a.add_(1)
        assert torch.equal(b, torch.arange(N, dtype=torch.float32)) and r0.pinned() == []
        del a, b
        for ep in (writer, r0, r1):
            ep.close()


def test_arrays_read_zero_copy_stay_read_only() -> None:
    with ShmRing(1, 1, slot_bytes=1 << 16, name="ro") as ring:
        writer, reader = ring.open_writer(), ring.open_reader(0)
        writer.write(np.zeros(N))
        got = reader.read()
        with pytest.raises(ValueError, match="read-only"):
            got += 1
        with pytest.raises(ValueError, match="WRITEABLE"):
            got.flags.writeable = True
        del got
        writer.close()
        reader.close()


def test_the_only_reader_gets_writable_views_of_the_shared_slot() -> None:
    # Nobody else reads the region: its tensors are plain zero-copy views, at numpy's cost.
    with ShmRing(1, 1, slot_bytes=1 << 16, name="one") as ring:
        writer, reader = ring.open_writer(), ring.open_reader(0)
        for k in range(3):
            t = torch.full((N,), float(k))
            writer.write({"t": t}, timeout_s=30)
            got = reader.read()["t"]
            assert "raycg:one.data" in _mapping(got.data_ptr())
            got.add_(1)  # in place, into the slot: harmless, the writer's tensor is elsewhere
            assert torch.equal(got, t + 1) and torch.equal(t, torch.full((N,), float(k)))
            del got
        writer.close()
        reader.close()


@pytest.mark.parametrize(
    "make", [lambda: np.ones(N, np.float32), lambda: torch.ones(N)], ids=["numpy", "torch"]
)
def test_the_only_readers_tensor_costs_what_an_array_costs(make: Any) -> None:
    # The same exporter for both (the C Pin, writable for the tensor): no Python-level
    # finalizer per value, whose registration and call an array's read does not pay.
    import weakref

    with ShmRing(2, 1, slot_bytes=1 << 16, name="cost") as ring:
        writer, reader = ring.open_writer(), ring.open_reader(0)
        value = make()
        writer.write((False, value))
        reader.read()  # the first maps the grown generation (its finalizer); dropped
        writer.write((False, value))
        finalizers = len(weakref.finalize._registry)  # type: ignore[attr-defined]
        got = reader.read()[1]
        assert len(weakref.finalize._registry) == finalizers  # type: ignore[attr-defined]
        address = got.data_ptr() if isinstance(got, torch.Tensor) else got.ctypes.data
        assert "raycg:cost.data" in _mapping(address)  # zero copy, both
        assert reader.pinned() != []
        del got
        assert reader.pinned() == []
        writer.close()
        reader.close()


def test_a_pin_is_read_only_unless_asked_writable() -> None:
    import ctypes

    from raycg.transports import _native

    buf = (ctypes.c_char * 64)()
    seen: list[int] = []
    assert memoryview(_native.Pin(buf, ctypes.addressof(buf), 64, 7, seen.append)).readonly
    pin = _native.Pin(buf, ctypes.addressof(buf), 64, 8, seen.append, True)
    view = memoryview(pin)
    view[0] = 1
    assert not view.readonly and buf.raw[0] == 1
    del view, pin
    assert seen == [7, 8]
