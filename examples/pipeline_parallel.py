"""Pipeline-parallel inference on raycg: a small torch model split over stage actors.

A 6-layer MLP is cut into 3 stages, one actor each; the graph passes each stage's
activations to the next with a tensor type hint (``with_tensor_transport``), and keeps
several micro-batches in flight so that the stages work at the same time. The output is
checked against the whole model run in this process.

On CPUs (here) the activations go through shared memory. The same code runs unchanged
on GPUs: give the stages ``num_gpus=1`` (``--gpus``) and each stage puts its layers on
its GPU; ``transport="auto"`` then moves the activations GPU to GPU.

    python examples/pipeline_parallel.py [--stages 3] [--micro-batches 8] [--gpus]
"""

from __future__ import annotations

import argparse

import ray
import torch
from ray.dag import InputNode

import raycg

WIDTH, LAYERS = 64, 6


def make_model(seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for _ in range(LAYERS):
        layers += [torch.nn.Linear(WIDTH, WIDTH), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers).eval()


@ray.remote(num_cpus=0)
class Stage:
    """Layers ``[start, stop)`` of the model (every stage builds the same seeded model
    and keeps its slice: no weights travel)."""

    def __init__(self, start: int, stop: int):
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.layers = make_model()[2 * start : 2 * stop].to(self.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.layers(x.to(self.device))

    def last(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x).cpu()  # the caller reads CPU tensors


def build(stages: list) -> raycg.CompiledGraph:
    """The pipeline graph: stage i's activations flow to stage i+1 through a tensor edge."""
    with InputNode() as inp:
        x = inp
        for s in stages[:-1]:
            x = s.forward.bind(x).with_tensor_transport(transport="auto", _static_shape=True)
        dag = stages[-1].last.bind(x)
    return raycg.compile(dag, max_inflight_executions=8)


def main(n_stages: int = 3, micro_batches: int = 8, gpus: bool = False) -> float:
    """Run ``micro_batches`` micro-batches through the pipeline; return the largest
    difference from the whole model (0.0 on the CPU: the same ops in the same order)."""
    per = LAYERS // n_stages
    options = {"num_gpus": 1} if gpus else {}
    stages = [
        Stage.options(**options).remote(i * per, LAYERS if i == n_stages - 1 else (i + 1) * per)
        for i in range(n_stages)
    ]
    graph = build(stages)
    try:
        batches = [
            torch.randn(16, WIDTH, generator=torch.Generator().manual_seed(i)) for i in range(micro_batches)
        ]
        refs = [graph.execute(b) for b in batches]  # all in flight: the stages overlap
        outs = [ray.get(r) for r in refs]
        with torch.no_grad():
            want = [make_model()(b) for b in batches]
        return max((o - w).abs().max().item() for o, w in zip(outs, want))
    finally:
        graph.teardown()
        for s in stages:
            ray.kill(s)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--stages", type=int, default=3)
    parser.add_argument("--micro-batches", type=int, default=8)
    parser.add_argument("--gpus", action="store_true")
    args = parser.parse_args()
    ray.init()
    print(f"max |pipeline - model| = {main(args.stages, args.micro_batches, args.gpus):.3g}")
    ray.shutdown()
