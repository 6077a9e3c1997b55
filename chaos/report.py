"""Run every chaos scenario many times and write the table of docs/failures.md.

    python -m chaos.report --runs 10 [--seed N] [--write]
    python -m chaos.report --cluster --runs 3 [--write]   (the Docker cluster's: chaos/cluster)

Prints one line per run and a summary per scenario and fault kind: how many times it
was tried, the outcomes seen, and the worst time from fault to error.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import importlib
import platform
import random
import re
import sys
from pathlib import Path

import ray

from ._harness import ERROR_BOUND_S, Outcome, ensure_ray
from .test_chaos import SCENARIOS

DOC = Path(__file__).resolve().parent.parent / "docs" / "failures.md"
BEGIN, END = "<!-- chaos-report:begin -->", "<!-- chaos-report:end -->"


def _kind(outcome: Outcome) -> str:
    """The fault without its random numbers: 'sigkill stage 1 after 0.31 s' -> 'sigkill'."""
    return re.sub(r"\s*(stage \d+|after [\d.]+ s|\d+ in flight|after \d+|=\d+|\d+)", "", outcome.fault).strip(
        " ,"
    )


def run_all(runs: int, seed: int) -> tuple[list[Outcome], list[str]]:
    outcomes, failures = [], []
    for scenario in SCENARIOS:
        module = importlib.import_module(f"chaos.{scenario}")
        for k in range(runs):
            s = seed + k
            try:
                o = module.run(s)
                outcomes.append(o)
                print(o.line(), flush=True)
            except Exception as e:  # a failed check: report it, keep going
                failures.append(f"{scenario} seed={s}: {type(e).__name__}: {e}")
                print(f"[chaos] FAILED {failures[-1]}", flush=True)
    return outcomes, failures


def table(outcomes: list[Outcome], failures: list[str]) -> str:
    groups: dict[tuple[str, str], list[Outcome]] = collections.defaultdict(list)
    for o in outcomes:
        groups[(o.scenario, _kind(o))].append(o)
    rows = ["| scenario | fault | runs | what the caller got | worst time to it |", "|---|---|---:|---|---:|"]
    for (scenario, kind), os_ in sorted(groups.items()):
        got = ", ".join(f"{n}x {e}" for e, n in collections.Counter(o.error for o in os_).items())
        worst = max(o.seconds_to_error for o in os_)
        rows.append(f"| {scenario} | {kind} | {len(os_)} | {got} | {worst:.3f} s |")
    fails = len(failures)
    summary = f"{len(outcomes)} runs passed every check, {fails} failed" + (":" if fails else ".")
    return "\n".join([*rows, "", summary, *[f"- {f}" for f in failures]])


def write(text: str, seed: int, runs: int) -> None:
    doc = DOC.read_text()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    block = (
        f"{BEGIN}\nLast run: {stamp}, `python -m chaos.report --runs {runs} --seed {seed}`, "
        f"{platform.node() or 'this machine'}, Python {platform.python_version()}, Ray {ray.__version__}; "
        f"bound from fault to error: {ERROR_BOUND_S} s.\n\n{text}\n{END}"
    )
    start, end = doc.index(BEGIN), doc.index(END) + len(END)
    DOC.write_text(doc[:start] + block + doc[end:])


def main() -> int:
    if "--cluster" in sys.argv[1:]:  # the Docker cluster's scenarios: chaos/cluster/report.py
        from .cluster.report import main as cluster_main

        return cluster_main([a for a in sys.argv[1:] if a != "--cluster"])
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=random.randrange(1 << 20))
    parser.add_argument("--write", action="store_true", help=f"update the table in {DOC}")
    args = parser.parse_args()
    ensure_ray()
    outcomes, failures = run_all(args.runs, args.seed)
    text = table(outcomes, failures)
    print(text)
    if args.write:
        write(text, args.seed, args.runs)
    ray.shutdown()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
