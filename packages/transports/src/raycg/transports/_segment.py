"""Shared-memory segments that never appear in /dev/shm.

A segment is a memfd (an anonymous file in RAM) mapped into every process that uses it.
Another process on the node opens it through ``/proc/<pid>/fd/<fd>`` of a process that
holds it open, so a segment has no name anywhere: there is nothing to unlink, and the
kernel frees its memory when the last process unmaps it, however that process ends
(SIGKILL included). This is how the channel keeps its promise that nothing is ever left
behind in /dev/shm; named POSIX segments (``multiprocessing.shared_memory``) leak when
their owner is killed before unlinking.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import weakref

from ._errors import ChannelBroken

PAGE_BYTES = mmap.PAGESIZE

# Why not mmap.mmap: on Python < 3.13 it keeps a dup of the file descriptor for as long
# as the mapping lives, and a mapping lives as long as any zero-copy value or any
# traceback frame that references it. Mapping through libc keeps no fd at all: a peer
# closes its fd right after mapping, and the memory is unmapped when the last Python
# object exporting it is garbage-collected (a finalizer on the ctypes array).
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED = ctypes.c_void_p(-1).value


class _Unmapper:
    """munmap, called once the mapping's exporter is garbage. ``done`` tells code that
    runs during the same garbage collection (an endpoint's ``__del__``, which CPython
    calls after weakref callbacks) that the memory is gone and must not be touched."""

    __slots__ = ("addr", "done", "size_bytes")

    def __init__(self, addr: int, size_bytes: int):
        self.addr, self.size_bytes, self.done = addr, size_bytes, False

    def __call__(self) -> None:
        self.done = True
        _libc.munmap(self.addr, self.size_bytes)


def _map(fd: int, size_bytes: int) -> tuple[ctypes.Array[ctypes.c_char], _Unmapper]:
    """Map ``size_bytes`` of ``fd`` shared, read-write; unmapped when the returned array
    (and everything exporting it) is gone."""
    addr = _libc.mmap(None, size_bytes, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
    if addr is None or addr == _MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, f"mmap of {size_bytes} bytes failed: {os.strerror(err)}")
    buf = (ctypes.c_char * size_bytes).from_address(addr)
    unmapper = _Unmapper(addr, size_bytes)
    # Not at interpreter exit: the finalizers left then run regardless of liveness, and
    # a close() still due (a graph's, an endpoint's) must find the memory mapped. The
    # kernel unmaps everything when the process ends anyway.
    weakref.finalize(buf, unmapper).atexit = False
    return buf, unmapper


def round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple


class Segment:
    """A mapped memfd. ``fd`` is kept open by the process that created the segment
    (so that peers can open it by ``(pid, fd)``); peers close theirs right after
    mapping."""

    __slots__ = ("__weakref__", "_unmapper", "address", "fd", "mm", "owned", "pid", "size_bytes", "view")

    @property
    def mapped(self) -> bool:
        """False once the memory is unmapped: then nothing may read or write it."""
        return self._unmapper is None or not self._unmapper.done

    def __init__(self, size_bytes: int, map_fd: int, pid: int, fd: int, owned: bool):
        # (pid, fd): where peers open this segment; map_fd: the fd we map it from.
        self.size_bytes = size_bytes
        self.pid = pid
        self.fd = fd
        self.owned = False  # set once mapped: if mmap fails, create() closes the fd itself
        # The exporter of the mapping: zero-copy values keep it (and so the mapping) alive.
        self.mm: ctypes.Array[ctypes.c_char] | None
        self._unmapper: _Unmapper | None
        self.mm, self._unmapper = _map(map_fd, size_bytes)
        self.owned = owned
        self.address = ctypes.addressof(self.mm)
        self.view: memoryview | None = memoryview(self.mm).cast("B")

    @classmethod
    def create(cls, size_bytes: int, name: str) -> Segment:
        """A new zero-filled segment owned by this process."""
        size_bytes = round_up(max(size_bytes, 1), PAGE_BYTES)
        fd = os.memfd_create(f"raycg:{name}", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size_bytes)
            return cls(size_bytes, fd, os.getpid(), fd, owned=True)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def open(cls, pid: int, fd: int, size_bytes: int) -> Segment:
        """Map the segment that process ``pid`` holds as file descriptor ``fd``."""
        if pid == os.getpid():
            own_fd = os.dup(fd)
        else:
            try:
                own_fd = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)
            except OSError as e:
                raise ChannelBroken(
                    f"cannot open shared segment fd {fd} of process {pid}: {e.strerror}; "
                    "the process that holds it has exited or closed the channel"
                ) from e
        try:
            size = os.fstat(own_fd).st_size
            if size < size_bytes:
                raise ChannelBroken(
                    f"shared segment fd {fd} of process {pid} has {size} bytes, "
                    f"expected {size_bytes}: it is not the channel's segment"
                )
            return cls(size_bytes, own_fd, pid, fd, owned=False)
        finally:
            os.close(own_fd)

    @classmethod
    def private_copy(cls, seg: Segment) -> Segment:
        """A copy of ``seg``'s bytes in this process's own heap memory: no mapping, shared
        with nobody, freed with the last reference to it. A closed ring endpoint reads
        and writes its control copy while its real mapping goes (_shm_ring.py)."""
        assert seg.view is not None
        copy = cls.__new__(cls)
        copy.size_bytes, copy.pid, copy.fd, copy.owned = seg.size_bytes, os.getpid(), -1, False
        # ctypes allocates it with malloc: 16-byte aligned, as the 8-byte words need.
        copy.mm = (ctypes.c_char * seg.size_bytes).from_buffer_copy(seg.view)
        copy._unmapper = None
        copy.address = ctypes.addressof(copy.mm)
        copy.view = memoryview(copy.mm).cast("B")
        return copy

    def close(self) -> None:
        """Drop our hold on the mapping (it is unmapped once no zero-copy value or view
        still exports it) and close the owner's fd."""
        if self.view is not None:
            try:
                self.view.release()
            except BufferError:
                pass  # slices of it are alive; the mapping goes with the last of them
            self.view = None
        self.mm = None
        self._close_fd()

    def _close_fd(self) -> None:
        if self.owned and self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __del__(self) -> None:
        # A segment dropped without close() (its ring or writer was dropped) would keep
        # its memfd, and so its memory, until the process exits. The mapping itself
        # goes with the last object exporting it (see _map).
        if getattr(self, "owned", False):
            self._close_fd()
