"""Kill a worker container (SIGKILL to all its processes: the node is lost) while a
graph pipelined across head, w1 and w2 runs. Every pending get and the next call must
raise ActorDiedError naming the actor on that node, later calls RayChannelError caused
by it, within the bound; the stages on the other nodes serve a new graph."""

from __future__ import annotations

import argparse
import random
import time

from ray.exceptions import ActorDiedError, RayChannelError

from .._harness import Outcome
from . import _drive


def drive(seed: int, args: argparse.Namespace) -> None:
    stages = _drive.make_stages()
    ids = _drive.actor_ids(stages)
    graph = _drive.chain(list(stages.values()), get_timeout=30)
    _drive.warm(graph)
    _drive.say("READY")
    err = _drive.pump(graph)
    assert isinstance(err, ActorDiedError), repr(err)
    named = [node for node, actor_id in ids.items() if actor_id in str(err)]
    later: BaseException | None = None
    for _ in range(2):  # the next call may report the death itself, then RayChannelError
        try:
            graph.execute(0)
        except ActorDiedError:
            continue
        except RayChannelError as e:
            later = e
            break
    assert later is not None and isinstance(later.__cause__, ActorDiedError), repr(later)
    survivors = [s for node, s in stages.items() if node != args.victim]
    _drive.reuse(survivors)
    _drive.result(error=type(err).__name__, named=named)


def run(seed: int) -> Outcome:
    from ._host import NODE_BOUND_S, clean, cluster, outcome, start, within  # host only: Docker SDK

    c = cluster()
    rng = random.Random(seed)
    victim, delay = rng.choice(["w1", "w2"]), rng.uniform(0.2, 1.5)
    driver = start(c, "kill_worker", seed, "--victim", victim)
    time.sleep(delay)
    c.kill(victim)
    killed = time.monotonic()
    line = driver.expect("ERROR ", NODE_BOUND_S + 30)
    took = within(line.at - killed, NODE_BOUND_S, line.text)
    res = driver.result(120)
    assert res["named"] == [victim], f"ActorDiedError should name the actor on {victim}: {line.text}"
    clean(c)
    return outcome("kill_worker", seed, "docker kill", res["error"], took, f"{victim} after {delay:.2f} s")


if __name__ == "__main__":
    _drive.main(drive, lambda p: p.add_argument("--victim", required=True))
