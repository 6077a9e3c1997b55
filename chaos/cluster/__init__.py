"""Chaos at cluster scale: faults of whole nodes of the Docker cluster (deploy/).

Each scenario module has two halves. ``drive`` runs inside the head container, as the
graph's driver (``python -m chaos.cluster.<name> --drive --seed N``): it compiles a graph
pipelined across the nodes, runs it, and reports what it saw on stdout. ``run`` runs on
the host: it starts the driver through the Docker SDK, injects the node fault (kill,
pause, disconnect, restart) at a seeded moment, times the driver's report of the
documented error, and checks that nothing is left in any container. See docs/cluster.md.
"""
