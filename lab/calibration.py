"""The run's time dilation, settled once: the topology's factors, or `auto`'s, found by pilots.

`auto` starts from the machine's physics (lab/analysis/guard.py): timers run late once the peers
ask for more CPU than the machine has, and dilating time by N spreads the same work over N times
as much real time. So it estimates the peers' demand at N = 1, in cores, over what the machine
can give without queueing:

    N0 = ceil(concurrency x (CPU-s per join) / (join latency) / (UTILIZATION x cores))

from a pilot (the topology scaled to PILOT_PEERS peers, its workload cut to the bootstrap, run
at PILOT_FACTOR so that the pilot itself does not queue). Then it doubles N from N0 until the 2N
check holds (lab/analysis/recheck.py): a pilot joins at N, joins some peers again at N and at 2N,
and N is enough once the joins no longer move. What the pilots cannot see: a join costs more in
a larger network (more of its queries need new connections; docs/scaling.md), and phases after
the bootstrap may ask for more. The run's own guard and 2N check say whether it sufficed.
"""
from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from lab.analysis.figures import Analysis
from lab.analysis.recheck import MIN_RERUN
from lab.errors import CalibrationError, SetupError
from lab.metric_names import CPU_PER_OPERATION
from lab.topology import BootstrapPhase, Topology, parse_topology, set_field
from lab.workload.phases import STRETCHES, rerun_phases
from nodes.protocol import Dilation

PILOT_PEERS = 40
PILOT_FACTOR = 10.0
PILOT_RERUN = 30  # joins the 2N check of each pilot measures again (fewer if the topology's fidelity.rerun is)
MAX_DOUBLINGS = 4
MAX_FACTOR = 1000.0
UTILIZATION = 0.5  # of the machine's cores: the busy share below which timers stay on time
Pilot = Callable[[Topology, Dilation, Path], Awaitable[Analysis]]  # runs a topology at a dilation into a directory


def fixed(topology: Topology, factor: float, reason: str) -> Dilation:
    """The run's dilation at `factor`, each phase at its own factor if it states one, and the 2N
    check's stretches, each kind at its phase's factor and at twice it (STRETCHES)."""
    phases = tuple(phase.time_dilation or factor for phase in topology.workload)
    again = tuple(phases[number - 1] * (2 if doubled else 1) for number, _ in rerun_phases(topology) for doubled in STRETCHES)
    adaptive = topology.network.adaptive_dilation
    return Dilation(factor, reason, phases, again, ceiling=adaptive.highest if adaptive else None)


