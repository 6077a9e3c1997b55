"""Kill a stage of a pipelined graph at a random point: ray.kill, SIGKILL, or os._exit
inside a method. The caller must get ActorDiedError within the bound (pending gets
and the next call), then RayChannelError caused by it; the survivors stay alive and
serve calls; nothing is left behind."""

from __future__ import annotations

import collections
import os
import random
import signal
import threading
import time

import ray
from ray.dag import InputNode
from ray.exceptions import ActorDiedError, RayChannelError

import raycg

from ._harness import Outcome, cli, expect_error, kill_all, make_stages, no_leaks

HOW = ("ray.kill", "sigkill", "os._exit")


def _kill(how: str, stage: object, pid: int) -> None:
    if how == "ray.kill":
        ray.kill(stage)
    elif how == "sigkill":
        os.kill(pid, signal.SIGKILL)
    else:  # os._exit inside a method: the next .remote() call on the stage exits it
        stage.__ray_call__.remote(lambda self: os._exit(1))  # type: ignore[attr-defined]


def run(seed: int) -> Outcome:
    rng = random.Random(seed)
    how, victim, delay = rng.choice(HOW), rng.randrange(3), rng.uniform(0.05, 0.6)
    stages = make_stages(3)
    pids = ray.get([s.pid.remote() for s in stages])
    killed_at: list[float] = []
    try:
        with no_leaks(stages):
            with InputNode() as inp:
                dag = stages[2].work.bind(stages[1].work.bind(stages[0].work.bind(inp)))
            graph = raycg.compile(dag, max_inflight_executions=8, get_timeout=-1)
            inflight: collections.deque = collections.deque()
            counter = iter(range(1 << 30))

            def step() -> None:
                inflight.append(graph.execute(next(counter)))
                if len(inflight) >= 8:
                    ray.get(inflight.popleft())

            def killer() -> None:
                time.sleep(delay)
                killed_at.append(time.monotonic())
                _kill(how, stages[victim], pids[victim])

            threading.Thread(target=killer, daemon=True).start()
            err, took = expect_error(step, ActorDiedError, killed_at)
            # The next call may still report the death itself; after that, RayChannelError
            # caused by it.
            later: BaseException | None = None
            for _ in range(2):
                try:
                    graph.execute(0)
                    raise AssertionError("execute after the death did not raise")
                except ActorDiedError:
                    continue
                except RayChannelError as e:
                    later = e
                    break
            assert later is not None and isinstance(later.__cause__, ActorDiedError), repr(later)
            for i, s in enumerate(stages):
                if i != victim:
                    assert ray.get(s.work.remote(i, 0)) == i  # the survivors serve calls
        return Outcome(
            "kill_actor", seed, f"{how} stage {victim} after {delay:.2f} s", type(err).__name__, took
        )
    finally:
        kill_all(stages)


if __name__ == "__main__":
    cli(run)
