"""Shared-memory segments: memfds that no name in /dev/shm can leak."""

from __future__ import annotations

import gc
import os

import pytest
from transports_testing import SPAWN, open_fds, raycg_mappings

from raycg.transports import ChannelBroken
from raycg.transports._segment import PAGE_BYTES, Segment

pytestmark = pytest.mark.timeout(30)


def _write_through(pid: int, fd: int, size_bytes: int, data: bytes) -> None:
    seg = Segment.open(pid, fd, size_bytes)
    assert seg.view is not None
    seg.view[: len(data)] = data
    seg.close()


def test_create_is_a_memfd_rounded_to_pages() -> None:
    seg = Segment.create(100, "unit")
    assert seg.size_bytes == PAGE_BYTES
    assert os.readlink(f"/proc/self/fd/{seg.fd}") == "/memfd:raycg:unit (deleted)"
    assert not any("raycg" in name for name in os.listdir("/dev/shm"))
    seg.close()


def test_another_process_opens_it_by_pid_and_fd() -> None:
    seg = Segment.create(PAGE_BYTES, "shared")
    proc = SPAWN.Process(target=_write_through, args=(os.getpid(), seg.fd, seg.size_bytes, b"hello"))
    proc.start()
    proc.join()
    proc.close()
    assert seg.view is not None and bytes(seg.view[:5]) == b"hello"
    seg.close()


def test_open_in_the_same_process() -> None:
    seg = Segment.create(PAGE_BYTES, "same")
    other = Segment.open(os.getpid(), seg.fd, seg.size_bytes)
    assert other.view is not None and seg.view is not None
    other.view[0] = 42
    assert seg.view[0] == 42 and not other.owned
    other.close()
    seg.close()


def test_open_what_is_not_there_is_broken() -> None:
    seg = Segment.create(PAGE_BYTES, "small")
    with pytest.raises(ChannelBroken, match="expected"):
        Segment.open(os.getpid(), seg.fd, 2 * seg.size_bytes)  # not the segment we expect
    fd = seg.fd
    seg.close()
    with pytest.raises(ChannelBroken, match="cannot open"):
        Segment.open(1 << 22, fd, PAGE_BYTES)  # no such process


def test_close_is_idempotent_and_waits_for_exports() -> None:
    seg = Segment.create(PAGE_BYTES, "exported")
    assert seg.view is not None
    view = seg.view[:16]  # a slice alive past close(), as a zero-copy value is
    seg.close()
    seg.close()
    view[0] = 1  # still mapped
    del view, seg
    gc.collect()
    assert raycg_mappings() == []


def test_dropped_without_close_frees_its_fd() -> None:
    fds = open_fds()
    seg = Segment.create(PAGE_BYTES, "dropped")
    del seg
    gc.collect()
    assert open_fds() == fds
