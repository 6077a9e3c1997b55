"""Which actor of another node died, when a stream from that node broke.

The caller's /proc monitor cannot see a remote process, and a broken gRPC stream says
*that* something failed, not what. A stream breaks at once on a reset (a remote process
died), or once its peer has been silent for Ray's node-death window (the transports'
``SILENCE_S``: a paused, vanished or cut-off node). Ray says why a little later: a
killed actor is marked dead by its raylet within about a second, a silent node by the
GCS once its health checks give up. So on a fault, and only then, the caller asks,
every ``INTERVAL_S``:

1. Ray's node table (the GCS client's, with a timeout): a remote actor's node marked dead;
2. Ray's actor table (``ray._private.state``): a remote actor marked dead;
3. each remote node's raylet, at the address Ray registered for it: a refused TCP
   connect means its process is gone (the node is lost, seconds before the GCS says
   so); otherwise a gRPC call with a short deadline tells a raylet that *answers* (any
   reply: its node is alive) from one that is *silent* (frozen or cut off).

The first dead actor found is the cause. While every remote raylet answers, the caller
asks for ``PROBE_S`` (Ray's word on a killed actor); while one is silent, it waits for
Ray's verdict on that node, up to Ray's node-death window (``node_death_s``). None found
within the bound: a network fault. Every bound is also capped by the caller's timeout,
and so is every wait for Ray's tables (an unreachable GCS would hold ``ray.nodes()`` and
the actor table for Ray's GCS request timeout, a minute): once it is spent, the lookup
answers with what it knows.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import socket
import threading
import time

from raycg.proto import Plan
from raycg.transports import join_host_port

_log = logging.getLogger(__name__)

PROBE_S = 3.0  # covers Ray marking a killed actor dead, and a raylet's port closing
INTERVAL_S = 0.2
CONNECT_TIMEOUT_S = 0.3
# Any reply within this is a raylet that answers; none is a silent one.
ANSWER_TIMEOUT_S = 0.5
# How long a round waits for each of Ray's tables: a GCS that does not answer in this is
# unreachable for now (it answers in ms). Within the caller's budget, but at least the
# floor, so that a caller with no time left still gets Ray's word if it comes at once.
GCS_READ_S = 1.0
GCS_READ_MIN_S = 0.1
# The raylet's gRPC server answers this (grpc.health.v1, as the GCS's health checks ask).
_HEALTH_CHECK = "/grpc.health.v1.Health/Check"


def node_death_s() -> float:
    """Ray's node-death window for a silent node, as this process's Ray is configured
    (the cluster's system config and this process's ``RAY_health_check_*``): the GCS
    checks every period, gives each check its timeout, and declares the node dead after
    ``failure_threshold`` failures in a row; plus one period for the GCS's lag."""
    from ray._raylet import Config  # type: ignore[attr-defined]  # no public API for it

    period = Config.health_check_period_ms()
    timeout = Config.health_check_timeout_ms()
    threshold = Config.health_check_failure_threshold()
    return (threshold * (timeout + period) + period) / 1000.0


class RemoteDeath:
    """The graph's actors on other nodes, and the answer of the one lookup a fault gets."""

    def __init__(self, plan: Plan):
        self._remote = [(a.actor_id, a.node_id) for a in plan.actors if a.node_id != plan.driver_node_id]
        self._lock = threading.Lock()
        self._asked: threading.Event | None = None  # set once the answer is in
        self._answer: tuple[str, str] | None = None
        self._wait_s = max(PROBE_S, node_death_s())

    @staticmethod
    def of(plan: Plan) -> RemoteDeath | None:
        """None where every actor is on the caller's node (the monitor sees them all)."""
        cause = RemoteDeath(plan)
        return cause if cause._remote else None

    def first_dead(self, budget_s: float) -> tuple[str, str] | None:
        """(actor id, why) of the first remote actor found dead, or None (all alive).

        Asked once: the first caller looks, for at most ``budget_s`` (and PROBE_S, or
        Ray's node-death window while a remote raylet is silent); others wait for its
        answer (bounded as well). No lock is held while looking."""
        with self._lock:
            asked, first = self._asked, self._asked is None
            if asked is None:
                asked = self._asked = threading.Event()
        if first:
            try:
                self._answer = _look(self._remote, min(self._wait_s, budget_s), self._wait_s)
            finally:
                asked.set()
        else:
            # Bounded by this caller's budget, not the first's: a get with a shorter
            # timeout than the lookup's caller must not wait for its whole answer.
            per_round = len(self._remote) * (CONNECT_TIMEOUT_S + ANSWER_TIMEOUT_S)
            asked.wait(min(self._wait_s, budget_s) + per_round + 1.0)
        return self._answer


def _look(remote: list[tuple[str, str]], bound_s: float, silent_bound_s: float) -> tuple[str, str] | None:
    """Ask until a dead actor is found, or PROBE_S has passed with every remote raylet
    answering, or ``bound_s`` has passed (``silent_bound_s`` while a raylet is silent)."""
    start = time.monotonic()
    ray_view = _RayView([actor_id for actor_id, _ in remote])
    while True:
        found, silent = _dead_now(remote, start + bound_s, ray_view)
        if found is not None:
            return found
        waited = time.monotonic() - start
        limit = min(bound_s, silent_bound_s if silent else PROBE_S)
        if waited + INTERVAL_S > limit:
            return None
        time.sleep(INTERVAL_S)


