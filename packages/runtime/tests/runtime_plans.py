"""Building Plans by hand, for the runtime's tests (which need no compiler)."""

from __future__ import annotations

from raycg.proto import CollectiveKind, CollectivePlan, Plan, TensorHint, TensorTransport, Transport


def add_channel(
    plan: Plan,
    cid: str,
    transport: int,
    writer: str | None,
    readers: list[str | None],
    slots: int = 10,
    slot_bytes: int = 1_000_000,
) -> None:
    """A channel ``cid`` written by ``writer`` and read by ``readers`` (None: the driver)."""
    ch = plan.channels.add(
        channel_id=cid, transport=transport, num_slots=slots, slot_size_bytes=slot_bytes, label=cid
    )
    if writer is None:
        ch.writer.driver = True
    else:
        ch.writer.actor_id = writer
    for r in readers:
        if r is None:
            ch.readers.add(driver=True)
        else:
            ch.readers.add(actor_id=r)


def crossnode_plan() -> Plan:
    """A graph on two nodes with a tensor edge and a collective, as the compiler emits it.

    On actors ``a`` (the driver's node, GPU 0), ``b`` (node 2, GPU 0) and ``c`` (node 2,
    no GPU)::

        x = a.embed.bind(inp).with_tensor_transport()      # auto: nccl a -> b, shm to c
        y = b.forward.bind(x, inp)
        z = c.forward.bind(x, inp)
        dag = MultiOutputNode(allreduce.bind([y, z]))      # cpu: c has no GPU
    """
    node1, node2 = "9f1c" + "1" * 52, "4be0" + "2" * 52
    a, b, c = "a1" * 16, "b2" * 16, "c3" * 16
    plan = Plan(graph_id="7e11a0c5" + "0" * 24, input_channel_id="ch0", multi_output=True)
    plan.driver_node_id = node1
    plan.input_channel_ids.extend(["ch0", "ch1"])
    plan.actors.add(actor_id=a, actor_label="Stage(a1a1a1)", node_id=node1, gpu_ids=["0"])
    plan.actors.add(actor_id=b, actor_label="Stage(b2b2b2)", node_id=node2, gpu_ids=["0"])
    plan.actors.add(actor_id=c, actor_label="Stage(c3c3c3)", node_id=node2)
    add_channel(plan, "ch0", Transport.SHM, None, [a])
    add_channel(plan, "ch1", Transport.GRPC, None, [b, c])
    add_channel(plan, "ch2", Transport.GRPC, a, [c])
    add_channel(plan, "ch3", Transport.GRPC, a, [b])
    add_channel(plan, "ch4", Transport.INPROC, b, [b], slots=1)
    add_channel(plan, "ch5", Transport.INPROC, c, [c], slots=1)
    add_channel(plan, "ch6", Transport.GRPC, b, [None])
    add_channel(plan, "ch7", Transport.GRPC, c, [None])
    shm, nccl = TensorTransport.TENSOR_SHM, TensorTransport.TENSOR_ACCELERATOR
    plan.channels[2].tensor.CopyFrom(TensorHint(transport=shm, written="with_tensor_transport()"))
    plan.channels[3].tensor.CopyFrom(TensorHint(transport=nccl, written="with_tensor_transport()"))
    plan.actors[0].tasks.add(
        method="embed", display_name="Stage.embed", inputs=["ch0"], outputs=["ch2", "ch3"]
    )
    for i, (actor, inp, mid, out) in enumerate([(1, "ch3", "ch4", "ch6"), (2, "ch2", "ch5", "ch7")]):
        tasks = plan.actors[actor].tasks
        tasks.add(method="forward", display_name="Stage.forward", inputs=[inp, "ch1"], outputs=[mid])
        coll = CollectivePlan(
            collective_id="coll0", kind=CollectiveKind.ALLREDUCE, reduce_op="SUM", members=[b, c], rank=i
        )
        coll.transport = "cpu"
        tasks.add(display_name="allreduce.SUM(Stage.forward)", inputs=[mid], outputs=[out], collective=coll)
    plan.outputs.add(channel_id="ch6", display_name="allreduce.SUM(Stage.forward)")
    plan.outputs.add(channel_id="ch7", display_name="allreduce.SUM(Stage.forward)")
    return plan
