"""raycg benchmarks: ``python -m benchmarks NAME [--quick] [--record]``.

One module per benchmark (``bench_<name>.py``), each with ``main(argv) -> int``;
``__main__`` dispatches to them and ``_util`` holds what they share. Results, with the
date and machine of every recorded run, are in docs/benchmarks.md.
"""
