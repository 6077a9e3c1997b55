"""raycg.compiler: reads a Ray DAG into a small IR, runs passes, emits a Plan."""
