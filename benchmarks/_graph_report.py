"""The compiled-graph benchmark's report: the table, the targets, the run's entry for
docs/benchmarks.md, and the plot."""

from __future__ import annotations

import statistics
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from . import _util
from ._graph_cases import (
    COMPILE_LIMIT,
    CORE,
    ENGINES,
    IDLE_ACTORS,
    IDLE_LIMIT_PCT,
    IDLE_TOTAL_LIMIT_PCT,
    IN_FLIGHT,
    LATENCY_CASES,
    RAY_CG,
    RAYCG,
    THROUGHPUT_LIMIT,
    Plan,
    Results,
    Seconds,
)


def p50_us(samples: list[int]) -> float:
    return _util.percentile_us(samples, 50)


def executions_per_s(samples: list[int]) -> float:
    return 1e9 / statistics.median(samples)


def actors_label(n: int) -> str:
    return f"{n} actor{'s' * (n > 1)}"


def median_ms(times: list[float]) -> float:
    """Milliseconds, the median of ``times`` (seconds); NaN for an engine with nothing to time."""
    return 1e3 * statistics.median(times) if times else float("nan")


class AtLeast(_util.Target):
    """A goal that ``measured`` reach ``limit``: for throughput, where more is better."""

    @property
    def met(self) -> bool:
        return self.measured >= self.limit


def _row(what: str, values: dict[str, float], ratio: str) -> list[str]:
    return [what, *(_util.format_number(values.get(e, float("nan"))) for e in ENGINES), ratio]


def _ratio_row(what: str, values: dict[str, float], suffix: str = "") -> list[str]:
    return _row(what, values, f"{values[RAYCG] / values[RAY_CG]:.3g}{suffix}")


def table(results: Results) -> str:
    rows = []
    for case in LATENCY_CASES:
        samples = results.latency[case.label]
        for q in (50, 90) if case.size == "small" else (50,):
            values = {e: _util.percentile_us(s, q) for e, s in samples.items()}
            rows.append(_ratio_row(f"{case.label}, p{q} (µs)", values))
    throughput = {e: executions_per_s(s) for e, s in results.throughput.items()}
    rows.append(_ratio_row(f"chain of 2, {IN_FLIGHT} in flight (executions/s)", throughput, "x"))
    async_tp = {e: executions_per_s(s) for e, s in results.async_throughput.items()}
    rows.append(_ratio_row(f"the same, asyncio, {IN_FLIGHT} in flight (executions/s)", async_tp, "x"))
    for n, times in results.compile_s.items():
        values = {e: median_ms(t) for e, t in times.items()}
        rows.append(_ratio_row(f"cold compile, {actors_label(n)} (ms)", values))
    for n, times in results.first_s.items():
        values = {e: median_ms(t) for e, t in times.items()}
        rows.append(_ratio_row(f"cold compile + first execution, {actors_label(n)} (ms)", values))
    idle = {e: round(pct, 3) for e, pct in results.idle_pct.items()}
    rows.append(_row("idle graph, CPU per actor (% of a core)", idle, "-"))
    total = {e: round(pct, 3) for e, pct in results.idle_total_pct.items()}
    rows.append(_row(f"idle graph, driver + {IDLE_ACTORS} actors together (% of a core)", total, "-"))
    return _util.format_table(["Measurement", *ENGINES, "raycg / Ray CG"], rows)


def targets(results: Results) -> list[_util.Target]:
    found: list[_util.Target] = []
    for case in LATENCY_CASES:
        samples = results.latency[case.label]
        ratio = p50_us(samples[RAYCG]) / p50_us(samples[RAY_CG])
        found.append(_util.Target(f"{case.label} p50: raycg / Ray CG", ratio, case.limit, "x"))
    tp = results.throughput
    multiple = executions_per_s(tp[RAYCG]) / executions_per_s(tp[RAY_CG])
    found.append(AtLeast("throughput, chain of 2: raycg / Ray CG at least", multiple, THROUGHPUT_LIMIT, "x"))
    atp = results.async_throughput
    multiple = executions_per_s(atp[RAYCG]) / executions_per_s(atp[RAY_CG])
    found.append(AtLeast("asyncio throughput: raycg / Ray CG at least", multiple, THROUGHPUT_LIMIT, "x"))
    for n, times in results.compile_s.items():
        ratio = median_ms(times[RAYCG]) / median_ms(times[RAY_CG])
        goal = f"cold compile, {actors_label(n)}: raycg / Ray CG"
        found.append(_util.Target(goal, ratio, COMPILE_LIMIT, "x"))
    found.append(
        _util.Target("idle graph: raycg CPU per actor", results.idle_pct[RAYCG], IDLE_LIMIT_PCT, "%")
    )
    over_core = results.idle_total_pct[RAYCG] - results.idle_total_pct[CORE]
    goal = "idle graph: raycg driver + actors, above Ray core's"
    found.append(_util.Target(goal, over_core, IDLE_TOTAL_LIMIT_PCT, "%"))
    return found


