"""The peer process: one py-libp2p host running the marketplace registry, driven over the control plane."""
