"""The workload stage: phases, the package catalogue, the announcement barrier."""
