"""What ``execute`` must be called with: the arguments the graph's InputNode is used for.

Read from the plan once, at setup. Every task argument taken from a channel the driver
writes starts with a projection of the caller's ``(args, kwargs)``: ``first_arg`` (the
InputNode bound itself), ``index`` (``inp[i]``) or ``key`` (``inp.key``). As in Ray
(``CompiledDAG._check_inputs``), ``execute`` must then pass exactly as many positional
arguments as the graph reads (one for the InputNode itself, ``i + 1`` for the highest
``inp[i]``), and every keyword argument it reads; other keyword arguments are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from raycg.proto import Plan

# Ray's wording, which code and tests written for Ray's Compiled Graph match.
_RAY_COUNT = "dag.execute() or dag.execute_async() must be called with {n} positional args, got {m}"
_RAY_KWARG = "dag.execute() or dag.execute_async() must be called with kwarg `{key}`"


@dataclass(frozen=True)
class InputSignature:
    """The positional count and the keyword names a graph's executions must pass.

    ``readers`` names, for each input the graph reads (``"inp"``, ``"inp[1]"``,
    ``"inp.x"``), the first task that reads it, for the error messages.
    """

    num_positional: int
    kwargs: tuple[str, ...]
    readers: dict[str, str]

    @classmethod
    def of(cls, plan: Plan) -> InputSignature:
        from_driver = {c.channel_id for c in plan.channels if c.writer.WhichOneof("kind") == "driver"}
        positional: set[int] = set()
        kwargs: dict[str, None] = {}
        readers: dict[str, str] = {}
        for actor in plan.actors:
            for task in actor.tasks:
                args = [*task.args, *(kw.value for kw in task.kwargs)]
                for arg in args:
                    if arg.WhichOneof("source") != "input_slot" or not arg.projections:
                        continue
                    if task.inputs[arg.input_slot] not in from_driver:
                        continue
                    first = arg.projections[0]
                    kind = first.WhichOneof("kind")
                    if kind == "first_arg":
                        positional.add(0)
                        name = "inp"
                    elif kind == "index":
                        positional.add(first.index)
                        name = f"inp[{first.index}]"
                    else:
                        kwargs[first.key] = None
                        name = f"inp.{first.key}"
                    readers.setdefault(name, task.display_name or task.method)
        count = max(positional) + 1 if positional else 0
        return cls(count, tuple(kwargs), readers)

    def check(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Raise before anything is sent if ``args``/``kwargs`` do not fit the graph.

        Raises:
            ValueError: the wrong number of positional arguments, or a keyword argument
                the graph reads is missing (Ray's message, then what the graph reads).
        """
        if len(args) != self.num_positional:
            raise ValueError(
                _RAY_COUNT.format(n=self.num_positional, m=len(args)) + f". {self._what_is_read()}"
            )
        for key in self.kwargs:
            if key not in kwargs:
                raise ValueError(
                    _RAY_KWARG.format(key=key)
                    + f". inp.{key} is read by {self.readers[f'inp.{key}']}; {self._what_is_read()}"
                )

    def _what_is_read(self) -> str:
        if not self.readers:
            return "The graph reads no argument of execute()"
        shown = ", ".join(f"{name} (by {task})" for name, task in self.readers.items())
        return f"The graph reads {shown}"
