"""The cause lookup with a GCS that does not answer: it never waits for Ray's tables past
its caller's budget, and answers with what it knows. No cluster: Ray's calls are
replaced by ones that block as Ray's do when its GCS is unreachable (``ray.nodes()`` and
the actor table: a minute; the GCS client's node table: its timeout, then an error)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import ray
from ray._private import state
from ray._private.worker import global_worker
from ray._raylet import NodeID
from ray.core.generated.gcs_pb2 import GcsNodeInfo

from raycg.proto import ActorPlan, Plan
from raycg.runtime import _remote_death

pytestmark = pytest.mark.timeout(30)  # every blocked call below blocks for 60 s


class _Gcs:
    """The GCS client's node table: ``nodes`` (None: the GCS does not answer, and the
    call fails once its timeout is spent, as Ray's does)."""

    def __init__(self, nodes: dict[NodeID, GcsNodeInfo] | None, gone: threading.Event):
        self.nodes, self.gone, self.timeouts = nodes, gone, []  # type: ignore[var-annotated]

    def get_all_node_info(self, timeout: float | None = None) -> dict[NodeID, GcsNodeInfo]:
        self.timeouts.append(timeout)
        if self.nodes is None:
            self.gone.wait(timeout)
            raise TimeoutError("RPC error: Deadline Exceeded")
        return self.nodes


@pytest.fixture
def gcs(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Makes Ray's GCS unreachable; ``gcs.answer(...)`` sets what the node table says."""
    gone = threading.Event()  # set at the end: lets every blocked call return
    reads: list[str] = []

    def blocked(*_: object, **__: object) -> None:
        gone.wait(60)

    def actors(actor_id: str) -> dict[str, str]:
        reads.append(actor_id)
        gone.wait(60)
        return {}

    client = _Gcs(None, gone)
    monkeypatch.setattr(ray, "nodes", blocked)  # what the lookup asked before
    monkeypatch.setattr(state, "actors", actors)
    monkeypatch.setattr(global_worker, "gcs_client", client, raising=False)
    client.actor_reads = reads  # type: ignore[attr-defined]
    yield client
    gone.set()
    for t in threading.enumerate():
        if t.name == "raycg-actor-table":
            t.join(10)


def _plan(node: NodeID) -> Plan:
    return Plan(driver_node_id="aa" * 28, actors=[ActorPlan(actor_id="b1", node_id=node.hex())])


def test_an_unreachable_gcs_holds_the_lookup_no_longer_than_its_budget(gcs: Any) -> None:
    # Before: ray.nodes() waited for the GCS (a minute) whatever the caller's timeout.
    death = _remote_death.RemoteDeath.of(_plan(NodeID.from_random()))
    assert death is not None
    assert death.first_dead(2.5) is None  # Ray cannot say: a network fault, in time
    assert gcs.timeouts and all(0 < t <= _remote_death.GCS_READ_S for t in gcs.timeouts)
    assert len(gcs.actor_reads) == 1  # one read in flight, waited for by every round


def test_a_dead_node_is_found_while_the_actor_table_hangs(gcs: Any) -> None:
    node = NodeID.from_random()
    gcs.nodes = {node: GcsNodeInfo(state=GcsNodeInfo.DEAD, node_manager_address="::1", node_manager_port=1)}
    death = _remote_death.RemoteDeath.of(_plan(node))
    assert death is not None
    assert death.first_dead(20) == ("b1", f"its node {node.hex()[:8]} is dead")


def test_an_answer_of_the_actor_table_that_comes_late_still_counts(
    gcs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The actor table answers after two rounds' waits: the read a round left running
    # is the one a later round takes the answer of.
    node = NodeID.from_random()
    gcs.nodes = {node: GcsNodeInfo(state=GcsNodeInfo.ALIVE, node_manager_address="::1", node_manager_port=1)}
    monkeypatch.setattr(_remote_death, "GCS_READ_S", 0.2)
    monkeypatch.setattr(_remote_death, "_raylet", lambda address: "answers")
    late = threading.Event()
    reads: list[str] = []

    def actors(actor_id: str) -> dict[str, str]:
        reads.append(actor_id)
        late.wait(0.6)
        return {"State": "DEAD"}

    monkeypatch.setattr(state, "actors", actors)
    death = _remote_death.RemoteDeath.of(_plan(node))
    assert death is not None
    assert death.first_dead(20) == ("b1", "Ray reports it dead")
    assert reads == ["b1"]
