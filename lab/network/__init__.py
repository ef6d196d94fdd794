"""The network stage: namespaces and links of one run, what the machine allows."""
