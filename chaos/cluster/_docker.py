"""The host's handle on the Docker cluster of deploy/compose.yaml, through the Docker SDK.

Containers are found by their compose labels (project ``raycg``, set by
deploy/cluster.sh), so this works the same with compose v1 and v2. Faults go to the
project's own containers and network only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import docker
from docker.models.containers import Container

PROJECT = os.environ.get("RAYCG_PROJECT", "raycg")
HEAD, WORKERS = "head", ("w1", "w2")
# How long a node may take to (re)join Ray after its container (re)starts.
JOIN_TIMEOUT_S = 90.0


@dataclasses.dataclass
class Line:
    """One line of the driver's output, stamped with the host's monotonic clock on arrival."""

    at: float
    text: str


class Driver:
    """A driver process started with ``docker exec`` in a container; its stdout and stderr
    are read by a thread into a queue of stamped lines."""

    def __init__(self, cluster: Cluster, service: str, argv: list[str]) -> None:
        self._api = cluster.client.api
        container = cluster.container(service)
        env = {k: v for k, v in os.environ.items() if k.startswith("RAYCG_CHAOS_")}
        self._exec_id = self._api.exec_create(container.id, argv, stdout=True, stderr=True, environment=env)[
            "Id"
        ]
        self.lines: queue.Queue[Line | None] = queue.Queue()
        self.output: list[str] = []
        stream = self._api.exec_start(self._exec_id, stream=True, demux=False)
        self._reader = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._reader.start()

    def _read(self, stream: Iterator[bytes]) -> None:
        pending = b""
        try:
            for chunk in stream:
                pending += chunk
                *done, pending = pending.split(b"\n")
                for raw in done:
                    text = raw.decode(errors="replace")
                    self.output.append(text)
                    self.lines.put(Line(time.monotonic(), text))
        finally:
            if pending:
                self.output.append(pending.decode(errors="replace"))
            self.lines.put(None)  # end of output: the process exited

    def expect(self, prefix: str, timeout_s: float) -> Line:
        """The next line starting with ``prefix`` (other lines are kept in ``output``).

        Raises:
            AssertionError: the driver exited, or no such line came within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                raise AssertionError(
                    f"no {prefix!r} from the driver in {timeout_s} s:\n{self.tail()}"
                ) from None
            if line is None:
                raise AssertionError(f"the driver exited before {prefix!r}:\n{self.tail()}")
            if line.text.startswith(prefix):
                return line

    def expect_end(self, timeout_s: float) -> None:
        """Until the driver's output has ended (it exited)."""
        self._reader.join(timeout_s)
        assert not self._reader.is_alive(), f"the driver's output did not end in {timeout_s} s"

    def result(self, timeout_s: float) -> dict[str, Any]:
        """The driver's closing ``RESULT {json}`` line, and its exit code 0."""
        line = self.expect("RESULT ", timeout_s)
        self._reader.join(timeout_s)
        code = self.exit_code(timeout_s)
        assert code == 0, f"the driver exited {code}:\n{self.tail()}"
        return json.loads(line.text[len("RESULT ") :])  # type: ignore[no-any-return]

    def exit_code(self, timeout_s: float) -> int | None:
        deadline = time.monotonic() + timeout_s
        while True:
            info = self._api.exec_inspect(self._exec_id)
            if not info["Running"] or time.monotonic() > deadline:
                return info["ExitCode"]  # type: ignore[no-any-return]
            time.sleep(0.1)

    def pid(self) -> int:
        """The driver's process id, in this host's pid namespace (dockerd's)."""
        return int(self._api.exec_inspect(self._exec_id)["Pid"])

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.output[-n:])


