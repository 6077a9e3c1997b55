"""execute/get from several threads, and several graphs on the same actors."""

from __future__ import annotations

import random
import threading

import pytest
import ray
from ray.dag import InputNode

import raycg

from .conftest import Worker, wait_process_gone

pytestmark = [pytest.mark.ray, pytest.mark.timeout(120)]


def test_execute_and_get_from_many_threads(actors: list) -> None:
    with InputNode() as inp:
        graph = raycg.compile(actors[1].inc.bind(actors[0].inc.bind(inp)), max_inflight_executions=4)
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        rng = random.Random(k)
        try:
            refs = [(i, graph.execute(1000 * k + i)) for i in range(30)]
            rng.shuffle(refs)
            for i, ref in refs:
                assert ray.get(ref) == 1000 * k + i + 2
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        graph.teardown()
    assert not errors, [str(e) for e in errors]


@ray.remote(num_cpus=0)
class Exclusive:
    """Records whether two of its methods ever overlapped."""

    def __init__(self) -> None:
        self.running = 0
        self.overlaps = 0

    def step(self, x: int) -> int:
        self.running += 1
        self.overlaps += self.running > 1
        for _ in range(2000):  # some work with the GIL released now and then
            pass
        self.running -= 1
        return x + 1

    def overlap_count(self) -> int:
        return self.overlaps


def test_graphs_sharing_actors_never_run_tasks_concurrently(ray_local: None) -> None:
    a, b = Exclusive.remote(), Exclusive.remote()
    with InputNode() as inp:
        g1 = raycg.compile(b.step.bind(a.step.bind(inp)), max_inflight_executions=2)
    with InputNode() as inp:
        g2 = raycg.compile(a.step.bind(b.step.bind(inp)), max_inflight_executions=2)  # the other way round
    with InputNode() as inp:
        g3 = raycg.compile(a.step.bind(inp))
    try:
        rng = random.Random(0)
        pending: list[tuple[object, int]] = []
        for i in range(300):  # interleave submissions and gets of three graphs at random
            g = rng.choice([g1, g2, g3])
            pending.append((g.execute(i), i + (1 if g is g3 else 2)))
            if rng.random() < 0.4:
                ref, want = pending.pop(rng.randrange(len(pending)))
                assert ray.get(ref) == want
        for ref, want in pending:
            assert ray.get(ref) == want
        assert ray.get([a.overlap_count.remote(), b.overlap_count.remote()]) == [0, 0]
        g2.teardown()  # tear down in any order: the others keep running
        assert ray.get(g1.execute(1)) == 3 and ray.get(g3.execute(1)) == 2
        g3.teardown()
        assert ray.get(g1.execute(1)) == 3
    finally:
        for g in (g1, g2, g3):
            g.teardown()
        ray.kill(a)
        ray.kill(b)


def test_an_error_in_one_graph_leaves_the_others_alone(ray_local: None) -> None:
    a = Worker.remote()
    with InputNode() as inp:
        bad = raycg.compile(a.fail.bind(inp))
    with InputNode() as inp:
        good = raycg.compile(a.inc.bind(inp))
    try:
        with pytest.raises(KeyError):
            ray.get(bad.execute(1))
        assert ray.get(good.execute(1)) == 2
    finally:
        bad.teardown()
        good.teardown()
        ray.kill(a)


def test_an_actor_death_fails_every_graph_it_is_in(ray_local: None) -> None:
    a, b = Worker.remote(), Worker.remote()
    with InputNode() as inp:
        g1 = raycg.compile(b.inc.bind(a.inc.bind(inp)), get_timeout=-1)
    with InputNode() as inp:
        g2 = raycg.compile(a.inc.bind(inp), get_timeout=-1)
    with InputNode() as inp:
        g3 = raycg.compile(b.inc.bind(inp), get_timeout=-1)
    try:
        assert ray.get([g1.execute(1), g2.execute(1), g3.execute(1)]) == [3, 2, 2]
        pid = ray.get(a.pid.remote())
        ray.kill(a)
        wait_process_gone(pid)
        for g in (g1, g2):
            with pytest.raises(ray.exceptions.ActorDiedError):
                ray.get(g.execute(1))
        assert ray.get(g3.execute(1)) == 2  # b is alive, and so is the graph without a
    finally:
        for g in (g1, g2, g3):
            g.teardown()
        ray.kill(b)
