"""The cause lookup's pieces that need no cluster: Ray's node-death window as the
transports compute it, and how a remote raylet is told refused, silent or answering."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import threading

import pytest

import raycg.transports as rt
from raycg.proto import ActorPlan, Plan
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


def test_a_caller_waiting_for_the_first_ones_answer_keeps_its_own_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The first caller looks (here: for as long as it may, with no timeout of its own);
    # a second one, with a 0.5 s budget, waits for that answer only as long as its budget.
    looking, release = threading.Event(), threading.Event()

    def slow_look(*_: object) -> None:
        looking.set()
        release.wait(60)

    monkeypatch.setattr(_remote_death, "_look", slow_look)
    plan = Plan(driver_node_id="aa", actors=[ActorPlan(actor_id="b1", node_id="bb")])
    death = _remote_death.RemoteDeath.of(plan)
    assert death is not None
    first = threading.Thread(target=death.first_dead, args=(math.inf,))
    first.start()
    try:
        assert looking.wait(30)
        second = threading.Thread(target=death.first_dead, args=(0.5,))
        second.start()
        second.join(30)  # about 0.5 s, plus a round of probes; the first looks for 60 s
        assert not second.is_alive()
        assert first.is_alive()
    finally:
        release.set()
        first.join(30)


def test_no_raylet_is_probed_past_the_callers_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    # Ten remote nodes, every raylet silent, each probe most of a second: a lookup with a
    # 0.5 s budget must stop probing once it is spent, not finish the round.
    nodes = [f"n{i}" for i in range(10)]
    table = {n: _remote_death._Node(True, ("127.0.0.1", 1)) for n in nodes}
    monkeypatch.setattr(_remote_death, "_node_table", lambda timeout_s: table)
    monkeypatch.setattr(_remote_death, "_actor_dead", lambda actor_ids: None)
    probes: list[tuple[str, int]] = []

    def silent(address: tuple[str, int]) -> str:
        probes.append(address)
        threading.Event().wait(0.4)
        return "silent"

    monkeypatch.setattr(_remote_death, "_raylet", silent)
    plan = Plan(driver_node_id="aa", actors=[ActorPlan(actor_id=f"a{n}", node_id=n) for n in nodes])
    death = _remote_death.RemoteDeath.of(plan)
    assert death is not None
    assert death.first_dead(0.5) is None
    assert len(probes) <= 2


def test_a_gcs_client_without_the_node_call_is_said_once_not_raised(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The node table comes through Ray's private GCS client: a Ray whose client lacks the
    # call (or takes other arguments) leaves the lookup without it, and says so once.
    from ray._private.worker import global_worker

    class OtherClient:
        def get_all_node_info(self) -> dict[str, object]:  # no timeout argument
            return {}

    monkeypatch.setattr(global_worker, "gcs_client", OtherClient(), raising=False)
    _remote_death._warn_no_node_table.cache_clear()
    with caplog.at_level("WARNING", logger=_remote_death.__name__):
        assert _remote_death._node_table(1.0) is None
        assert _remote_death._node_table(1.0) is None
    assert [r.getMessage().count("node table") for r in caplog.records] == [1]
    monkeypatch.delattr(global_worker, "gcs_client")  # as Ray's shutdown leaves it
    assert _remote_death._node_table(1.0) is None
