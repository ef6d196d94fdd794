"""`network.time_dilation: auto`: the dilation a topology needs on this machine, from a pilot.

The fidelity guard's physics (lab/analysis/guard.py): timers run late once the peers ask for
more CPU than the machine has, and dilating time by N spreads the same work over N times as
much real time. So the factor is the peers' demand at N = 1, in cores, over what the machine
can give without queueing:

    N = ceil(concurrency x (CPU-s per join) / (join latency) / (UTILIZATION x cores))

The join is the unit because the bootstrap is the phase that keeps `concurrency` operations
in flight from the first second. Its cost and latency are measured here, by a pilot: the
topology scaled to PILOT_PEERS peers, its workload cut to the bootstrap, run at PILOT_FACTOR so
that the pilot itself does not queue. What the pilot cannot see: a join costs more in a larger
network (more of its queries need new connections; docs/scaling.md), and phases after the
bootstrap may ask for more. The figure is a floor, recorded with its inputs in the manifest,
and the guard of the run says whether it sufficed and what it would have needed.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from lab.analysis.figures import Analysis
from lab.errors import CalibrationError, SetupError
from lab.metric_names import CPU_PER_OPERATION
from lab.topology import BootstrapPhase, Topology, parse_topology, set_field
from lab.workload.phases import rerun_phases
from nodes.protocol import Dilation

PILOT_PEERS = 40
PILOT_FACTOR = 10.0
UTILIZATION = 0.5  # of the machine's cores: the busy share below which timers stay on time
Pilot = Callable[[Topology, Dilation, Path], Awaitable[Analysis]]  # runs a topology at a dilation into a directory


def fixed(topology: Topology, factor: float, reason: str) -> Dilation:
    """The run's dilation at `factor`, each phase at its own factor if it states one, and the 2N
    check's stretches, each kind at its phase's factor then at twice it."""
    phases = tuple(phase.time_dilation or factor for phase in topology.workload)
    again = tuple(f for number, _ in rerun_phases(topology) for f in (phases[number - 1], 2 * phases[number - 1]))
    return Dilation(factor, reason, phases, again)


def pilot_topology(topology: Topology) -> Topology:
    """The topology at PILOT_PEERS peers (or fewer), bootstrap only."""
    data = topology.model_dump(mode="json")
    peers = min(topology.peer_count, PILOT_PEERS)
    set_field(data, "peers", str(peers))
    data["bootstrap"]["peers"] = min(data["bootstrap"]["peers"], max(2, peers // 4))
    data["network"]["time_dilation"] = PILOT_FACTOR
    data["network"]["cpu"] = "scaled"  # the CPU a join costs is the same in either model; the pilot need not fit `core`
    data["workload"] = [phase for phase in data["workload"] if phase["phase"] == "bootstrap"][:1]
    data["slas"] = []
    data["name"] = f"{topology.name}-calibration"
    return parse_topology(data, f"{topology.name} pilot")


def core_floor(topology: Topology) -> float:
    """The least dilation at which `network.cpu: core` fits this machine: every peer has 1/N of a
    core, so N >= peers / cores (the cores of network.cpu_limit, else the machine's); 1 otherwise."""
    if topology.network.cpu != "core":
        return 1.0
    return topology.peer_count / (topology.network.cpu_limit or os.cpu_count() or 1)


async def settle(topology: Topology, pilot: Pilot, echo: Callable[[str], None]) -> Dilation:
    """The run's Dilation: the topology's factor, or for `auto` the one a pilot run (`pilot`)
    measures this machine to need (at least what `network.cpu: core` needs to fit it)."""
    factor = topology.network.time_dilation
    if factor != "auto":
        dilation = fixed(topology, factor, f"network.time_dilation: {factor:g}")
        lowest = min(dilation.network, *dilation.phases, *dilation.later)
        if lowest < core_floor(topology):
            raise SetupError(f"network.cpu: core gives each peer 1/N of a core: {topology.peer_count} peers on "
                             f"{topology.network.cpu_limit or os.cpu_count()} cores need time_dilation >= "
                             f"{math.ceil(core_floor(topology)):g} in every phase, not {lowest:g} (or time_dilation: auto)")
        return dilation
    small = pilot_topology(topology)
    echo(f"[calibration] time_dilation auto: a pilot of {small.peer_count} peers at dilation {PILOT_FACTOR:g}")
    with tempfile.TemporaryDirectory(prefix="p2p-lab-calibration-") as work:
        analysis = await pilot(small, fixed(small, PILOT_FACTOR, "the calibration pilot's"), Path(work) / "pilot")
    per_join, joins = analysis.summary.get(CPU_PER_OPERATION["bootstrap"][0]), analysis.summary.get("bootstrap")
    if per_join is None or per_join.p50 is None or joins is None or joins.p50 is None:
        raise CalibrationError("time_dilation auto: the pilot measured no join (see its output above); set a factor")
    concurrency = next(p.concurrency for p in topology.workload if isinstance(p, BootstrapPhase))
    cores = os.cpu_count() or 1
    demand = concurrency * per_join.p50 / (joins.p50 / 1000)
    chosen = float(max(1, math.ceil(demand / (UTILIZATION * cores)), math.ceil(core_floor(topology))))
    why = (f"auto: a pilot of {small.peer_count} peers (dilated {PILOT_FACTOR:g}) measured a join at {per_join.p50:.3g} "
           f"CPU-s and {joins.p50:.4g} ms; {concurrency} joins at once ask {demand:.3g} cores at dilation 1; this machine "
           f"has {cores}, kept under {UTILIZATION:.0%} busy: dilation {chosen:g} (a floor: joins cost more in larger "
           "networks; the guard says whether it sufficed)")
    echo(f"[calibration] {why}")
    return fixed(topology, chosen, why)
