"""``raycg.compile``'s options: validated, defaulted from the environment, as a proto."""

from __future__ import annotations

from typing import Any

from raycg.proto import Options

from . import _env

_NAMES = {
    "submit_timeout": _env.SUBMIT_TIMEOUT,
    "get_timeout": _env.GET_TIMEOUT,
    "buffer_size_bytes": _env.BUFFER_SIZE_BYTES,
    "max_inflight_executions": _env.MAX_INFLIGHT_EXECUTIONS,
    "max_buffered_results": _env.MAX_BUFFERED_RESULTS,
    "overlap_gpu_communication": _env.OVERLAP_GPU_COMMUNICATION,
}
_OTHER = ("enable_asyncio", "default_communicator")

# Ray's experimental_compile spellings -> ours (for patch_ray()).
RAY_SPELLINGS = {
    "_submit_timeout": "submit_timeout",
    "_buffer_size_bytes": "buffer_size_bytes",
    "enable_asyncio": "enable_asyncio",
    "_max_inflight_executions": "max_inflight_executions",
    "_max_buffered_results": "max_buffered_results",
    "_overlap_gpu_communication": "overlap_gpu_communication",
    "_default_communicator": "default_communicator",
}


def build_options(**options: Any) -> Options:
    """Options for one compile: given values, else ``RAY_CGRAPH_*``, else defaults.

    Raises:
        TypeError: an unknown option (named).
        ValueError: a value out of range (named).
    """
    unknown = set(options) - set(_NAMES) - set(_OTHER)
    if unknown:
        raise TypeError(
            f"raycg.compile() got unknown option(s) {sorted(unknown)}; known: {sorted([*_NAMES, *_OTHER])}"
        )
    v = {k: (options[k] if options.get(k) is not None else _env.read(env)) for k, env in _NAMES.items()}
    for k in ("submit_timeout", "get_timeout"):
        if v[k] < 0 and v[k] != -1:
            raise ValueError(f"{k} must be -1 (forever), 0 or a positive number of seconds, got {v[k]!r}")
    for k in ("buffer_size_bytes", "max_inflight_executions", "max_buffered_results"):
        if int(v[k]) < 1:
            raise ValueError(f"{k} must be >= 1, got {v[k]!r}")
    return Options(
        submit_timeout_s=float(v["submit_timeout"]),
        get_timeout_s=float(v["get_timeout"]),
        buffer_size_bytes=int(v["buffer_size_bytes"]),
        max_inflight_executions=int(v["max_inflight_executions"]),
        max_buffered_results=int(v["max_buffered_results"]),
        enable_asyncio=bool(options.get("enable_asyncio", False)),
        overlap_gpu_communication=bool(v["overlap_gpu_communication"]),
    )