def _dead_now(
    remote: list[tuple[str, str]], deadline: float, ray_view: _RayView
) -> tuple[tuple[str, str] | None, bool]:
    """(the first dead actor found, or None; whether some remote raylet is silent). No
    raylet is probed past ``deadline`` (each probe may take most of a second), and Ray's
    tables are waited for until it (by GCS_READ_MIN_S at least)."""
    nodes = ray_view.nodes(deadline)
    for actor_id, node_id in remote:
        if node_id in nodes and not nodes[node_id].alive:
            return (actor_id, f"its node {node_id[:8]} is dead"), False
    dead = ray_view.dead_actor(deadline)
    if dead is not None:
        return (dead, "Ray reports it dead"), False
    probed: set[str] = set()
    silent = False
    for actor_id, node_id in remote:
        node = nodes.get(node_id)
        if node is None or node_id in probed:
            continue
        if time.monotonic() >= deadline:
            break
        probed.add(node_id)
        where = join_host_port(*node.raylet)
        raylet = _raylet(node.raylet)
        if raylet == "refused":
            return (actor_id, f"its node {node_id[:8]} is lost (its raylet at {where} is gone)"), False
        silent = silent or raylet == "silent"
    return None, silent


@dataclasses.dataclass(frozen=True)
class _Node:
    alive: bool
    raylet: tuple[str, int]  # its raylet's address, as Ray registered it


def _node_table(timeout_s: float) -> dict[str, _Node] | None:
    """Ray's node table by node id (hex), or None: the GCS did not answer within
    ``timeout_s``. Through the GCS client's call that takes a timeout: ``ray.nodes()``
    has none, and waits for an unreachable GCS as long as Ray's GCS request timeout."""
    from ray._private.worker import global_worker  # no public API with a timeout
    from ray.core.generated.gcs_pb2 import GcsNodeInfo  # type: ignore[attr-defined]

    client = getattr(global_worker, "gcs_client", None)
    if client is None:  # Ray shut down (its shutdown deletes the attribute)
        return None
    try:
        infos = client.get_all_node_info(timeout=timeout_s)
    except (AttributeError, TypeError) as e:  # a Ray whose private GCS client differs
        _warn_no_node_table(f"{type(e).__name__}: {e}")
        return None
    except Exception:  # unreachable (DEADLINE_EXCEEDED, UNAVAILABLE), or Ray shut down
        return None
    return {
        node_id.hex(): _Node(
            info.state == GcsNodeInfo.ALIVE, (info.node_manager_address, info.node_manager_port)
        )
        for node_id, info in infos.items()
    }


@functools.cache
def _warn_no_node_table(why: str) -> None:
    """Once per process and reason: the lookup goes on with the actor table alone, so a
    lost node may be reported as a broken channel rather than named (checked on Ray 2.60)."""
    _log.warning(
        "raycg cannot read Ray's node table through its GCS client (%s); the cause of a "
        "failure across nodes may go unnamed with this Ray version",
        why,
    )


def _actor_dead(actor_ids: list[str]) -> str | None:
    """The first of ``actor_ids`` Ray's actor table says is dead (blocks while the GCS
    does not answer: run by :class:`_RayView` on a thread of its own)."""
    from ray._private import state  # Ray's actor table: no public API without a dashboard

    for actor_id in actor_ids:
        try:
            info = state.actors(actor_id=actor_id)
        except Exception:
            return None
        if info and info.get("State") == "DEAD":
            return actor_id
    return None


class _RayView:
    """What Ray's tables say during one lookup, never waited for past its deadline.

    The node table comes through a call with a timeout (:func:`_node_table`); the last
    one that came is kept, so that a GCS that stops answering still leaves the raylets'
    addresses to probe. The actor table has no such call (Ray's waits as long as its GCS
    request timeout, a minute): it is read on a daemon thread, at most one at a time, which
    a round waits for until its deadline; a read still running then is waited for by the
    next round, not started again (so an unreachable GCS holds one thread, not one per round).
    """

    def __init__(self, actor_ids: list[str]):
        self._actor_ids = actor_ids
        self._nodes: dict[str, _Node] = {}
        self._read: threading.Thread | None = None
        self._read_dead: list[str | None] = []  # the running read's answer, once in

    def nodes(self, deadline: float) -> dict[str, _Node]:
        table = _node_table(_read_s(deadline))
        if table is not None:
            self._nodes = table
        return self._nodes

    def dead_actor(self, deadline: float) -> str | None:
        if self._read is None:
            answer: list[str | None] = []
            self._read_dead = answer
            self._read = threading.Thread(
                target=lambda: answer.append(_actor_dead(self._actor_ids)),
                name="raycg-actor-table",
                daemon=True,
            )
            self._read.start()
        self._read.join(_read_s(deadline))
        if self._read.is_alive():
            return None  # Ray cannot say yet; the raylets may
        self._read = None
        return self._read_dead[0] if self._read_dead else None


def _read_s(deadline: float) -> float:
    return min(GCS_READ_S, max(deadline - time.monotonic(), GCS_READ_MIN_S))


def _raylet(address: tuple[str, int]) -> str:
    """ "refused" (nothing listens at ``address``), "answers" (a reply to a gRPC call,
    whatever it says), or "silent" (a connect or a call that timed out)."""
    try:
        with socket.create_connection(address, timeout=CONNECT_TIMEOUT_S):
            pass
    except ConnectionRefusedError:
        return "refused"
    except OSError:
        return "silent"  # a timeout, or no route: a network cut or a machine gone
    import grpc  # a dependency of raycg; loaded here only on a fault

    # Not through a proxy that http_proxy may name: the raylet itself must answer.
    direct = [("grpc.enable_http_proxy", 0)]
    with grpc.insecure_channel(join_host_port(*address), options=direct) as channel:
        try:
            channel.unary_unary(_HEALTH_CHECK)(b"", timeout=ANSWER_TIMEOUT_S)
        except grpc.RpcError as e:
            if e.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
                return "silent"
    return "answers"  # any reply, even a refusal of the call: the raylet's process runs
