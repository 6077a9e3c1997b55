"""The cause lookup's pieces that need no cluster: Ray's node-death window as the
transports compute it, and how a remote raylet is told refused, silent or answering."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

import raycg.transports as rt
from raycg.runtime import _remote_death

_BOTH = (
    "import json, os; from raycg.runtime._remote_death import node_death_s; "
    "from raycg.transports._grpc_config import silence_s; "
    "print(json.dumps([node_death_s(), silence_s()]))"
)


@pytest.mark.parametrize(
    "env",
    [
        {},
        {
            "RAY_health_check_period_ms": "1000",
            "RAY_health_check_timeout_ms": "1000",
            "RAY_health_check_failure_threshold": "5",
        },
    ],
)
def test_the_streams_silence_window_is_rays_node_death_window(env: dict[str, str]) -> None:
    # The transports never import Ray: they read Ray's variables themselves, and must
    # agree with what Ray's own configuration says (in a fresh process: Ray reads them once).
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_health_check", "RAYCG_GRPC"))}
    out = subprocess.run(
        [sys.executable, "-c", _BOTH], env={**clean, **env}, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    ray_s, ours_s = json.loads(out.stdout.strip().splitlines()[-1])
    assert ours_s == ray_s


def test_a_closed_port_is_a_lost_raylet() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connects are refused
        assert _remote_death._raylet(("127.0.0.1", port)) == "refused"


def test_a_port_that_accepts_but_never_speaks_is_a_silent_raylet() -> None:
    # A frozen raylet's kernel still completes TCP handshakes; its gRPC server says nothing.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(4)
        assert _remote_death._raylet(s.getsockname()) == "silent"


def test_any_grpc_reply_is_a_raylet_that_answers() -> None:
    # raycg's own server refuses the health check (UNIMPLEMENTED): a reply all the same.
    with rt.GrpcServer("127.0.0.1:0") as server:
        host, port = server.address.rsplit(":", 1)
        assert _remote_death._raylet((host, int(port))) == "answers"


def test_a_raylet_is_asked_directly_never_through_a_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # Through the proxy http_proxy names, an answering raylet would look silent (and the
    # lookup would wait for Ray's node-death window), and the call go to another address.
    with socket.socket() as proxy, rt.GrpcServer("127.0.0.1:0") as server:
        proxy.bind(("127.0.0.1", 0))
        proxy.listen(4)
        monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{proxy.getsockname()[1]}")
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("grpc_proxy", raising=False)
        host, port = server.address.rsplit(":", 1)
        assert _remote_death._raylet((host, int(port))) == "answers"
        proxy.setblocking(False)
        with pytest.raises(BlockingIOError):  # nobody ever connected to the proxy
            proxy.accept()
