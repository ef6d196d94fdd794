"""A machine's part of a run in a process of its own: the agent that serves it (agent.py), the
`Machine` that drives it from the coordinator (machine.py), and the Ray cluster that places
agents on machines (cluster.py)."""
