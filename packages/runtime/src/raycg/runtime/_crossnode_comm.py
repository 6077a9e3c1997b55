"""CPU collectives whose members sit on other nodes than the caller's, set up from the
caller: raycg's cross-node CPU communicator (``raycg.transports.CpuNetCommunicator``).

The members are grouped by node (in rank order); on each node the member of lowest rank,
its *leader*, makes that node's part (its segment and the rings the other leaders' streams
feed, served on its process's gRPC server: ``_hosting.host_comm_part``, one
``__ray_call__`` per node and collective, all in parallel, before the actors' setup, as
the GRPC channels' rings are hosted). The parts' specs, joined, go to every member beside
its part of the plan (``ActorSetup`` extras), and each member joins at setup. A
collective whose members all sit on one node other than the caller's gets that node's
segment alone: the one-node ``CpuCommunicator``. The parts are freed with the graph's
rings on each leader (teardown, or the end of its executor); a part's close aborts its
node's members, so no executor stays blocked in a collective.

Point-to-point tensor edges between nodes need no communicator here: the GRPC channel
carries CPU tensors (docs/multinode.md).
"""

from __future__ import annotations

import uuid
from typing import Any

import ray
from ray.actor import ActorHandle
from ray.exceptions import RayChannelError

from raycg.proto import Plan
from raycg.transports import CpuCommSpec, CpuNetSpec, NetNodeSpec, join_specs

from . import _collectives, _hosting

HOST_TIMEOUT_S = 60.0


def host_groups(plan: Plan, actors: dict[str, ActorHandle]) -> dict[str, dict[str, CpuCommSpec | CpuNetSpec]]:
    """Have each node's leader host its part of every CPU collective with members on
    other nodes than the caller's; return actor id -> {collective id: the group's spec}.

    Raises:
        RayChannelError: a leader could not make its part (naming it, the collective
            and why).
    """
    nodes = {a.actor_id: a.node_id for a in plan.actors}
    labels = {a.actor_id: a.actor_label for a in plan.actors}
    pending: list[tuple[str, Any, str, list[list[int]], list[Any]]] = []
    for cid, coll in _collectives.hosted_on_members(plan).items():
        by_node: dict[str, list[int]] = {}
        for rank, member in enumerate(coll.members):
            by_node.setdefault(nodes.get(member, ""), []).append(rank)
        ranks = list(by_node.values())
        group_id, name = uuid.uuid4().hex, f"{plan.graph_id[:8]}.{cid}"
        refs: list[Any] = [
            actors[coll.members[mine[0]]].__ray_call__.remote(
                _hosting.host_comm_part,
                plan.graph_id,
                group_id,
                name,
                ranks,
                n,
                _collectives.GROUP_CAPACITY_BYTES,
            )
            for n, mine in enumerate(ranks)
        ]
        pending.append((cid, coll, group_id, ranks, refs))
    specs: dict[str, dict[str, CpuCommSpec | CpuNetSpec]] = {}
    failures = []
    for cid, coll, group_id, ranks, refs in pending:
        parts: list[NetNodeSpec] = []
        for mine, ref in zip(ranks, refs, strict=True):
            try:
                parts.append(ray.get(ref, timeout=HOST_TIMEOUT_S))
            except Exception as e:
                leader = labels.get(coll.members[mine[0]], coll.members[mine[0]])
                failures.append(f"{cid} on {leader}: {type(e).__name__}: {e}")
        if len(parts) != len(ranks):
            continue
        spec: CpuCommSpec | CpuNetSpec = (
            parts[0].local
            if len(parts) == 1
            else join_specs(f"{plan.graph_id[:8]}.{cid}", group_id, ranks, parts)
        )
        for member in coll.members:
            specs.setdefault(member, {})[cid] = spec
    if failures:
        raise RayChannelError(
            "compiled graph setup failed: cannot host a cross-node communicator's part: "
            + "; ".join(failures)
        )
    return specs