def pilot_topology(topology: Topology, factor: float, rerun: int = 0) -> Topology:
    """The topology at PILOT_PEERS peers (or fewer), bootstrap only, at `factor`; with `rerun`, a
    bootstrap SLA that any join meets, so that the 2N check measures `rerun` joins again."""
    data = topology.model_dump(mode="json")
    peers = min(topology.peer_count, PILOT_PEERS)
    set_field(data, "peers", str(peers))
    data["bootstrap"]["peers"] = min(data["bootstrap"]["peers"], max(2, peers // 4))
    data["network"]["time_dilation"] = factor
    data["workload"] = [phase for phase in data["workload"] if phase["phase"] == "bootstrap"][:1]
    data["slas"] = [{"metric": "bootstrap", "stat": "p50", "op": "<", "threshold": "1h"}] if rerun else []
    data["fidelity"] = {**data["fidelity"], "rerun": rerun}
    data["name"] = f"{topology.name}-calibration"
    return parse_topology(data, f"{topology.name} pilot")


def core_floor(topology: Topology) -> float:
    """The least dilation at which `network.cpu: core` fits this machine: every peer has 1/N of a
    core, so N >= peers / cores (the cores of network.cpu_limit, else the machine's); 1 otherwise."""
    if topology.network.cpu != "core":
        return 1.0
    return topology.peer_count / (topology.network.cpu_limit or os.cpu_count() or 1)


async def settle(topology: Topology, pilot: Pilot, echo: Callable[[str], None]) -> Dilation:
    """The run's Dilation: the topology's factor, or for `auto` the one pilot runs (`pilot`)
    measure this machine to need (at least what `network.cpu: core` needs to fit it)."""
    factor = topology.network.time_dilation
    if factor != "auto":
        dilation = fixed(topology, factor, f"network.time_dilation: {factor:g}")
        lowest = min(dilation.network, *dilation.phases, *dilation.later)
        if lowest < core_floor(topology):
            raise SetupError(f"network.cpu: core gives each peer 1/N of a core: {topology.peer_count} peers on "
                             f"{topology.network.cpu_limit or os.cpu_count()} cores need time_dilation >= "
                             f"{math.ceil(core_floor(topology)):g} in every phase, not {lowest:g} (or time_dilation: auto)")
        return dilation
    with tempfile.TemporaryDirectory(prefix="p2p-lab-calibration-") as work:
        start, estimate = await _estimate(topology, pilot, Path(work) / "estimate", echo)
        chosen, held = start, False
        rerun = max(MIN_RERUN, min(PILOT_RERUN, topology.fidelity.rerun))
        for attempt in range(MAX_DOUBLINGS):
            if attempt:
                chosen = min(MAX_FACTOR, 2 * chosen)
            small = pilot_topology(topology, chosen, rerun)
            echo(f"[calibration] the 2N check of {small.peer_count} peers' joins at dilation {chosen:g}")
            analysis = await pilot(small, fixed(small, chosen, "a calibration pilot's"), Path(work) / f"check-{attempt}")
            check = analysis.verdicts[0].rerun if analysis.verdicts else None
            held = bool(check and check["conclusive"])
            echo(f"[calibration] {check['reason'] if check else 'no 2N check'}")
            if held or chosen >= MAX_FACTOR:
                break
    why = (f"auto: {estimate}; joins measured again at twice it {'held' if held else 'still moved'} at dilation "
           f"{chosen:g}{'' if held else ' (the largest tried)'}")
    echo(f"[calibration] {why}")
    return fixed(topology, chosen, why)


async def _estimate(topology: Topology, pilot: Pilot, path: Path, echo: Callable[[str], None]) -> tuple[float, str]:
    """Where doubling starts: the peers' CPU demand at dilation 1 over what the machine gives
    without queueing, from a pilot at PILOT_FACTOR; and how it was reached."""
    small = pilot_topology(topology, max(PILOT_FACTOR, math.ceil(core_floor(pilot_topology(topology, 1)))))
    echo(f"[calibration] time_dilation auto: a pilot of {small.peer_count} peers at dilation {small.network.time_dilation}")
    analysis = await pilot(small, fixed(small, float(small.network.time_dilation), "the calibration pilot's"), path)
    per_join, joins = analysis.summary.get(CPU_PER_OPERATION["bootstrap"][0]), analysis.summary.get("bootstrap")
    if per_join is None or per_join.p50 is None or joins is None or joins.p50 is None:
        raise CalibrationError("time_dilation auto: the pilot measured no join (see its output above); set a factor")
    concurrency = next(p.concurrency for p in topology.workload if isinstance(p, BootstrapPhase))
    cores = os.cpu_count() or 1
    demand = concurrency * per_join.p50 / (joins.p50 / 1000)
    start = float(max(1, math.ceil(demand / (UTILIZATION * cores)), math.ceil(core_floor(topology))))
    return start, (f"a pilot of {small.peer_count} peers measured a join at {per_join.p50:.3g} CPU-s and {joins.p50:.4g} "
                   f"ms; {concurrency} joins at once ask {demand:.3g} cores at dilation 1; this machine has {cores}, kept "
                   f"under {UTILIZATION:.0%} busy: from dilation {start:g}")
