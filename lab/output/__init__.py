"""The output stage: the results directory, the report, exports and what the commands print."""
