"""Writable views of a ring slot, for values that hold torch tensors: copy-on-write
where the ring has several readers.

A zero-copy numpy array is a read-only view of the slot (the reader's Pin exports a
read-only buffer), so a reader cannot change what another reader of the same value
sees. torch has no read-only tensors: a tensor over a read-only buffer is writable all
the same (torch warns, then writes through). So where a ring has several readers, a
value with tensors in it is decoded over a *private* (MAP_PRIVATE) mapping of the
slot's memfd instead: the first in-place write to a page copies that page for this
process alone, and every other reader, in this process or another, keeps seeing the
bytes the writer wrote. Reads cost what the shared mapping costs (the pages are the
same page-cache pages until written).

A private page once copied would hide the writer's later values in that region, so
when the value's last view dies, any copied pages are dropped with MADV_DONTNEED (the
kernel maps the memfd's current contents again on the next access), before the slot is
released to the writer. Whether a page was copied is asked of the kernel with
PAGEMAP_SCAN (Linux 6.7; one ioctl, tens of ns a page): dropping pages that were only
read would make the next value's reads fault them in again (~0.25 µs a page, ~0.5 ms
for 8 MiB). Without PAGEMAP_SCAN the pages are always dropped. All this needs the
region to own whole pages: a slot whose regions are not page-aligned is decoded from a
copy instead (:func:`supported`).

A ring with one reader needs none of this: what its reader writes into its own value's
region reaches nobody (the writer's tensor is elsewhere and the region is rewritten
only after the reader dropped the value), so its tensors are writable views of the
shared mapping, exported by the same C Pin as a numpy array's read-only view
(_shm_reader.py): exactly numpy's cost.

Why hand-written: no library maps part of a memfd copy-on-write with a release hook.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import weakref
from collections.abc import Callable
from typing import Any

from ._errors import ChannelBroken
from ._segment import _MAP_FAILED, PAGE_BYTES, Segment, _libc, _Unmapper

_MADV_DONTNEED = 4
_libc.madvise.restype = ctypes.c_int
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.ioctl.restype = ctypes.c_int
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]


_SCAN_FIELDS = [
    *("size", "flags", "start", "end", "walk_end", "vec", "vec_len", "max_pages"),
    *("category_inverted", "category_mask", "category_anyof_mask", "return_mask"),
]


class _ScanArg(ctypes.Structure):
    """struct pm_scan_arg (linux/fs.h)."""

    _fields_ = [(name, ctypes.c_uint64) for name in _SCAN_FIELDS]


class _PageRegion(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("end", ctypes.c_uint64), ("categories", ctypes.c_uint64)]


_PAGE_IS_FILE, _PAGE_IS_PRESENT, _PAGE_IS_SWAPPED = 1 << 2, 1 << 3, 1 << 4
_PAGEMAP_SCAN = (3 << 30) | (ctypes.sizeof(_ScanArg) << 16) | (ord("f") << 8) | 16  # _IOWR('f', 16, ...)
_scan_works = True


def _copied(address: int, span: int) -> bool:
    """Whether any page of the range is this process's own copy (an anonymous page:
    present and not the memfd's, or swapped out), or we cannot tell."""
    global _scan_works
    if not _scan_works:
        return True
    region = _PageRegion()
    arg = _ScanArg(
        size=ctypes.sizeof(_ScanArg),
        start=address,
        end=address + span,
        vec=ctypes.addressof(region),
        vec_len=1,
        max_pages=1,  # the first one answers the question
        category_inverted=_PAGE_IS_FILE,
        category_mask=_PAGE_IS_FILE,
        category_anyof_mask=_PAGE_IS_PRESENT | _PAGE_IS_SWAPPED,
        return_mask=_PAGE_IS_PRESENT | _PAGE_IS_SWAPPED,
    )
    # Opened per call: a process-wide fd would outlive the reader that needed it.
    fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    try:
        found = _libc.ioctl(fd, _PAGEMAP_SCAN, ctypes.byref(arg))
    finally:
        os.close(fd)
    if found < 0:  # ENOTTY/EINVAL: a kernel without PAGEMAP_SCAN
        _scan_works = False
        return True
    return found > 0


class _Private:
    """A private mapping of a whole data generation, unmapped once no view uses it."""

    __slots__ = ("__weakref__", "address", "array")

    def __init__(self, seg: Segment):
        path = f"/proc/{seg.pid}/fd/{seg.fd}"
        try:
            fd = (
                os.dup(seg.fd)
                if seg.pid == os.getpid() and seg.owned
                else os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            )
        except OSError as e:
            raise ChannelBroken(
                f"cannot open shared segment fd {seg.fd} of process {seg.pid}: {e.strerror}; "
                "the process that holds it has exited or closed the channel"
            ) from e
        try:
            # PROT_WRITE on a private mapping of a read-only fd is allowed: writes stay private.
            addr = _libc.mmap(None, seg.size_bytes, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE, fd, 0)
        finally:
            os.close(fd)
        if addr is None or addr == _MAP_FAILED:
            err = ctypes.get_errno()
            raise OSError(err, f"private mmap of {seg.size_bytes} bytes failed: {os.strerror(err)}")
        self.address = addr
        self.array = (ctypes.c_char * seg.size_bytes).from_address(addr)
        weakref.finalize(self.array, _Unmapper(addr, seg.size_bytes)).atexit = False


# One private mapping per generation a reader maps, alive while the generation's
# Segment is (and while any view made from it is).
_PRIVATE: weakref.WeakKeyDictionary[Segment, _Private] = weakref.WeakKeyDictionary()


def supported(offset: int, region_bytes: int) -> bool:
    """Whether the region at ``offset`` owns whole pages (then it can be viewed here)."""
    return offset % PAGE_BYTES == 0 and region_bytes % PAGE_BYTES == 0


def open_view(seg: Segment, offset: int, nbytes: int, on_release: Callable[[], None]) -> memoryview:
    """A writable, copy-on-write view of ``nbytes`` at ``offset`` of ``seg`` (a ring with
    one reader needs none: its reader views the shared mapping through a writable Pin).

    When the view and everything made from it are garbage, the region's copied pages
    are dropped, then ``on_release()`` runs (in whichever thread dropped the last one).

    Raises:
        ChannelBroken: the process holding the segment is gone.
    """
    mapping = _PRIVATE.get(seg)
    if mapping is None:
        mapping = _PRIVATE[seg] = _Private(seg)
    exporter = (ctypes.c_char * max(nbytes, 1)).from_buffer(mapping.array, offset)
    span = (nbytes + PAGE_BYTES - 1) // PAGE_BYTES * PAGE_BYTES
    # The finalizer holds ``mapping``: the mapping outlives the madvise it needs.
    weakref.finalize(exporter, _release, mapping, mapping.address + offset, span, on_release).atexit = False
    return memoryview(exporter).cast("B")[:nbytes]


def _release(private: Any, address: int, span: int, on_release: Callable[[], None]) -> None:
    try:
        if _copied(address, span):
            _libc.madvise(address, span, _MADV_DONTNEED)
    finally:
        on_release()
