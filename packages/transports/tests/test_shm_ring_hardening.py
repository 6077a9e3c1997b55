"""The shared-memory ring against what a careless neighbour can do to it: a close from
another thread in the middle of a read, a corrupt slot record, readers bumping a futex
word together, a value far larger than the rest.

A defect here is a segfault, so each scenario that could crash runs in a child process
of its own, and a crash fails the test instead of killing the test run.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from typing import Any

import numpy as np
import pytest
from transports_testing import SPAWN, Peer, big_array, digest

from raycg.transports import ChannelClosed, ShmRing, ShmRingSpec, _liveness, open_reader, process_start_time
from raycg.transports._shm_ring import _CUR_GEN, _CUR_SLOT_BYTES, _SPACE_FUTEX, _WRITER_WAITING, _slots_offset

pytestmark = pytest.mark.timeout(60)


def run_child(target: Any, *args: Any) -> tuple[int | None, object]:
    """Run ``target(conn, *args)`` in a spawned child; its exit code and what it sent."""
    conn, child_conn = SPAWN.Pipe()
    proc = SPAWN.Process(target=target, args=(child_conn, *args), daemon=True)
    proc.start()
    child_conn.close()
    try:
        got = conn.recv() if conn.poll(50) else "the child sent nothing within 50 s"
    except EOFError:
        got = "the child died without answering"
    proc.join(30)
    if proc.exitcode is None:
        proc.kill()
        proc.join()
    conn.close()
    code = proc.exitcode
    proc.close()
    return code, got


# --- a close while the C core unpickles (issue 9, defect 2) -------------------------

_REBUILDING = threading.Event()


def _rebuild_slowly() -> str:
    # Runs inside pickle.loads on the reader's thread: it lets the GIL go (sleeps) so
    # that the main thread can close the reader while the unpickler is mid-stream.
    _REBUILDING.set()
    time.sleep(0.3)
    return "rebuilt"


class SlowToRebuild:
    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return _rebuild_slowly, ()


def _read_while_closed(conn: Any, spec: ShmRingSpec) -> None:
    reader = open_reader(spec, 0)
    assert reader.read() == "warm-up"  # maps the generation: the next read is the C core's
    outcome: list[object] = []

    def read() -> None:
        try:
            outcome.append(digest(reader.read(10)))
        except ChannelClosed:
            outcome.append("ChannelClosed")

    thread = threading.Thread(target=read)
    thread.start()
    _REBUILDING.wait(10)
    reader.close()  # unmaps what the reader maps, while the unpickler still reads it
    thread.join(10)
    conn.send(outcome)


@pytest.mark.parametrize(
    "tail",
    ["tail" * 4096, big_array(1 << 17, 7)],
    ids=["c-core-plain-pickle", "python-zero-copy"],
)
def test_close_during_an_unpickle_on_another_thread_does_not_unmap_it(tail: object) -> None:
    with ShmRing(2, 1, name="closeunpickle") as ring:
        writer = ring.open_writer()
        writer.write("warm-up")
        # The rebuilt object comes first; the unpickler reads the rest after the sleep.
        writer.write((SlowToRebuild(), tail))
        code, outcome = run_child(_read_while_closed, ring.spec)
        writer.close()
    assert code == 0, f"the reader's process died (exit code {code})"
    assert outcome in ([digest(("rebuilt", tail))], ["ChannelClosed"])


# --- corrupt slot records (issue 9, defect 6) ---------------------------------------

# Word index of each field in a slot record (drawn in _shm_ring.py).
_OFFSET, _META_LEN, _NBUFS = 5, 6, 7


def _read_corrupt(conn: Any, spec: ShmRingSpec) -> None:
    reader = open_reader(spec, 0, zero_copy_min_bytes=0)  # buffers: through a Pin
    assert reader.read() == "warm-up"  # maps the generation: the C core reads what follows
    try:
        got: object = ("read", digest(reader.read(10)))
    except Exception as e:
        got = (type(e).__name__, str(e))
    reader.close()
    conn.send(got)


def _corrupt_record(ring: ShmRing, seq: int, word: int, value: int) -> None:
    assert ring._ctrl.view is not None
    q = ring._ctrl.view.cast("Q")
    try:
        q[(_slots_offset(ring.spec.nreaders) + 64 * (seq % ring.spec.nslots)) // 8 + word] = value
    finally:
        q.release()


def _corrupt_buffer_table(ring: ShmRing, seq: int, field: int, value: int) -> None:
    """Overwrite the first buffer's offset (field 0) or length (1) in value seq's region."""
    assert ring._ctrl.view is not None and ring._data.view is not None
    q = ring._ctrl.view.cast("Q")
    d = ring._data.view.cast("Q")
    try:
        base = q[(_slots_offset(ring.spec.nreaders) + 64 * (seq % ring.spec.nslots)) // 8 + _OFFSET]
        d[base // 8 + field] = value
    finally:
        q.release()
        d.release()


_DATA_BYTES = 2 * 65536  # ShmRing(2, 1, slot_bytes=65536)


@pytest.mark.parametrize(
    ("value", "corrupt"),
    [
        (("x" * 1000, 1), lambda ring: _corrupt_record(ring, 1, _OFFSET, 1 << 40)),
        (("x" * 1000, 1), lambda ring: _corrupt_record(ring, 1, _OFFSET, _DATA_BYTES - 16)),
        (("x" * 1000, 1), lambda ring: _corrupt_record(ring, 1, _META_LEN, 1 << 40)),
        (("x" * 1000, 1), lambda ring: _corrupt_record(ring, 1, _NBUFS, 1 << 40)),
        ([big_array(1 << 15, 8)], lambda ring: _corrupt_buffer_table(ring, 1, 0, 1 << 40)),
        ([big_array(1 << 15, 8)], lambda ring: _corrupt_buffer_table(ring, 1, 1, 1 << 40)),
    ],
    ids=[
        "offset-past-the-mapping",
        "stream-across-the-end",
        "stream-length-past-the-mapping",
        "nbufs-huge",
        "buffer-offset-past-the-region",
        "buffer-length-past-the-region",
    ],
)
def test_a_corrupt_slot_record_is_channel_broken_not_a_crash(value: object, corrupt: Any) -> None:
    with ShmRing(2, 1, slot_bytes=65536, name="corrupt") as ring:
        writer = ring.open_writer()
        writer.write("warm-up")
        writer.write(value)
        corrupt(ring)
        code, got = run_child(_read_corrupt, ring.spec)
        writer.close()
    assert code == 0, f"the reader's process died (exit code {code})"
    assert isinstance(got, tuple) and got[0] == "ChannelBroken", got
    assert "slot record of value #1 is corrupt" in got[1]


# --- several readers wake the writer at once (issue 9, defect 7) ----------------------


def _release_many(conn: Any, spec: ShmRingSpec, index: int, n: int) -> None:
    reader = open_reader(spec, index)
    conn.send("ready")
    conn.recv()  # start together: the bumps must overlap to race
    for k in range(n):
        reader._publish_released(k)  # the writer says it sleeps: each release bumps the word
    reader.close()  # bumps the word once more, through the Python path
    conn.send("done")


def test_readers_releasing_at_once_lose_no_bump_of_the_space_futex() -> None:
    """Every release that finds the writer asleep adds one to space_futex, so a sleeping
    writer always sees the word change: no increment is lost to a read-modify-write race
    between readers (a lost one would cost the writer a whole sleep slice)."""
    n = 1_000_000
    with ShmRing(1, 2, name="bumps") as ring:
        assert ring._ctrl.view is not None
        words = ring._ctrl.view.cast("I")
        try:
            words[_WRITER_WAITING // 4] = 1  # as a writer does before it sleeps
            before = words[_SPACE_FUTEX // 4]
            peers = []
            for index in range(2):
                conn, child_conn = SPAWN.Pipe()
                args = (child_conn, ring.spec, index, n)
                proc = SPAWN.Process(target=_release_many, args=args, daemon=True)
                proc.start()
                child_conn.close()
                peers.append((conn, proc))
            for conn, _ in peers:
                assert conn.recv() == "ready"
            for conn, _ in peers:
                conn.send("go")
            for conn, proc in peers:
                assert conn.recv() == "done"
                proc.join(30)
                conn.close()
                proc.close()
            bumps = (words[_SPACE_FUTEX // 4] - before) & 0xFFFFFFFF
        finally:
            words.release()
    assert bumps == 2 * n + 2, f"{2 * n + 2 - bumps} of {2 * n + 2} bumps were lost"


# --- grown slots shrink back (issue 9, defect 10) ------------------------------------


def _current_generation(ring: ShmRing) -> tuple[int, int]:
    """(gen, slot_bytes) of the data generation the writer writes to now."""
    assert ring._ctrl.view is not None
    q = ring._ctrl.view.cast("Q")
    try:
        return q[_CUR_GEN // 8], q[_CUR_SLOT_BYTES // 8]
    finally:
        q.release()


def _maps_generation(pid: int, name: str, gen: int) -> bool:
    with open(f"/proc/{pid}/maps") as f:
        return f"raycg:{name}.data.{gen} " in f.read() + " "


@pytest.mark.parametrize("small", [7, np.arange(4)], ids=["c-core-plain", "python-buffers"])
def test_grown_slots_shrink_back_while_a_zero_copy_value_of_the_big_one_is_held(small: object) -> None:
    with ShmRing(8, 1, slot_bytes=65536, name="shrink") as ring:
        reader = ring.open_reader(0)
        with Peer(ring.spec, "writer", shrink_after=4) as writer:
            big = big_array(1 << 20, 9)
            writer.call("write", big)
            held = reader.read()  # zero copy: it pins its slot of generation 1
            assert _current_generation(ring)[0] == 1
            writer.call("write_many", [small] * 3)
            assert _current_generation(ring)[0] == 1  # 3 small values: not yet
            writer.call("write_many", [small])
            assert _current_generation(ring) == (2, 65536)  # the 4th: back to the original size
            for _ in range(4):
                np.testing.assert_array_equal(reader.read(), small)  # type: ignore[arg-type]
            # The reader moved to generation 2 and let go of its own mapping of 1; the
            # held value keeps the one it points into.
            np.testing.assert_array_equal(held, big)
            assert _maps_generation(writer.pid, "shrink", 1)  # a value in it is unreleased
            del held
            writer.call("write", "after the drop")
            assert reader.read() == "after the drop"
            assert not _maps_generation(writer.pid, "shrink", 1)  # freed once released
            assert not _maps_generation(os.getpid(), "shrink", 1)
        reader.close()


def test_shrink_after_counts_consecutive_values_only() -> None:
    with ShmRing(4, 1, slot_bytes=4096, name="noshrink") as ring:
        writer, reader = ring.open_writer(shrink_after=3), ring.open_reader(0)
        writer.write(b"x" * 10_000)  # grows
        for value in [1, 2, b"y" * 10_000, 3, 4]:  # the big one in the middle resets the count
            writer.write(value)
            reader.read()
        reader.read()
        assert _current_generation(ring)[0] == 1
        writer.write(5)
        assert _current_generation(ring) == (2, 4096)
        assert reader.read() == 5
        writer.close()
        reader.close()


def test_a_close_racing_a_first_sleep_leaves_no_watch_holding_the_mapping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reader going to sleep for the first time starts watching its writer by pidfd
    while teardown closes the endpoint on another thread: the watch, whose waker holds
    the control mapping, must not outlive the endpoint (it would for the peer's life)."""
    peer = subprocess.Popen(["sleep", "60"])
    try:
        start = process_start_time(peer.pid)
        assert start is not None
        with ShmRing(2, 1, name="watchrace") as ring:
            reader = open_reader(ring.spec, 0)
            real_watch = _liveness.watch

            def watch_then_close(pid: int, start_time: int, wake: Any) -> Any:
                w = real_watch(pid, start_time, wake)
                reader.close()  # the other thread's close lands right here
                return w

            monkeypatch.setattr(_liveness, "watch", watch_then_close)
            reader._watch(peer.pid, start)
            monkeypatch.undo()
            with _liveness._lock:
                held = _liveness._watched.get((peer.pid, start))
                assert held is None or not held.wakers, "a watch outlived its endpoint"
    finally:
        peer.kill()
        peer.wait()
