"""The analysis stage: from a run's records to metrics, statistics, verdicts and comparisons."""
