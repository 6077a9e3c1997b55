"""``overlap_gpu_communication=True`` on a real local Ray, over raycg's NCCL edge path on
CPU actors (``CpuTwin``): an actor receives a later task's communicator tensors before
it computes the task in between, and what every task returns is the same as without
the option; a failure carried by the early receive stays its reader's; a writer that
never sends its tensors times the early receive out, and teardown returns.

(On NCCL the receive is queued on the receive stream and waited for only by the task
that reads it, which is the overlap; on the twin, as on any CPU communicator, a receive
completes where it is made. ``gpu`` tests of the queued receive: packages/transports.)
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
import ray
import torch
from ray.dag import InputNode, MultiOutputNode
from ray.exceptions import RayChannelTimeoutError, RayTaskError

import raycg
from raycg.runtime import actor_running_graphs
from raycg.runtime.testing import CpuTwin

pytestmark = [pytest.mark.ray, pytest.mark.timeout(120)]


@ray.remote(num_cpus=0)
class Stage:
    def make(self, x: Any, gate: str = "") -> Any:
        """x as a tensor, once ``gate`` exists (no gate: at once)."""
        if gate:
            _wait_for(gate)
        if x == "fail":
            raise ValueError("asked to fail")
        return torch.full((4,), float(x))

    def gate_open(self, x: Any, gate: str) -> bool:
        """Whether ``gate`` exists when this runs (x: the execution's input, unused)."""
        return Path(gate).exists()

    def open_gate(self, x: Any, gate: str) -> bool:
        """Opens ``gate``; whether it was closed."""
        closed = not Path(gate).exists()
        Path(gate).touch()
        return closed

    def double(self, t: Any) -> Any:
        return t * 2


def _wait_for(path: str, timeout_s: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} was never created")
        time.sleep(0.002)


@pytest.fixture(scope="module")
def stages(ray_local: None) -> list[Any]:
    handles = [Stage.remote() for _ in range(2)]
    ray.get([h.double.remote(torch.ones(1)) for h in handles])
    yield handles
    for h in handles:
        ray.kill(h)


def _graph(stages: list[Any], gate: str, overlap: bool, first: str = "gate_open") -> Any:
    a, b = stages
    with InputNode() as inp:
        x = a.make.bind(inp, gate).with_tensor_transport(transport=CpuTwin([a, b]))
        first = getattr(b, first).bind(inp, gate)  # b's task before the one that reads x
        dag = MultiOutputNode([first, b.double.bind(x)])
    return raycg.compile(dag, get_timeout=60, overlap_gpu_communication=overlap)


def test_the_receive_comes_before_the_task_in_between(stages: list[Any], tmp_path: Path) -> None:
    gate = str(tmp_path / "gate")
    graph = _graph(stages, gate, overlap=True)
    try:
        b_tasks = next(a for a in graph.plan.actors if a.actor_id == stages[1]._actor_id.hex()).tasks
        assert [bool(t.prefetch) for t in b_tasks] == [True, False]
        drawing = graph.visualize(format="ascii")
        assert drawing.count("receives") == 1 and "'s tensors first (overlap)" in drawing
        refs = graph.execute(3)
        # b cannot run gate_open before it has x's header, which a writes only once the
        # gate exists: so gate_open sees it, whenever the gate opens.
        opener = threading.Timer(0.2, Path(gate).touch)
        opener.start()
        try:
            opened, doubled = ray.get(refs)
        finally:
            opener.cancel()
        assert opened is True
        assert doubled.tolist() == [6.0] * 4
    finally:
        graph.teardown()


def test_without_the_option_the_task_in_between_runs_first(stages: list[Any], tmp_path: Path) -> None:
    gate = str(tmp_path / "gate")
    graph = _graph(stages, gate, overlap=False, first="open_gate")
    try:
        # x comes only once the gate is open, and b's task in between opens it: this
        # would wait forever if b received x first.
        was_closed, doubled = ray.get(graph.execute(3))
        assert was_closed is True
        assert doubled.tolist() == [6.0] * 4
    finally:
        graph.teardown()


def test_results_and_failures_are_the_same_with_the_option(stages: list[Any], tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    gate.touch()  # always open: this test is about values
    inputs = [1, "fail", 2, 3, "fail", 4]
    got = {}
    for overlap in (False, True):
        graph = _graph(stages, str(gate), overlap)
        try:
            refs = [graph.execute(x) for x in inputs]  # all in flight
            rows = []
            for first, doubled in refs:
                assert ray.get(first) is True  # the failure upstream is not this task's
                try:
                    rows.append(ray.get(doubled).tolist())
                except RayTaskError as e:
                    assert "asked to fail" in str(e)
                    rows.append("failed")
            got[overlap] = rows
        finally:
            graph.teardown()
    assert got[True] == got[False] == [[2.0] * 4, "failed", [4.0] * 4, [6.0] * 4, "failed", [8.0] * 4]


def test_a_writer_that_never_sends_times_out_the_early_receive(ray_local: None, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    gate.touch()
    stall = [{"rank": 0, "op": "send", "after": 2, "seconds": 3600}]  # the third value's tensors
    env = {"env_vars": {"RAYCG_COMM_FAULTS": json.dumps(stall)}}
    a, b = Stage.options(runtime_env=env).remote(), Stage.remote()
    try:
        with InputNode() as inp:
            x = a.make.bind(inp, str(gate)).with_tensor_transport(transport=CpuTwin([a, b]))
            dag = MultiOutputNode([b.gate_open.bind(inp, str(gate)), b.double.bind(x)])
        graph = raycg.compile(dag, get_timeout=2, overlap_gpu_communication=True)
        for k in range(2):
            assert ray.get(graph.execute(k))[1].tolist() == [2.0 * k] * 4
        with pytest.raises(RayChannelTimeoutError):  # b waits in gate_open's early receive
            ray.get(graph.execute(5))
        graph.teardown()  # returns: the communicator is aborted, nothing stays blocked
        assert not actor_running_graphs(a) and not actor_running_graphs(b)
    finally:
        ray.kill(a)
        ray.kill(b)
