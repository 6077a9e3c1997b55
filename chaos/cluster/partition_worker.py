"""Disconnect a worker container from the compose network (a partition: its processes
run on, their packets go nowhere) while a graph pipelined across head, w1 and w2 runs,
then reconnect it. The caller must see RayChannelTimeoutError or RayChannelError (or,
if the partition outlasts Ray's node-death timeout, the node-loss ActorDiedError),
never a hang; teardown must return within the bound, and the nodes serve a new graph
once the worker is back."""

from __future__ import annotations

import argparse
import random
import time

from ray.exceptions import ActorDiedError, RayChannelError, RayChannelTimeoutError

from .._harness import Outcome
from . import _drive

GET_TIMEOUT_S = 1.0
PARTITION_S = (1.5, 8.0)
EXPECTED = (RayChannelTimeoutError, RayChannelError, ActorDiedError)


def drive(seed: int, args: argparse.Namespace) -> None:
    stages = _drive.make_stages()
    graph = _drive.chain(list(stages.values()), get_timeout=GET_TIMEOUT_S)
    _drive.warm(graph)
    _drive.say("READY")
    err = _drive.pump(graph)
    assert isinstance(err, EXPECTED), repr(err)
    t0 = time.monotonic()
    graph.teardown()  # must return, the worker still cut off or not
    _drive.say("TORNDOWN", f"{time.monotonic() - t0:.3f}")
    _drive.wait_signal(f"back-{seed}")  # the host reconnected the worker, and it is back
    alive = {node: s for node, s in stages.items() if _answers(s)}
    fresh = {node: _drive.make_stages((node,))[node] for node in _drive.NODES if node not in alive}
    _drive.reuse([{**alive, **fresh}[node] for node in _drive.NODES])
    _drive.result(error=type(err).__name__, recreated=sorted(fresh))


def _answers(stage: object) -> bool:
    import ray

    try:
        ray.get(stage.pid.remote(), timeout=30)  # type: ignore[attr-defined]
        return True
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        return False  # its node was declared dead meanwhile: a new stage replaces it


def run(seed: int) -> Outcome:
    from ._host import NODE_BOUND_S, clean, cluster, outcome, start, within  # host only: Docker SDK

    c = cluster()
    rng = random.Random(seed)
    victim, delay, cut_s = rng.choice(["w1", "w2"]), rng.uniform(0.2, 1.0), rng.uniform(*PARTITION_S)
    address = c.address(victim)
    driver = start(c, "partition_worker", seed, "--victim", victim)
    time.sleep(delay)
    c.disconnect(victim)
    cut = time.monotonic()
    try:
        line = driver.expect("ERROR ", cut_s + GET_TIMEOUT_S + NODE_BOUND_S)
        took = within(line.at - cut, GET_TIMEOUT_S + NODE_BOUND_S, line.text)
        driver.expect("TORNDOWN ", NODE_BOUND_S)
        time.sleep(max(cut_s - (time.monotonic() - cut), 0))
    finally:
        c.connect(victim, address)
    c.heal()  # back on the network; restarted if Ray declared it dead meanwhile
    c.signal(f"back-{seed}")
    res = driver.result(120)
    clean(c)
    detail = f"{victim} for {cut_s:.1f} s after {delay:.2f} s"
    if res["recreated"]:
        detail += f"; new stages on {', '.join(res['recreated'])}"
    return outcome("partition_worker", seed, "network disconnect, reconnect", str(res["error"]), took, detail)


if __name__ == "__main__":
    _drive.main(drive, lambda p: p.add_argument("--victim", required=True))
