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

from ._errors import ChannelBroken

PAGE_BYTES = mmap.PAGESIZE


def round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple


class Segment:
    """A mapped memfd. ``fd`` is kept open by the process that created the segment
    (so that peers can open it by ``(pid, fd)``); peers close theirs right after
    mapping."""

    __slots__ = ("_anchor", "address", "fd", "mm", "owned", "pid", "size_bytes", "view")

    def __init__(self, size_bytes: int, map_fd: int, pid: int, fd: int, owned: bool):
        # (pid, fd): where peers open this segment; map_fd: the fd we map it from.
        self.size_bytes = size_bytes
        self.pid = pid
        self.fd = fd
        self.owned = False  # set once mapped: if mmap fails, create() closes the fd itself
        self.mm = mmap.mmap(map_fd, size_bytes, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.owned = owned
        # A ctypes view pins the mapping's address for futex calls; it is dropped
        # before the mapping is closed (close() refuses while exports exist).
        self._anchor: ctypes.c_char | None = ctypes.c_char.from_buffer(self.mm)
        self.address = ctypes.addressof(self._anchor)
        self.view: memoryview | None = memoryview(self.mm)

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

    def close(self) -> None:
        """Unmap (once nothing else exports the mapping) and close the owner's fd."""
        self._anchor = None
        if self.view is not None:
            try:
                self.view.release()
            except BufferError:
                pass  # slices of it are alive; the mapping goes with the last of them
            self.view = None
        try:
            self.mm.close()
        except BufferError:
            # Zero-copy values still point into the mapping; it is unmapped when the
            # last of them is garbage-collected (the mmap object owns the mapping).
            pass
        self._close_fd()

    def _close_fd(self) -> None:
        if self.owned and self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __del__(self) -> None:
        # A segment dropped without close() (its ring or writer was dropped) would keep
        # its memfd, and so its memory, until the process exits. The mapping itself
        # goes with the mmap object.
        if getattr(self, "owned", False):
            self._close_fd()
