"""Topology settings that py-libp2p keeps as module constants, an environment variable or a
resource-manager limit reach the library in a peer process (not only the manifest)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT

SCRIPT = """
import json, os
from pathlib import Path
from lab.peers.settings import peer_settings
from lab.topology import load_topology
from nodes.peer import gossipsub_router, resource_manager, tune_library
from nodes.protocol import Dilation
from libp2p.kad_dht import kad_dht
from libp2p.stream_muxer.yamux import yamux

settings = peer_settings(load_topology(Path("topologies/1000-peers.yaml")), "/ip4/127.0.0.1/tcp/0", Dilation())
tune_library(settings)
print(json.dumps({
    "rtt_interval": yamux.RTT_MEASURE_INTERVAL,
    "maintenance_interval": kad_dht.ROUTING_TABLE_REFRESH_INTERVAL,
    "release_on_read": os.environ["PY_YAMUX_RELEASE_ON_READ"],
    "max_inbound": resource_manager(settings).connection_limits.max_established_inbound,
    "gossip_window": gossipsub_router(settings).mcache.window_size,
}))
"""


def test_the_1000_peer_topologys_library_settings_reach_py_libp2p() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "rtt_interval": 300.0,
        "maintenance_interval": 7200.0,
        "release_on_read": "0",
        "max_inbound": 550,
        "gossip_window": 1,
    }
