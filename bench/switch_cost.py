"""What a switch of dilation costs after its instant, on a topology's network and links.

A switch is announced ahead (nodes/protocol.py `Dilation.switch`), but the links and TCP's
minimum RTO can only follow once it has taken effect: until they have, packets are held for
the old factor's delays and virtual time runs on without them. This times that work, the way
`LocalMachine.retime` does it (the links, then every host's routes), without peers, switching
back and forth between the topology's network factor and its highest phase factor:

    .venv/bin/python bench/switch_cost.py                       # topologies/1000-peers.yaml
    .venv/bin/python bench/switch_cost.py --topology FILE --switches 10

Writes bench/results/switch-cost-<backend>-<topology>-<label>.{json,md} with the machine and commit.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import yaml
from shaped import arguments, origin, shaped_network, write

from lab.topology import parse_topology
from nodes.protocol import Dilation

DEFAULT_TOPOLOGY = Path(__file__).parent.parent / "topologies" / "1000-peers.yaml"


def measure(topology_path: Path, backend: str, switches: int) -> dict[str, Any]:
    text = topology_path.read_text()
    topology = parse_topology(yaml.safe_load(text))
    low = topology.network.time_dilation if isinstance(topology.network.time_dilation, float) else 1.0
    high = max((p.time_dilation for p in topology.workload if isinstance(p.time_dilation, float)), default=2 * low)
    dilation = Dilation(network=low)
    dilation.start()
    rows = []
    with shaped_network(text, backend, dilation) as (network, links):
        links.apply_initial()
        for k in range(switches):
            factor = high if k % 2 == 0 else low
            dilation.switch(factor, time.monotonic_ns(), time.time_ns())
            started = time.monotonic()
            change = links.retime()
            retimed = time.monotonic()
            network.retime()
            rows.append({"to": factor, "links_s": retimed - started, "routes_s": time.monotonic() - retimed,
                         "peers": len(change.peers)})
    return {"topology": topology.name, "peers": topology.peer_count, "hosts": len(topology.hosts()), "low": low,
            "high": high, "backend": backend, "switches": rows,
            "median_s": {part: statistics.median(r[part] for r in rows) for part in ("links_s", "routes_s")}}


def markdown(result: dict[str, Any]) -> str:
    median = result["median_s"]
    return "\n".join([
        f"# A switch of dilation: {result['topology']} ({result['peers']} peers in {result['hosts']} hosts), "
        f"{result['low']:g} <-> {result['high']:g}, machine {result['label']}",
        "", origin(result), "",
        "| | median over the switches | max |", "|---|---|---|",
        *(f"| {name} | {median[part] * 1000:.0f} ms | {max(r[part] for r in result['switches']) * 1000:.0f} ms |"
          for name, part in (("links (delay line, rules, trees)", "links_s"), ("routes (TCP's minimum RTO)", "routes_s"))),
        f"| whole switch | {(median['links_s'] + median['routes_s']) * 1000:.0f} ms | |", "",
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--topology", type=Path, default=DEFAULT_TOPOLOGY)
    parser.add_argument("--switches", type=int, default=10)
    parser.add_argument("--label", default="idle", help="what else the machine did (idle, two-busy-loops, ...)")
    args = arguments(parser)
    result = {**measure(args.topology, args.backend, args.switches), "label": args.label}
    write(args.out, f"switch-cost-{args.backend}-{result['topology']}-{args.label}", result, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
