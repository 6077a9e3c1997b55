"""Run every cluster-scale scenario several times and write their table into
docs/failures.md ("At cluster scale"). Needs the cluster up (./dev cluster up, with
deploy/compose.chaos.yaml: ``./dev cluster chaos`` does both).

    python -m chaos.report --cluster --runs 3 [--seed N] [--only kill_worker] [--write]

Prints one line per run and a row per scenario and fault: runs, outcomes, and the worst
time from the fault to what the caller got.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import os
import platform
import random
import sys

from .._harness import Outcome
from ..report import DOC
from ._host import CLEANUP_BOUND_S, NODE_BOUND_S, NODE_DEATH_S, cluster, reset
from .test_cluster import SCENARIOS, run

BEGIN, END = "<!-- cluster-chaos-report:begin -->", "<!-- cluster-chaos-report:end -->"


def run_all(scenarios: list[str], runs: int, seed: int) -> tuple[list[Outcome], list[str]]:
    outcomes, failures = [], []
    for scenario in scenarios:
        for k in range(runs):
            s = seed + k
            try:
                o = run(scenario, s)
                outcomes.append(o)
                print(o.line(), flush=True)
            except Exception as e:  # a failed check: report it, keep going
                failures.append(f"{scenario} seed={s}: {type(e).__name__}: {_short(e)}")
                print(f"[chaos] FAILED {failures[-1]}", flush=True)
                reset(cluster())
    return outcomes, failures


def _short(e: BaseException) -> str:
    """The assertion's first line and the driver's ERROR line, if any: enough for a table."""
    lines = str(e).splitlines()
    errors = [line for line in lines if line.startswith(("ERROR ", "AssertionError"))]
    return " / ".join(dict.fromkeys([lines[0] if lines else "", *errors[-2:]]))[:600]


def table(outcomes: list[Outcome], failures: list[str]) -> str:
    groups: dict[tuple[str, str], list[Outcome]] = collections.defaultdict(list)
    for o in outcomes:
        groups[(o.scenario, o.fault)].append(o)
    rows = [
        "| scenario | fault | runs | what the caller got | worst time to it |",
        "|---|---|---:|---|---:|",
    ]
    for (scenario, fault), group in sorted(groups.items()):
        got = ", ".join(f"{n}x {e}" for e, n in collections.Counter(o.error for o in group).items())
        worst = max(o.seconds_to_error for o in group)
        rows.append(f"| {scenario} | {fault} | {len(group)} | {got} | {worst:.3f} s |")
    n = len(failures)
    summary = f"{len(outcomes)} runs passed every check, {n} failed" + (":" if n else ".")
    return "\n".join([*rows, "", summary, *[f"- {f}" for f in failures]])


def write(text: str, seed: int, runs: int) -> None:
    doc = DOC.read_text()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    block = (
        f"{BEGIN}\nLast run: {stamp}, `python -m chaos.report --cluster --runs {runs} --seed {seed}`, "
        f"head + 2 workers in Docker on {platform.node() or 'this machine'} ({os.cpu_count()} cores); "
        f"bounds: node faults {NODE_BOUND_S} s (for a paused node: from Ray's verdict, due "
        f"{NODE_DEATH_S:g} s after the pause), cleanup {CLEANUP_BOUND_S} s.\n\n{text}\n{END}"
    )
    start, end = doc.index(BEGIN), doc.index(END) + len(END)
    DOC.write_text(doc[:start] + block + doc[end:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos.report --cluster")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=random.randrange(1 << 20))
    parser.add_argument("--only", action="append", help="a scenario of test_cluster.SCENARIOS (repeatable)")
    parser.add_argument("--write", action="store_true", help=f"update the table in {DOC}")
    args = parser.parse_args(argv)
    outcomes, failures = run_all(args.only or SCENARIOS, args.runs, args.seed)
    text = table(outcomes, failures)
    print(text)
    if args.write:
        write(text, args.seed, args.runs)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