def raycg_revision() -> str:
    """The commit of the code measured, marked when the engine's sources differ from it."""
    repo = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "unknown"
    changed = git("status", "--porcelain", "--", "src", "packages", "proto")
    return commit + (" with local changes" if changed else "")


def entry(plan: Plan, quick: bool, loads: tuple[float, float], results: Results) -> str:
    run_line = (
        f"latency: {plan.small.total:,} small / {plan.mib1.total:,} 1 MiB / {plan.mib8.total:,} 8 MiB "
        f"executions per engine and case (batches of {plan.small.batch:,} / {plan.mib1.batch:,} / "
        f"{plan.mib8.batch:,}); throughput: {plan.pipelined.total:,} executions (batches of "
        f"{plan.pipelined.batch:,}); compile: median of {plan.compile_reps}; idle: {plan.idle_s:g} s; "
        f"1-minute load average before and after the run {loads[0]:.2f}, {loads[1]:.2f}"
        + (" — quick run" if quick else "")
    )
    return "\n\n".join(
        [
            f"### {_util.now_utc()}",
            f"Machine: {_util.describe_machine()}, Ray {ray.__version__}, raycg {raycg_revision()}.\n"
            f"Run: {run_line}.",
            table(results),
            _util.format_targets(targets(results)),
        ]
    )


# --- the plot -----------------------------------------------------------------------


Groups = dict[str, dict[str, float]]  # group label -> engine -> value


def _medians_ms(seconds: Seconds, label: Callable[[int], str]) -> Groups:
    return {label(n): {e: median_ms(t) for e, t in times.items()} for n, times in seconds.items()}


def _panels(results: Results) -> list[tuple[str, Groups]]:
    """(title, groups) of each panel of the plot."""
    latency = {c.label: {e: p50_us(s) for e, s in results.latency[c.label].items()} for c in LATENCY_CASES}
    cold = {
        **_medians_ms(results.compile_s, actors_label),
        **_medians_ms(results.first_s, lambda n: f"{actors_label(n)}, + 1st run"),
    }
    throughput = {"throughput": {e: executions_per_s(s) for e, s in results.throughput.items()}}
    return [
        ("latency of one execution, p50 (µs)", latency),
        ("cold compile, and compile + first execution (ms)", cold),
        (f"chain of 2, {IN_FLIGHT} in flight\n(executions/s)", throughput),
        ("idle graph, CPU per actor\n(% of a core)", {"idle": results.idle_pct}),
    ]


def plot(results: Results, title: str, path: Path) -> None:
    """Per case, the three engines side by side, on log scales."""
    import matplotlib  # only for --record: a plain run needs no plotting library

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: a smaller, greppable file
    from matplotlib import pyplot as plt

    # Latency across the top; compile, throughput and idle CPU below it.
    fig, axes = plt.subplot_mosaic(
        [["a", "a", "a"], ["b", "c", "d"]], figsize=(12, 8), width_ratios=[4, 1, 1]
    )
    for ax, (panel_title, groups) in zip(axes.values(), _panels(results)):
        _bars(ax, panel_title, groups)
    axes["a"].legend(loc="upper right", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _bars(ax: Any, title: str, groups: Groups) -> None:
    """Grouped bars, one group per case, each bar labelled with its value."""
    width = 0.8 / len(ENGINES)
    floor = 0.01  # a log scale cannot show 0 (an idle raycg may measure 0%)
    for k, engine in enumerate(ENGINES):
        xs = [g + (k - 1) * width for g in range(len(groups))]
        values = [groups[label].get(engine, float("nan")) for label in groups]
        bars = ax.bar(xs, [max(v, floor) for v in values], width, label=engine)
        labels = [_util.format_number(v) for v in values]
        ax.bar_label(bars, labels=labels, fontsize=6, rotation=90, padding=2)
    ax.set_yscale("log")
    ax.set_xticks(range(len(groups)), list(groups), fontsize=8, rotation=20)
    ax.set_title(title, fontsize=9)
    ax.margins(y=0.25)
