"""raycg.runtime: sets a Plan up on the actors, drives executions, tears down."""
