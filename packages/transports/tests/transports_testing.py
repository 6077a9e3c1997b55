"""Helpers for the transports' tests: ring endpoints in child processes, leak probes.

A :class:`Peer` is one endpoint of a ring in a spawned child, driven over a pipe: the
test sends an operation, the child runs it and sends back the result, or the exception
it raised (rebuilt here as the same raycg class). Pipes, not multiprocessing queues:
queues start feeder threads and named semaphores, which the leak checks would flag.

The module name is unique across the repository's test folders on purpose: spawned
children import it by name from sys.path.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import raycg.transports as rt

SPAWN = multiprocessing.get_context("spawn")


# --- values -----------------------------------------------------------------------


def big_array(nbytes: int = 1 << 20, seed: int = 0) -> np.ndarray:
    """A float64 array of about ``nbytes`` bytes with contents that depend on ``seed``."""
    return np.random.default_rng(seed).random(max(nbytes // 8, 1))


def digest(value: object) -> object:
    """A small comparable summary of ``value`` (arrays by shape, dtype and a hash)."""
    if isinstance(value, np.ndarray):
        raw = np.ascontiguousarray(value).tobytes()
        return ("ndarray", value.shape, value.dtype.str, hashlib.sha1(raw).hexdigest())
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [digest(v) for v in value])
    if isinstance(value, dict):
        return ("dict", sorted((repr(k), digest(v)) for k, v in value.items()))
    return ("obj", repr(value))


def torch_cases() -> dict[str, Any]:
    """CPU tensors of many kinds, deterministic, built the same way in every process."""
    import torch

    big = torch.arange(64 * 1024, dtype=torch.float32).reshape(256, 256)
    return {
        "float32_big": big,
        "bfloat16_big": torch.linspace(-3, 3, 80 * 1024).to(torch.bfloat16),
        "bfloat16_small": torch.tensor([1.5, -2.25, 3.0], dtype=torch.bfloat16),
        "int64": torch.arange(10, dtype=torch.int64),
        "bool": torch.tensor([True, False, True]),
        "transposed_big": big.t(),
        "strided_small": torch.arange(100, dtype=torch.int32)[::3],
        "scalar": torch.tensor(7.5),
        "empty": torch.empty(0, 4, dtype=torch.float16),
        "complex64": torch.tensor([1 + 2j, 3 - 4j], dtype=torch.complex64),
    }


# --- probes -----------------------------------------------------------------------


def open_fds() -> dict[str, str]:
    """This process's open file descriptors: number -> what it points to."""
    fds = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass  # the fd listdir itself used, closed by now
    return fds


def raycg_mappings() -> list[str]:
    """The raycg memfds this process maps (one entry per mapping, by memfd name)."""
    names = []
    with open("/proc/self/maps") as f:
        for line in f:
            if "memfd:raycg:" in line:
                names.append(line.split("memfd:", 1)[1].split(" (deleted)")[0].strip())
    return names


def mapping_of(address: int) -> str | None:
    """The name of the file mapped at ``address`` in this process, if any."""
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split(maxsplit=5)
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if start <= address < end:
                return fields[5].strip() if len(fields) > 5 else None
    return None


def process_state(pid: int) -> str:
    """The one-letter state of process ``pid`` (``Z``: a zombie), or "" if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return ""
    return stat[stat.rfind(b")") + 2 :].split()[0].decode()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time process ``pid`` has used."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` until it holds; the test's own timeout bounds the wait."""
    while not condition():
        time.sleep(0.005)


def is_blocked(thread: threading.Thread) -> bool:
    """Whether ``thread`` sleeps in a channel wait (a futex or a condition variable)."""
    frame = sys._current_frames().get(thread.ident)  # type: ignore[arg-type]
    return frame is not None and frame.f_code.co_name in ("futex_wait", "wait")


class Call(threading.Thread):
    """Runs ``fn()`` in a thread and keeps its result or exception for the test."""

    def __init__(self, fn: Callable[[], object]):
        super().__init__(daemon=True)
        self._fn = fn
        self.result: object = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.result = self._fn()
        except BaseException as e:
            self.error = e

    def wait_blocked(self) -> Call:
        wait_until(lambda: is_blocked(self) or not self.is_alive())
        return self

    def outcome(self) -> object:
        """Join; return the result or raise what the call raised."""
        self.join()
        if self.error is not None:
            raise self.error
        return self.result


# --- peers ------------------------------------------------------------------------


