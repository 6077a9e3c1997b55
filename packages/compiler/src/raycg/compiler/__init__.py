"""raycg.compiler: reads a Ray DAG into a small IR, runs passes, emits a Plan.

``compile_plan(dag, options)`` is the entry point; ``CompiledPlan.plan`` is the contract
with the runtime, ``CompiledPlan.graph`` the IR (``print`` it to see the compiled graph).
"""

from ._compile import CompiledPlan, compile_plan
from ._frontend import BroadcastOp
from ._pipeline import PASSES, PassFailed, run_passes
from .ir import Graph, Node

__all__ = [
    "PASSES",
    "BroadcastOp",
    "CompiledPlan",
    "Graph",
    "Node",
    "PassFailed",
    "compile_plan",
    "run_passes",
]
