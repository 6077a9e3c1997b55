"""The shared-memory ring when a peer process dies or closes it, and what it costs idle.

The owner (this test process) and the surviving endpoint must see ChannelBroken for a
death and ChannelClosed for a close, and be left with nothing: no /dev/shm entry (the
autouse leak check), no fd and no mapping once they drop their endpoints.
"""

from __future__ import annotations

import functools
import gc
import os
import time

import numpy as np
import pytest
from transports_testing import (
    Call,
    Peer,
    big_array,
    cpu_seconds,
    open_fds,
    process_state,
    raycg_mappings,
    wait_until,
)

from raycg.transports import ChannelBroken, ChannelClosed, ShmRing

pytestmark = pytest.mark.timeout(30)


def assert_nothing_left(fds: dict[str, str]) -> None:
    gc.collect()
    assert open_fds() == fds
    assert raycg_mappings() == []


def test_writer_killed_while_the_reader_waits() -> None:
    fds = open_fds()
    ring = ShmRing(2, 1, slot_bytes=4096, name="deadwriter")
    reader = ring.open_reader(0)
    writer = Peer(ring.spec, "writer")
    value = big_array(1 << 18, 5)  # grows the ring: the new generation is the writer's
    writer.call("write", value)
    held = reader.read()
    waiting = Call(reader.read).wait_blocked()
    writer.kill()
    assert process_state(writer.pid) == "Z"  # not reaped: a zombie still counts as dead
    with pytest.raises(ChannelBroken, match=rf"writer \(pid {writer.pid}\) died"):
        waiting.outcome()
    # The value read zero-copy outlives its writer: its mapping is ours.
    np.testing.assert_array_equal(held, value)
    writer.stop()
    ring.close()
    del ring, reader, held, waiting  # the error's traceback holds the reader too
    assert_nothing_left(fds)


def test_reader_killed_while_the_writer_waits() -> None:
    fds = open_fds()
    ring = ShmRing(2, 2, slot_bytes=4096, name="deadreader")
    writer = ring.open_writer()
    live = ring.open_reader(0)
    with Peer(ring.spec, "reader", 1) as doomed:
        writer.write([big_array(1 << 17)])  # grows the ring: a generation we own
        doomed.call("hold")  # pins slot 0 with a zero-copy value, then dies holding it
        assert live.read() is not None
        writer.write(1)
        waiting = Call(functools.partial(writer.write, 2)).wait_blocked()  # slot 0 is pinned
        doomed.kill()
        with pytest.raises(ChannelBroken, match=rf"reader 1 \(pid {doomed.pid}\) died"):
            waiting.outcome()
    ring.close()
    del ring, writer, live, waiting
    assert_nothing_left(fds)


def test_a_peer_killed_while_idle_is_noticed_at_the_next_wait() -> None:
    with ShmRing(1, 1, name="idlekill") as ring:
        reader = ring.open_reader(0)
        with Peer(ring.spec, "writer") as writer:
            writer.kill()
            with pytest.raises(ChannelBroken):
                reader.read()
        reader.close()


@pytest.mark.parametrize("closer", ["writer", "reader", "owner"])
def test_close_wakes_a_reader_in_another_process(closer: str) -> None:
    fds = open_fds()
    ring = ShmRing(2, 2, name="closereader")
    # liveness_interval_s=600: only the close's futex wake-up can end the child's wait.
    with Peer(ring.spec, "reader", 0, liveness_interval_s=600) as far:
        writer, near = ring.open_writer(), ring.open_reader(1)
        far.send("read")
        wait_until(lambda: process_state(far.pid) == "S")  # asleep in its wait
        {"writer": writer, "reader": near, "owner": ring}[closer].close()
        with pytest.raises(ChannelClosed):
            far.recv()
        with pytest.raises(ChannelClosed):
            writer.write(1)
    ring.close()
    writer.close()
    near.close()
    del ring, writer, near
    assert_nothing_left(fds)


def test_close_wakes_a_writer_in_another_process() -> None:
    fds = open_fds()
    ring = ShmRing(1, 1, name="closewriter")
    reader = ring.open_reader(0)
    with Peer(ring.spec, "writer", liveness_interval_s=600) as far:
        far.call("write", "fills the ring")
        far.send("write", "waits for space")
        wait_until(lambda: process_state(far.pid) == "S")
        reader.close()
        with pytest.raises(ChannelClosed):
            far.recv()
    ring.close()
    del ring, reader
    assert_nothing_left(fds)


@pytest.mark.parametrize("role", ["reader", "writer"])
def test_a_blocked_endpoint_sleeps_in_the_kernel(role: str) -> None:
    """Blocked for 2 s on an idle channel, the child uses (far) under 10% of a core."""
    with ShmRing(1, 1, name="idle") as ring:
        if role == "reader":
            near = ring.open_writer()
            peer = Peer(ring.spec, "reader")
            peer.send("read")
        else:
            near = ring.open_reader(0)
            peer = Peer(ring.spec, "writer")
            peer.call("write", 0)
            peer.send("write", 1)  # no space until we read: never
        with peer:
            wait_until(lambda: process_state(peer.pid) == "S")
            cpu0, t0 = cpu_seconds(peer.pid), time.monotonic()
            time.sleep(2)
            used_s, wall_s = cpu_seconds(peer.pid) - cpu0, time.monotonic() - t0
            ring.close()
            with pytest.raises(ChannelClosed):
                peer.recv()
        near.close()
    assert used_s < 0.1 * wall_s, f"a blocked {role} used {used_s:.3f} s of CPU in {wall_s:.1f} s"


def _voluntary_switches(pid: int) -> int:
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            total += int(next(line for line in f if line.startswith("voluntary_ctxt_switches")).split()[1])
    return total


def test_an_idle_reader_does_not_wake_up_to_check_its_writer() -> None:
    """Its writer is watched by pidfd, so the reader sleeps through (ten liveness checks a
    second woke it before, a context switch each)."""
    with ShmRing(1, 1, name="idlewake") as ring:
        writer = ring.open_writer()
        with Peer(ring.spec, "reader") as peer:
            peer.send("read")
            wait_until(lambda: process_state(peer.pid) == "S")
            time.sleep(0.2)  # past its first sleep, which registers the watch
            before = _voluntary_switches(peer.pid)
            time.sleep(2)
            woke = _voluntary_switches(peer.pid) - before
            writer.write("done")
            assert peer.recv() == "done"
        writer.close()
    assert woke < 5, f"an idle reader woke up {woke} times in 2 s"


def test_a_killed_writer_wakes_a_reader_in_a_long_sleep_at_once() -> None:
    """No slice ends the sleep here (600 s): only the pidfd watch can wake the reader."""
    with ShmRing(1, 1, name="watchwake") as ring:
        reader = ring.open_reader(0)
        reader._slice_s = reader._watched_slice_s = 600
        with Peer(ring.spec, "writer") as writer:
            writer.call("write", 1)
            assert reader.read() == 1
            waiting = Call(reader.read).wait_blocked()
            writer.kill()
            with pytest.raises(ChannelBroken, match=rf"writer \(pid {writer.pid}\) died"):
                waiting.outcome()
        reader.close()
        del waiting
