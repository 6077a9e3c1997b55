"""Fault injection for communicators: a member that stalls, on purpose (the chaos
scenario ``stall_communicator``).

Off by default and costless when off: nothing is wrapped unless the environment
variable ``RAYCG_COMM_FAULTS`` is set when ``raycg.transports._cpu_comm`` is imported,
or a test calls :func:`install`. ``RAYCG_COMM_FAULTS`` is a JSON list of stalls, each::

    {"rank": 2,            the member that stalls
     "op": "allreduce",    which call ("" = any: send, recv and every collective)
     "after": 0,           let this many such calls through first
     "seconds": 3600}      how long it stalls (an abort of the group ends it at once)

A stalled member never joins its collective, as a stuck process would: the others'
waits run to their timeout, which aborts the group, which ends the stall (the stalled
call then raises ChannelClosed). Nothing stays blocked.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any

ENV = "RAYCG_COMM_FAULTS"
OPS = ("send", "recv", "allreduce", "allgather", "reducescatter", "broadcast")


@dataclasses.dataclass
class Stall:
    rank: int
    op: str = ""
    after: int = 0
    seconds: float = 3600.0
    seen: int = 0

    def hits(self, comm: Any, op: str) -> bool:
        if comm.get_rank() != self.rank or self.op not in ("", op):
            return False
        self.seen += 1
        return self.seen == self.after + 1


def _stall(comm: Any, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end and not comm.aborted:
        time.sleep(0.01)


def install(stalls: list[Stall], cls: Any = None) -> None:
    """Wrap the communicator class ``cls`` (CpuCommunicator by default) with ``stalls``."""
    if cls is None:
        from ._cpu_comm import CpuCommunicator as cls
    for op in OPS:
        original = getattr(cls, op)

        @functools.wraps(original)
        def wrapped(self: Any, *args: Any, __op: str = op, __original: Any = original, **kwargs: Any) -> Any:
            for s in stalls:
                if s.hits(self, __op):
                    _stall(self, s.seconds)
            return __original(self, *args, **kwargs)

        setattr(cls, op, wrapped)


def install_from_env(cls: Any = None) -> None:
    raw = os.environ.get(ENV)
    if not raw:
        return
    try:
        stalls = [Stall(**s) for s in json.loads(raw)]
    except (ValueError, TypeError) as e:
        raise ValueError(f"{ENV} is not a JSON list of stalls: {e}") from None
    install(stalls, cls)


__all__ = ["ENV", "Stall", "install", "install_from_env"]