class Child:
    """A spawned child process that runs ``target(conn, *args)`` and answers operations
    sent over the pipe ``conn``; its first answer is kept as :attr:`info`."""

    def __init__(self, target: Callable[..., None], *args: Any):
        self.conn, child_conn = SPAWN.Pipe()
        self.proc = SPAWN.Process(target=target, args=(child_conn, *args), daemon=True)
        self.proc.start()
        child_conn.close()
        self.pid: int = self.proc.pid  # type: ignore[assignment]
        self.info = self.recv()

    def send(self, op: str, *args: Any) -> None:
        self.conn.send((op, args))

    def recv(self) -> Any:
        """The result of the last operation sent; raises what it raised."""
        kind, payload = self.conn.recv()
        if kind == "err":
            raise _rebuild_error(*payload)
        return payload

    def call(self, op: str, *args: Any) -> Any:
        self.send(op, *args)
        return self.recv()

    def kill(self) -> None:
        """SIGKILL the child; it stays a zombie until :meth:`stop` reaps it."""
        os.kill(self.pid, signal.SIGKILL)
        wait_until(lambda: process_state(self.pid) in ("Z", ""))

    def stop(self) -> None:
        """Ask the child to exit (kill it if it is stuck in an operation) and reap it."""
        if self.proc.exitcode is None and process_state(self.pid) not in ("Z", ""):
            os.kill(self.pid, signal.SIGCONT)  # a test may have stopped it
            try:
                self.send("exit")
            except OSError:
                pass
            self.proc.join(10)  # cleanup, not an assertion: a stuck child is killed
            if self.proc.exitcode is None:
                self.proc.kill()
        self.proc.join()
        self.conn.close()
        self.proc.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.exitcode is None and exc[0] is not None:
            self.proc.kill()
        self.stop()


class Peer(Child):
    """A ring endpoint (``role`` "writer" or "reader") in a spawned child process."""

    def __init__(self, spec: rt.ShmRingSpec, role: str, index: int = 0, **kwargs: Any):
        super().__init__(_serve, spec, role, index, kwargs)  # its first answer: the end is open


def _rebuild_error(type_name: str, message: str, attrs: dict[str, Any]) -> BaseException:
    cls = getattr(rt, type_name, None)
    if cls is rt.SlotPinned:
        return rt.SlotPinned(message, **attrs)
    if isinstance(cls, type) and issubclass(cls, BaseException):
        return cls(message)
    return RuntimeError(f"{type_name}: {message}")


def _serve(conn: Any, spec: rt.ShmRingSpec, role: str, index: int, kwargs: dict[str, Any]) -> None:
    """The child's loop: open the endpoint, then run operations until "exit"."""
    state: dict[str, Any] = {"held": []}
    try:
        ep = rt.open_writer(spec, **kwargs) if role == "writer" else rt.open_reader(spec, index, **kwargs)
    except Exception as e:
        conn.send(("err", (type(e).__name__, str(e), {})))
        return
    conn.send(("ok", os.getpid()))
    while True:
        op, args = conn.recv()
        if op == "exit":
            return
        try:
            conn.send(("ok", _OPS[op](ep, state, *args)))
        except Exception as e:
            attrs = {k: getattr(e, k) for k in ("reader_index", "seq", "description") if hasattr(e, k)}
            conn.send(("err", (type(e).__name__, str(e), attrs)))


def _op_write(ep: Any, state: dict, value: object, timeout_s: float | None = None) -> None:
    ep.write(value, timeout_s)


def _op_write_pinned(
    ep: Any, state: dict, value: object, timeout_s: float | None, raise_if_pinned: bool
) -> None:
    ep.write(value, timeout_s, raise_if_pinned=raise_if_pinned)


def _op_write_many(ep: Any, state: dict, values: list[object]) -> None:
    for v in values:
        ep.write(v)


def _op_write_torch(ep: Any, state: dict) -> list[str]:
    cases = torch_cases()
    for v in cases.values():
        ep.write(v)
    ep.write(cases)  # all of them in one value
    return list(cases)


def _op_read(ep: Any, state: dict, timeout_s: float | None = None) -> object:
    return ep.read(timeout_s)


def _op_read_many(ep: Any, state: dict, n: int) -> list[object]:
    return [digest(ep.read()) for _ in range(n)]


def _op_hold(ep: Any, state: dict) -> object:
    """Read a value and keep it (pinning its slot if it was read zero-copy)."""
    value = ep.read()
    state["held"].append(value)
    return digest(value)


def _op_drop(ep: Any, state: dict) -> None:
    state["held"].clear()


_OPS: dict[str, Callable[..., object]] = {
    "write": _op_write,
    "write_pinned": _op_write_pinned,
    "write_many": _op_write_many,
    "write_torch": _op_write_torch,
    "read": _op_read,
    "read_many": _op_read_many,
    "hold": _op_hold,
    "drop": _op_drop,
    "pinned": lambda ep, state: ep.pinned(),
    "close": lambda ep, state: ep.close(),
}
