"""The peers stage: host processes, their control plane and their resource samples."""
