"""Pause a worker container (docker pause: every process of the node frozen, its sockets
open) while a graph pipelined across head, w1 and w2 runs.

- short: paused for longer than the get timeout (and than a keepalive ping) but well
  within Ray's node-death timeout. The gets that outlive their timeout raise
  RayChannelTimeoutError; no stream breaks (a peer is declared broken only after Ray's
  node-death window of silence); once the node is unpaused, those refs return their late
  results, in order, and the graph runs on.
- long: paused past Ray's node-death timeout (kept paused until the caller's error): the
  node-loss outcome, ActorDiedError naming the actor on that node, within the bound of
  the node being declared dead.
"""

from __future__ import annotations

import argparse
import random
import time

import ray
from ray.exceptions import ActorDiedError, RayChannelTimeoutError

from .._harness import Outcome
from . import _drive

GET_TIMEOUT_S = 0.5
# docker pause for the short case: past the get timeout and past a keepalive ping (1 s),
# inside the node-death timeout.
SHORT_PAUSE_S = (1.0, 4.0)
# The longest the long case waits for the caller's error while the node stays paused.
LONG_PAUSE_S = 25.0


def drive_short(graph: object) -> dict[str, object]:
    timeouts, k, first = 0, 0, None
    refs = [(i, graph.execute(i)) for i in range(_drive.DEPTH)]  # type: ignore[attr-defined]
    k = _drive.DEPTH
    deadline = time.monotonic() + 60
    recovered = 0
    while recovered < 200 and time.monotonic() < deadline:
        want, ref = refs[0]
        try:
            got = ray.get(ref, timeout=GET_TIMEOUT_S)
        except RayChannelTimeoutError as e:
            timeouts += 1
            if first is None:
                first = e
                _drive.say("TIMEOUT", str(e).splitlines()[0])
            continue  # the same ref again: a timed-out get does not use it up
        assert got == want, f"execution {want} returned {got!r}"
        refs.pop(0)
        refs.append((k, graph.execute(k)))  # type: ignore[attr-defined]
        k += 1
        if first is not None:
            recovered += 1
    assert first is not None, "no get timed out while the node was paused"
    assert recovered >= 200, f"only {recovered} executions after the pause"
    return {"error": type(first).__name__, "timeouts": timeouts, "recovered": recovered}


def drive(seed: int, args: argparse.Namespace) -> None:
    stages = _drive.make_stages()
    ids = _drive.actor_ids(stages)
    graph = _drive.chain(list(stages.values()), get_timeout=GET_TIMEOUT_S if args.short else 60)
    _drive.warm(graph)
    _drive.say("READY")
    if args.short:
        res = drive_short(graph)
        graph.teardown()
        _drive.wait_idle(list(stages.values()))
        _drive.result(**res)
        return
    err = _drive.pump(graph)
    assert isinstance(err, ActorDiedError), repr(err)
    named = [node for node, actor_id in ids.items() if actor_id in str(err)]
    _drive.reuse([s for node, s in stages.items() if node != args.victim])
    _drive.result(error=type(err).__name__, named=named)


def run(seed: int, variant: str | None = None) -> Outcome:
    """``variant``: "short" or "long"; by default the seed chooses."""
    from ._host import NODE_BOUND_S, NODE_DEATH_S, clean, cluster, outcome, start, within  # host only

    c = cluster()
    rng = random.Random(seed)
    victim, delay = rng.choice(["w1", "w2"]), rng.uniform(0.2, 1.0)
    short = rng.random() < 0.5 if variant is None else variant == "short"
    pause_s = rng.uniform(*SHORT_PAUSE_S) if short else LONG_PAUSE_S
    args = ["--victim", victim] + (["--short"] if short else [])
    driver = start(c, "pause_worker", seed, *args)
    time.sleep(delay)
    c.pause(victim)
    paused = time.monotonic()
    try:
        if short:
            line = driver.expect("TIMEOUT ", pause_s + NODE_BOUND_S)
            took = within(line.at - paused, GET_TIMEOUT_S + NODE_BOUND_S, line.text)
            time.sleep(max(pause_s - (time.monotonic() - paused), 0))
        else:
            line = driver.expect("ERROR ", LONG_PAUSE_S)
            # The bound counts from Ray's verdict, due NODE_DEATH_S after the pause.
            took = within(line.at - paused - NODE_DEATH_S, NODE_BOUND_S, line.text)
    finally:
        c.unpause(victim)
    res = driver.result(120)
    if not short:
        assert res["named"] == [victim], f"ActorDiedError should name the actor on {victim}: {line.text}"
    clean(c)
    kind = (
        "docker pause, within the node-death timeout"
        if short
        else "docker pause, past the node-death timeout"
    )
    held = pause_s if short else line.at - paused
    detail = f"{victim} for {held:.1f} s after {delay:.2f} s"
    if short:
        detail += f"; {res['timeouts']} gets timed out, {res['recovered']} executions after"
    return outcome("pause_worker", seed, kind, str(res["error"]), took, detail)


if __name__ == "__main__":

    def options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--victim", required=True)
        p.add_argument("--short", action="store_true")

    _drive.main(drive, options)
