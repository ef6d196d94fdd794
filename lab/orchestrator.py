"""The coordinator of a run: what the run decides, apart from what a machine builds.

It settles the run's time dilation, writes the manifest, drives the machine that holds the
peers (lab/machine.py: the network, the links, the host processes, the collector), runs the
workload's phases and their switches of dilation, and derives every figure at the end. Setup
is one exit stack: the state file and the machine each register their undoing as they are
made, so whatever happens (SLA failure, bad peer, Ctrl-C, SIGTERM, crash) they are undone in
reverse, and then what was gathered is written.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from lab import calibration, exits, runid
from lab.analysis.figures import Analysis, analyze
from lab.analysis.records import RunRecords
from lab.analysis.repeats import between_runs
from lab.errors import ResultsError, SetupError
from lab.events import ADAPTED, MIB, PHASE, RERUN, RUN_STARTED, Sample
from lab.governor import Governor
from lab.local_machine import LocalPlace
from lab.machine import Machine, Paths, Place, Probe, Stream
from lab.manifest import (
    CONTROL_SOCKET,
    EVENTS,
    IMPAIRMENT_SOCKET,
    REPEAT,
    RESOURCES,
    ROUTING,
    SAMPLES_CSV,
    SUMMARY,
    SUMMARY_PROM,
    VERDICTS,
    Impairment,
    LabCost,
    LabErrorRecord,
    Manifest,
    PhaseRecord,
)
from lab.output import provenance, terminal
from lab.output.export import write_openmetrics, write_samples_csv
from lab.output.results import ResultsDir, write_json
from lab.topology import Topology
from lab.workload.barrier import Deliveries
from lab.workload.phases import STRETCHES, Workload, rerun_phases
from nodes.protocol import RETIME_NOTICE_NS, ROUTING_PEERS, Dilation, Event, Segment

Echo = Callable[[str], None]


@dataclass
class RunOutcome:
    path: Path
    status: str
    exit_code: int
    analysis: Analysis


def _own_cpu_seconds() -> float:
    """This process's CPU so far (its threads' too)."""
    times = psutil.Process().cpu_times()
    return float(times.user + times.system)


def default_out(topology: Topology, kind: str = "") -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return Path("results") / f"{topology.name}{kind}-{stamp}"


def _clock(dilation: Dilation) -> str:
    if not dilation.dilated:
        return "time.monotonic_ns (one clock for all processes of this machine)"
    return (f"virtual: time.monotonic_ns of this machine, {dilation.network:g} times slower from the run's start (every "
            "event, sample and latency; CPU seconds are the machine's)")


class Run:
    def __init__(self, topology: Topology, source: str, out: Path, echo: Echo, place: Place, probe: Probe,
                 dilation: Dilation) -> None:
        """`topology` as written (its waits and SLAs in virtual time) to run at `place`, probed;
        `dilation` settled for it."""
        self.topology = topology
        self.place = place
        self.dilation = dilation
        self.source = source
        self.echo = echo
        self.probe = probe
        self.run_id = runid.RunId.new()
        self.results = ResultsDir.create(out)
        self.events: list[Event] = []
        self.deliveries = Deliveries()
        self.samples: list[Sample] = []
        self.peer_cpu: dict[int, float] = {}  # host process -> its CPU-seconds at its latest sample
        self.routing: dict[int, list[str]] = {}  # each peer's routing table at the end (ROUTING)
        self.errors: list[LabErrorRecord] = []  # the lab's own: peers that did not start, failed calls, lost peers
        self.task: asyncio.Task[Any] | None = None  # the run's own, once it executes
        self.governor: Governor | None = None  # while the phases run, with network.adaptive_dilation
        self.unwritable: ResultsError | None = None  # the results disk failed under a record
        self.started = time.monotonic()
        self.cpu_at_start = _own_cpu_seconds()
        self.manifest = Manifest(
            status="running", run_id=self.run_id.value, topology_name=topology.name, seed=topology.seed, mode=probe.mode,
            mode_reason=probe.mode_reason, started_utc=datetime.now(UTC).isoformat(), clock=_clock(dilation),
            time_dilation=dilation, versions=provenance.versions(), source=provenance.git_commit(),
            machine=probe.testbed, cluster=place.cluster(topology, self.run_id),
            topology=topology.model_dump(mode="json"), topology_source=source,
            impairment=Impairment(backend=probe.backend, reason=probe.backend_reason),
        )

    # -- the event stream ---------------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        self.events.append(event)
        self.deliveries.record(event)
        if self.governor is not None:
            self.governor.hear(event)
        self._append(EVENTS, event.record())

    def on_sample(self, sample: Sample) -> None:
        self.samples.append(sample)
        if sample.role == "peer":
            self.peer_cpu[sample.pid] = sample.cpu_seconds
        self._append(RESOURCES, sample.record())

    def _append(self, name: str, record: dict[str, Any]) -> None:
        """A record on disk as it happens. These calls come from the machine's stream (a peer's
        connection, the collector), not from the run's task: a results disk that fails under
        them stops the run from there, with that error."""
        if self.unwritable is not None:
            return
        try:
            self.results.append(name, record)
        except ResultsError as exc:
            self.unwritable = exc
            if self.task is not None:
                self.task.cancel()

    # -- the run --------------------------------------------------------------------------------

    async def execute(self) -> RunOutcome:
        """Set up, run the phases, undo the setup in reverse; then write the results."""
        topology = self.topology
        self.echo(f"run {self.run_id.value}: {topology.peer_count} peers, mode {self.probe.mode} ({self.probe.mode_reason})")
        self.echo(f"results: {self.results.path}")
        self.results.save(self.manifest)
        status = "failed"
        try:
            async with AsyncExitStack() as setup:
                self._register()
                paths = Paths(self.results.path, self.results.path / CONTROL_SOCKET, self.results.path / IMPAIRMENT_SOCKET,
                              self.results.log_dir)
                machine = self.place.machine(self.run_id, topology, self.dilation, self.probe, paths,
                                             Stream(self.on_event, self.on_sample, self.echo))
                setup.callback(self._machine_stopped, machine)  # runs once the machine has undone its part
                await setup.enter_async_context(machine)
                self.task = asyncio.current_task()  # a failing results disk stops the run from here (_append),
                setup.callback(setattr, self, "task", None)  # but never cuts its undo short: first undone
                await machine.build()
                await self._links(machine)
                await self._start_peers(machine)
                status = await self._phases(machine)
        except asyncio.CancelledError:
            if self.unwritable is not None:  # cancelled by _append: the results disk failed
                raise self.unwritable from None
            status = "interrupted"
            raise
        finally:
            try:
                self.results.close()
                outcome = self._outcome(status)
                if self.unwritable is not None:  # it failed while the run was being undone: records are missing
                    raise self.unwritable
            except OSError as exc:  # the figures' own files (samples.csv, summary.prom) on a failing disk
                raise ResultsError.of(self.results.path, exc) from None
            finally:  # only now: killed before the manifest's last word, `lab clean` marks the run killed
                self.run_id.state_file.unlink(missing_ok=True)
        return outcome

    def _register(self) -> None:
        """The run's state file, so `lab clean` tells it from a dead one and `lab netem` finds it;
        then the epoch of the run's virtual time."""
        path = self.results.path
        self.run_id.register(os.getpid(), path, path / CONTROL_SOCKET, path / IMPAIRMENT_SOCKET if self.probe.backend else None,
                             self.probe.backend_reason)
        self.dilation.start()
        now = self.dilation.epoch_monotonic_ns
        self.on_event(Event(RUN_STARTED, None, now, now, True))

    async def _links(self, machine: Machine) -> None:
        """The topology's impairment, applied and measured before any peer starts."""
        verify = self.topology.impairment.verify
        applied = await machine.shape(verify is not False)
        if applied is None:
            return
        self.manifest.impairment = impairment = Impairment(
            backend=self.probe.backend, reason=self.probe.backend_reason, applied=True, groups=applied.groups,
            verification_status=applied.status, verification=applied.reports)  # type: ignore[arg-type]
        self.results.save(self.manifest)
        if impairment.verification_status is None:
            return
        verdict = {"passed": "all match the configuration", "failed": f"{len(applied.failures)} checks disagree",
                   "unverified": f"{len(applied.unverified)} checks could not be verified (too noisy to tell)"}
        self.echo(f"[links] measured {len(applied.reports)} peer pairs: {verdict[impairment.verification_status]}")
        if applied.failures:
            raise SetupError(f"links do not do what the topology says: {applied.failures[0]} "
                             "(see manifest.json impairment.verification)")
        if applied.unverified and verify == "strict":
            raise SetupError(f"links could not be verified (impairment.verify: strict): {applied.unverified[0]}")
        for line in applied.unverified:
            self.echo(f"[links] warning: {line}; the run goes on with its impairment unverified")

    async def _start_peers(self, machine: Machine) -> None:
        failed = await machine.start_peers()
        self.errors += failed
        self.manifest.peers_ready = len(machine.alive())
        self.manifest.peers_ready_s = time.monotonic() - self.started
        self.results.save(self.manifest)
        for error in failed[:5]:
            self.echo(f"  peer {error.peer}: {error.error}")

    async def _phases(self, machine: Machine) -> str:
        """The workload's phases in order, then the 2N check's; "complete" if all ran, "failed" if
        no peer was left."""
        workload = Workload(self.topology, machine, self.echo, self.deliveries, self.dilation, self.on_event,
                            self.errors)
        if policy := self.topology.network.adaptive_dilation:
            self.governor = Governor(policy, lambda: self.dilation.factor, self.dilation.now_ns,
                                     lambda factor, why: self._adapt(machine, workload, factor, why))
        else:  # fixed factors: a gossip phase may rest between announcements (an adaptive factor is the governor's)
            workload.switch = lambda factor, why: self._adapt(machine, workload, factor, why)
            workload.peers_cpu_s = lambda: self._peers_cpu_s(machine)
        phases = self.topology.workload
        for number, phase in enumerate(phases, 1):
            if not machine.alive():
                self.echo(f"[run] no live peer: phases {number}-{len(phases)} not run (causes above and in manifest.json)")
                return "failed"
            record = await self._phase(machine, PHASE, number, self._factor_of(number), workload.run(phase))
            self.echo(f"[{number}/{len(phases)}] {terminal.phase_line(record)}")
        factors = iter(self.dilation.later)
        count = math.ceil(self.topology.fidelity.rerun / 2)  # each of the two stretches at N and at 2N
        for number, phase in rerun_phases(self.topology):
            for doubled, factor in zip(STRETCHES, factors, strict=False):
                again = "warm-up" if doubled is None else "again"
                self.echo(f"[2N] {phase.phase} {again} at dilation {factor:g} ({count} operations)")
                record = await self._phase(machine, RERUN, number, factor, workload.rerun(phase, count), doubled=doubled)
                self.echo(f"[2N] {terminal.phase_line(record)}")
        return "complete"

    def _factor_of(self, number: int) -> float:
        """The factor workload phase `number` starts at: its own; with an adaptive factor, the one
        the last phase ended at unless the phase states its own."""
        if self.governor is None or number == 1 or self._stated_factor(number) is not None:
            return self.dilation.of_phase(number)
        return self.dilation.segments[-1].factor

    def _stated_factor(self, number: int) -> float | None:
        """The `time_dilation` workload phase `number` states, if any: where an adaptive factor
        starts, and its floor."""
        return self.topology.workload[number - 1].time_dilation

    async def _phase(self, machine: Machine, kind: str, number: int, factor: float, work: Awaitable[PhaseRecord],
                     doubled: bool | None = False) -> PhaseRecord:
        """One stretch of work at its dilation, recorded as an event of `kind` spanning it, with
        what the links did meanwhile, and in the manifest."""
        if factor != self.dilation.segments[-1].factor:  # the factor in force once any announced switch is
            await self._retime(machine, factor)
        await machine.watch()  # the links' count starts with the stretch
        await machine.sample()  # and the processes' CPU (lab/analysis/bound.py)
        started, started_real = self.dilation.now_ns(), time.monotonic_ns()
        governed = self.governor and kind == PHASE
        record = await (self._governed(work, self._stated_factor(number)) if governed else work)
        ended, ended_real = self.dilation.now_ns(), time.monotonic_ns()
        await machine.sample()
        links = await machine.watch()
        phase = record.phase.removesuffix(" (2N)")
        highest = self.dilation.highest_between(started_real, ended_real)  # what the guard judges the phase at
        self.on_event(Event(kind, None, started, ended, True, details={
            "phase": phase, "number": number, "cpu_busy": record.cpu_busy, "time_dilation": highest,
            **({"time_dilation_started": factor} if highest != factor else {}), "links": asdict(links),
            **({"doubled": doubled} if kind == RERUN else {})}))
        record.ended_s = time.monotonic() - self.started
        self.manifest.phases.append(record)
        self.results.save(self.manifest)
        return record

    async def _retime(self, machine: Machine, factor: float, why: str = "") -> Segment:
        """Changes the run's time dilation at a real instant RETIME_NOTICE_NS ahead, announced to
        the machine first, so every clock, link and timer switches together and virtual time never
        jumps."""
        was = self.dilation.factor
        segment = self.dilation.switch(factor, time.monotonic_ns() + RETIME_NOTICE_NS, time.time_ns() + RETIME_NOTICE_NS)
        self.errors += await machine.retime(segment)
        self.echo(f"[time] dilation {was:g} -> {factor:g}{f': {why}' if why else ''}")
        return segment

    async def _governed(self, work: Awaitable[PhaseRecord], floor: float | None) -> PhaseRecord:
        """A workload phase with the governor switching its factor as the load asks, until it ends,
        never under the phase's own factor (`floor`)."""
        assert self.governor is not None
        governing = asyncio.create_task(self.governor.govern(floor))
        try:
            return await work
        finally:
            await self.governor.stop(governing)

    async def _peers_cpu_s(self, machine: Machine) -> float:
        """The CPU-seconds the peers' host processes have spent so far, every one sampled now."""
        await machine.sample()
        return sum(self.peer_cpu.values())

    async def _adapt(self, machine: Machine, workload: Workload, factor: float, why: str) -> Segment:
        """A switch within a phase (the governor's, a gossip phase's rest): announced as every switch
        is, recorded as an event at its instant, and the workload's waits told, so that they follow it."""
        was = self.dilation.factor
        segment = await self._retime(machine, factor, why)
        workload.retimed.set()
        self.on_event(Event(ADAPTED, None, segment.virtual_ns, segment.virtual_ns, True,
                            details={"from": was, "to": factor, "why": why}))
        return segment

    def _machine_stopped(self, machine: Machine) -> None:
        record = machine.record()
        self.errors += record.lost
        self.manifest.peers = record.peers
        self.manifest.peers_lost = len(record.lost)
        self.manifest.collector = record.collector
        self.routing = record.routing
        for index, table in sorted(record.routing.items()):
            self._append(ROUTING, {"index": index, ROUTING_PEERS: table})
        self.manifest.cluster = self.place.cluster(self.topology, self.run_id)  # with the clocks read during the run
        self.results.save(self.manifest)

    def _lab_costs(self) -> dict[str, LabCost]:
        """CPU seconds and peak RSS of the lab's own processes (orchestrator, delay line; on a
        cluster, each machine's agent and delay line, added up): the share of the machines the
        measurement itself took."""
        last: dict[tuple[str, int], Sample] = {}
        peak: dict[str, float] = {}
        for sample in self.samples:
            if sample.role != "peer":
                last[(sample.role, sample.pid)] = sample
                peak[sample.role] = max(peak.get(sample.role, 0.0), sample.rss / MIB)
        costs: dict[str, LabCost] = {}
        for (role, _), sample in last.items():
            cost = costs.setdefault(role, LabCost(cpu_seconds=0.0, max_rss_mib=peak[role]))
            cost.cpu_seconds += sample.cpu_seconds
        if self.manifest.cluster is not None:  # the agents sample their machines; the driver is this process
            costs["driver"] = LabCost(cpu_seconds=_own_cpu_seconds() - self.cpu_at_start,
                                      max_rss_mib=psutil.Process().memory_info().rss / MIB)
        return costs

    def _outcome(self, status: str) -> RunOutcome:
        """The manifest's last word, then every figure from the records (lab/analysis/figures.py)."""
        costs = self._lab_costs()
        self.echo("[lab] own CPU: " + ", ".join(f"{role} {c.cpu_seconds:.1f}s" for role, c in sorted(costs.items())))
        manifest = self.manifest
        manifest.time_dilation = self.dilation
        manifest.status = status  # type: ignore[assignment]
        manifest.partial = status != "complete"
        manifest.ended_utc = datetime.now(UTC).isoformat()
        manifest.duration_s = time.monotonic() - self.started
        manifest.lab_processes = costs
        manifest.lab_errors = self.errors
        self.results.save(manifest)
        analysis = analyze(RunRecords(self.results.path, manifest, self.events, self.samples, self.routing))
        self.results.write(SUMMARY, analysis.summary_record())
        write_samples_csv(self.results.path / SAMPLES_CSV, analysis.metrics)
        write_openmetrics(
            self.results.path / SUMMARY_PROM,
            analysis.summary,
            {"topology": self.topology.name, "run_id": self.run_id.value, "status": status},
        )
        self.results.write(VERDICTS, analysis.verdicts_record())
        code = {"pass": exits.PASS, "fail": exits.FAILED, "inconclusive": exits.INCONCLUSIVE}[analysis.outcome]
        return RunOutcome(self.results.path, status, code, analysis)


