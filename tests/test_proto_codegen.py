"""The checked-in generated code is what the pinned generator makes from the .proto."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
GENERATED = ("plan_pb2.py", "plan_pb2.pyi")


@pytest.mark.timeout(60)
def test_regenerating_protos_gives_no_diff(tmp_path: pathlib.Path) -> None:
    env_path = f"{pathlib.Path(sys.executable).parent}:/usr/bin:/bin"
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "proto_codegen.sh"), str(tmp_path)],
        check=True,
        env={"PATH": env_path},
    )
    for name in GENERATED:
        fresh = (tmp_path / "raycg" / "proto" / name).read_text()
        checked_in = (ROOT / "proto" / "src" / "raycg" / "proto" / name).read_text()
        assert fresh == checked_in, f"{name} is stale: run scripts/proto_codegen.sh and commit"


def test_plan_round_trips() -> None:
    from raycg.proto import Plan, Transport

    plan = Plan(graph_id="g")
    ch = plan.channels.add(channel_id="ch0", transport=Transport.SHM, num_slots=10)
    ch.readers.add(driver=True)
    assert Plan.FromString(plan.SerializeToString()) == plan
