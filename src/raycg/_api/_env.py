"""The ``RAY_CGRAPH_*`` environment variables raycg reads, with their defaults.

Read when ``raycg.compile`` is called (not at import), with Ray's names and meanings,
so a deployment configured for Ray's Compiled Graph configures raycg the same way.
"""

from __future__ import annotations

import os

#: seconds ``execute()`` may block; -1 forever, 0 never.
SUBMIT_TIMEOUT = "RAY_CGRAPH_submit_timeout"
#: default seconds ``ray.get()`` on a ref may block; -1 forever.
GET_TIMEOUT = "RAY_CGRAPH_get_timeout"
#: initial size of a channel slot in bytes; slots grow for larger values.
BUFFER_SIZE_BYTES = "RAY_CGRAPH_buffer_size_bytes"
#: executions submitted but not yet read back from the actors.
MAX_INFLIGHT_EXECUTIONS = "RAY_CGRAPH_max_inflight_executions"
#: results read back and held on the caller, not yet fetched.
MAX_BUFFERED_RESULTS = "RAY_CGRAPH_max_buffered_results"
#: overlap GPU communication with compute.
OVERLAP_GPU_COMMUNICATION = "RAY_CGRAPH_overlap_gpu_communication"

DEFAULTS: dict[str, float | int | bool] = {
    SUBMIT_TIMEOUT: 10.0,
    GET_TIMEOUT: 10.0,
    BUFFER_SIZE_BYTES: 1_000_000,
    MAX_INFLIGHT_EXECUTIONS: 10,
    MAX_BUFFERED_RESULTS: 1000,
    OVERLAP_GPU_COMMUNICATION: False,
}


def read(name: str) -> float | int | bool:
    """The value of ``name`` from the environment, or its default."""
    default = DEFAULTS[name]
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        if isinstance(default, bool):
            return raw.strip().lower() in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(float(raw))
        return float(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not a number") from None
