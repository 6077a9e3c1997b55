"""SIGKILL the driver (on the head) while it drives a graph pipelined across detached
stages on head, w1 and w2. Every executor on every node must stop within the bound,
nothing of raycg's may remain in any container, and the stages serve calls after."""

from __future__ import annotations

import argparse
import os
import random
import signal
import time
from typing import Any

import ray

from .._harness import Outcome
from . import _drive


def drive(seed: int, args: argparse.Namespace) -> None:
    namespace = f"chaos-{seed}"
    if args.cleanup:  # after a failed run: the detached stages go, whatever state they are in
        for node in dict.fromkeys(_drive.NODES):
            try:
                ray.kill(ray.get_actor(f"stage-{node}", namespace=namespace))
            except ValueError:
                pass  # never made, or gone already
        _drive.result(error="cleaned up")
        return
    if args.check:  # the second driver: wait for the executors to stop, then clean up
        stages = [ray.get_actor(f"stage-{node}", namespace=namespace) for node in dict.fromkeys(_drive.NODES)]
        took = _drive.wait_idle(stages)
        assert ray.get([s.inc.remote(1) for s in stages], timeout=30) == [2] * len(stages)
        for s in stages:
            ray.kill(s)
        _drive.result(error="executors stopped", took=round(took, 3))
        return
    stages = {
        node: _drive.Stage.options(  # type: ignore[attr-defined]
            **_drive.pinned(node, name=f"stage-{node}", namespace=namespace, lifetime="detached")
        ).remote()
        for node in _drive.NODES
    }
    ray.get([s.pid.remote() for s in stages.values()], timeout=60)
    graph = _drive.chain(list(stages.values()), get_timeout=60)
    _drive.warm(graph)
    _drive.say("READY")
    _drive.pump(graph)  # until the host kills this process
    raise AssertionError("the graph failed before the driver was killed")


def run(seed: int) -> Outcome:
    from ._host import cluster  # host only: Docker SDK

    c = cluster()
    delay = random.Random(seed).uniform(0.1, 1.0)
    try:
        return _run(c, seed, delay)
    except BaseException:
        c.drive("kill_driver", seed, "--cleanup").result(60)  # detached: they outlive us
        raise


def _run(c: Any, seed: int, delay: float) -> Outcome:
    from ._host import CLEANUP_BOUND_S, clean, outcome, start

    driver = start(c, "kill_driver", seed)
    time.sleep(delay)
    os.kill(driver.pid(), signal.SIGKILL)
    killed = time.monotonic()
    assert driver.exit_code(30) is not None
    # The executors hold the graph's rings (memfds) while they run: once no process in
    # any container holds one, every executor has stopped.
    clean(c)
    took = time.monotonic() - killed
    assert took <= CLEANUP_BOUND_S, f"executors outlived their driver by {took:.1f} s"
    res = c.drive("kill_driver", seed, "--check").result(120)
    return outcome(
        "kill_driver", seed, "SIGKILL of the driver", str(res["error"]), took, f"after {delay:.2f} s"
    )


if __name__ == "__main__":

    def options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--check", action="store_true")
        p.add_argument("--cleanup", action="store_true")

    _drive.main(drive, options)
