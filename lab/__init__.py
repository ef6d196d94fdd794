"""p2p-lab: measure libp2p peers for real, in real network namespaces."""

__version__ = "0.1.0"