class Cluster:
    """The running cluster: its containers by service name, node faults, and checks."""

    def __init__(self) -> None:
        self.client = docker.from_env(timeout=60)
        self.network = self._network()

    def _network(self) -> Any:
        nets = self.client.networks.list(filters={"label": f"com.docker.compose.project={PROJECT}"})
        if not nets:
            raise RuntimeError(f"no network of compose project {PROJECT!r}: run ./dev cluster up first")
        return nets[0]

    def container(self, service: str) -> Container:
        found = self.client.containers.list(
            all=True,
            filters={
                "label": [f"com.docker.compose.project={PROJECT}", f"com.docker.compose.service={service}"]
            },
        )
        if not found:
            raise RuntimeError(f"no container for service {service!r} of compose project {PROJECT!r}")
        return found[0]

    def services(self) -> list[str]:
        return [HEAD, *WORKERS]

    def address(self, service: str) -> str:
        """The container's fixed address on the project network (deploy/compose.yaml)."""
        c = self.container(service)
        config = c.attrs["NetworkSettings"]["Networks"].get(self.network.name) or {}
        ipam = (config.get("IPAMConfig") or {}).get("IPv4Address")
        if ipam:
            return str(ipam)
        labels = c.attrs["Config"]["Labels"]
        raise RuntimeError(f"{service} has no fixed address on {self.network.name} ({labels})")

    def drive(self, module: str, seed: int, *args: str) -> Driver:
        """Start ``python -m chaos.cluster.<module> --drive --seed N`` on the head."""
        return Driver(
            self, HEAD, ["python", "-m", f"chaos.cluster.{module}", "--drive", "--seed", str(seed), *args]
        )

    def sh(self, service: str, script: str, timeout_s: float = 30.0) -> str:
        """Run a shell script in a container; its output (it must exit 0)."""
        result = self.container(service).exec_run(["timeout", str(int(timeout_s)), "sh", "-c", script])
        out = result.output.decode(errors="replace")
        assert result.exit_code == 0, f"{service}: {script!r} exited {result.exit_code}: {out}"
        return out

    def signal(self, name: str) -> None:
        """Tell the driver on the head ``name`` (chaos.cluster._drive.wait_signal)."""
        self.sh(HEAD, f"touch /tmp/raycg-chaos-{name}")

    # --- faults -----------------------------------------------------------------------
    def kill(self, service: str) -> None:
        self.container(service).kill()  # SIGKILL to the container's init: the node is gone

    def pause(self, service: str) -> None:
        self.container(service).pause()

    def unpause(self, service: str) -> None:
        self.container(service).unpause()

    def disconnect(self, service: str) -> None:
        self.network.disconnect(self.container(service), force=True)

    def connect(self, service: str, address: str) -> None:
        self.network.connect(self.container(service), ipv4_address=address, aliases=[service])

    def restart(self, service: str) -> None:
        self.container(service).restart(timeout=5)

    # --- repair and checks ------------------------------------------------------------
    def heal(self) -> None:
        """Every node back: unpaused, running and joined to Ray (a scenario's fault may have
        left a container paused, stopped, or its raylet declared dead)."""
        stopped = []
        for service in self.services():
            c = self.container(service)
            if c.status == "paused":
                c.unpause()
            c.reload()
            if c.status in ("exited", "created", "dead"):  # "restarting": docker is on it
                stopped.append(c)
        if stopped:
            # Ray must give up on their old nodes first (its node-death window): one that
            # still counts as alive offers the worker's resources, and an actor placed on
            # it dies when it is declared dead (wait_joined counts exactly).
            self.wait_joined(len(self.services()) - len(stopped))
            for c in stopped:
                c.start()
        self.wait_joined()

    def wait_joined(self, want: int | None = None) -> None:
        """Until Ray counts exactly ``want`` live nodes (default: one per service)."""
        want = len(self.services()) if want is None else want
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        while True:
            result = self.container(HEAD).exec_run(
                [
                    "python",
                    "-m",
                    "deploy.wait_joined",
                    str(want),
                    str(int(max(deadline - time.monotonic(), 1))),
                ]
            )
            if result.exit_code == 0:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"not every node rejoined: {result.output.decode()[-500:]}")
            time.sleep(1.0)

    def leftovers(self, services: list[str] | None = None) -> dict[str, str]:
        """What raycg left in each running container: raycg segments in /dev/shm, and
        processes holding raycg memfds (empty when clean)."""
        found = {}
        script = (
            "ls /dev/shm | grep -i raycg; "
            "for p in /proc/[0-9]*; do "
            "ls -l $p/fd 2>/dev/null | grep -q 'memfd:raycg' && echo $p holds a raycg memfd; "
            "grep -q 'memfd:raycg' $p/maps 2>/dev/null && echo $p maps a raycg memfd; "
            "done; true"
        )
        for service in services or self.services():
            c = self.container(service)
            if c.status != "running":
                continue
            result = c.exec_run(["timeout", "30", "sh", "-c", script])
            out = result.output.decode(errors="replace").strip()
            if result.exit_code != 0:  # the container is going down or restarting: nothing of
                continue  # ours survives that
            if out:
                found[service] = re.sub(r"\s+", " ", out)
        return found
