"""Plan layer: the planner (order, levels, cycles, critical path, bounds) and the one
scheduling policy (modes, duration precedence, priorities, limits) shared by the runner and the
simulator. Imports the graph and base layers."""