async def measure(topology: Topology, source: str, out: Path, echo: Echo, place: Place, probe: Probe,
                  dilation: Dilation) -> RunOutcome:
    """One run of `topology` at a settled dilation on a probed machine."""
    try:
        run = Run(topology, source, out, echo, place, probe, dilation)
    except FileExistsError as exc:
        raise SetupError(str(exc)) from None
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await run.execute()


async def run_topology(topology: Topology, source: str, out: Path, echo: Echo, place: Place | None = None) -> RunOutcome:
    """Checks the machine (this one unless `place` says otherwise) and settles the dilation
    before creating anything, so a setup error leaves nothing behind."""
    place = place or LocalPlace()
    checked = await place.probe(topology)
    if checked.raised_limits:
        echo(f"[limits] {checked.raised_limits}")

    async def pilot(small: Topology, dilation: Dilation, path: Path) -> Analysis:
        pilot_source = f"# the calibration pilot of {topology.name}"
        return (await measure(small, pilot_source, path, echo, place, checked, dilation)).analysis

    dilation = await calibration.settle(topology, pilot, echo)
    return await measure(topology, source, out, echo, place, checked, dilation)


async def run_repeated(topology: Topology, source: str, out: Path, echo: Echo, repeat: int,
                       place: Place | None = None) -> list[RunOutcome]:
    """K fresh runs (new network, new processes, same seed) into out/run-1 .. out/run-K, then
    repeat.json with the between-run figures."""
    outcomes = []
    for number in range(1, repeat + 1):
        echo(f"=== repeat {number}/{repeat}")
        outcomes.append(await run_topology(topology, source, out / f"run-{number}", echo, place))
    write_json(
        out / REPEAT,
        {
            "topology_name": topology.name,
            "repeats": repeat,
            "seeds": [topology.seed] * repeat,
            "runs": [{"dir": o.path.name, "status": o.status, "exit_code": o.exit_code} for o in outcomes],
            "note": "the run is the independent unit: compare run medians, not pooled samples",
            "metrics": between_runs([o.analysis.summary for o in outcomes]),
        },
    )
    return outcomes
