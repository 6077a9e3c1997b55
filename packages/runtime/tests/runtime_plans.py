"""Building Plans by hand, for the runtime's tests (which need no compiler)."""

from __future__ import annotations

from raycg.proto import Plan


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
