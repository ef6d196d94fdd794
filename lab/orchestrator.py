"""The orchestrator: build the network, start the peers, run the phases, collect, clean up.

Setup is one exit stack: the state file, the network, the links, the fleet and the collector
each register their undoing as they are made, so whatever happens (SLA failure, bad peer,
Ctrl-C, SIGTERM, crash) they are undone in reverse, and then what was gathered is written.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lab import exits, runid
from lab.analysis.figures import Analysis, analyze
from lab.analysis.metrics import PHASE, RUN_STARTED
from lab.analysis.records import MIB, RunRecords, Sample
from lab.analysis.repeats import REPEAT_FILE, between_runs
from lab.blocking import in_thread_to_completion
from lab.calibration import CalibrationError, calibrate
from lab.network import doctor, limits
from lab.network.fabric import LoopbackNetwork, NamespaceNetwork, PeerSlot
from lab.output import provenance, results
from lab.output.export import SAMPLES_CSV, SUMMARY_PROM, write_openmetrics, write_samples_csv
from lab.output.results import ResultsDir
from lab.peers.cgroup import CgroupError, CpuLimit, cpu_root
from lab.peers.collector import Collector
from lab.peers.fleet import Fleet, PeerProcess
from lab.peers.settings import peer_settings
from lab.shaping import plan as plans
from lab.shaping.backend import ShapingError, choose_backend
from lab.shaping.links import Links, make_backend, topology_problem
from lab.shaping.live import LiveLinks
from lab.shaping.verify import worst
from lab.topology import Topology
from lab.workload.barrier import Deliveries
from lab.workload.phases import Workload
from lab.workload.ticker import Ticker
from nodes.protocol import Call, Dilation, Event

RETIME_NOTICE_NS = 2_000_000_000  # a change of dilation is announced this far ahead of its instant

Echo = Callable[[str], None]

class SetupError(RuntimeError):
    """The run cannot start here (privilege, kernel feature, directory); exit code 2."""


@dataclass
class RunOutcome:
    path: Path
    status: str
    exit_code: int
    analysis: Analysis


def choose_mode(requested: str) -> tuple[str, str]:
    """(mode, why): netns where the kernel and privileges allow it, else loopback."""
    problem = doctor.netns_problem()
    if requested == "loopback":
        return "loopback", "requested by the topology"
    if problem is None:
        return "netns", "root and network namespaces available"
    if requested == "netns":
        raise SetupError(f"network.mode is netns but {problem}; run as root or set network.mode: auto")
    return "loopback", f"falling back to loopback (127.0.0.0/8): {problem}"


def choose_impairment(topology: Topology, mode: str, mode_reason: str) -> tuple[str | None, str]:
    """(backend or None, why), given choose_mode's mode and its reason. Refuses, before anything
    is built, impairment the machine or the backend cannot give; without impairment in the
    topology a missing backend only means `lab netem` will not work on this run."""
    if mode != "netns":
        if topology.is_impaired:
            raise SetupError(f"the topology impairs links, which needs network namespaces, but this run is in loopback mode "
                             f"({mode_reason}); see `lab doctor`")
        return None, "loopback mode has no links to impair"
    try:
        name, why = choose_backend(topology.impairment.backend)
    except ShapingError as exc:
        if topology.is_impaired or topology.impairment.backend != "auto":
            raise SetupError(str(exc)) from None
        return None, str(exc)
    if problem := topology_problem(name, topology):
        raise SetupError(f"{problem}; set impairment.backend or change the link")
    return name, why


def default_out(topology: Topology, kind: str = "") -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return Path("results") / f"{topology.name}{kind}-{stamp}"


class Run:
    def __init__(
        self, topology: Topology, source: str, out: Path, echo: Echo, mode: tuple[str, str], backend: tuple[str | None, str],
        dilation: tuple[float, str] = (1.0, "network.time_dilation: 1"),
    ) -> None:
        self.factor, self.factor_why = dilation
        # As written, in virtual time (the peers' settings, the SLAs, the phases' waits), with the
        # network's dilation chosen; the lab stretches its own waits by the factor in force.
        self.topology = topology.with_dilation(self.factor)
        self.dilation = Dilation(self.factor)  # its epoch is the run's start
        self.network: NamespaceNetwork | LoopbackNetwork | None = None
        self.source = source
        self.echo = echo
        self.mode, self.why = mode
        self.backend, self.backend_why = backend
        self.live: LiveLinks | None = None
        self.run_id = runid.RunId.new()
        self.results = ResultsDir.create(out)
        self.control = self.results.path / "control.sock"
        self.impairment_socket = self.results.path / "impairment.sock"
        self.events: list[Event] = []
        self.deliveries = Deliveries()
        self.samples: list[Sample] = []
        self.errors: list[dict[str, Any]] = []  # the lab's own: peers that did not start, failed calls, lost peers
        self.ready = 0
        self.phase_reports: list[dict[str, Any]] = []
        self.started = time.monotonic()

    # -- sinks for the fleet and the collector -------------------------------------------------

    def on_event(self, event: Event) -> None:
        self.events.append(event)
        self.deliveries.record(event)
        self.results.append(results.EVENTS, event.record())

    def on_sample(self, sample: Sample) -> None:
        self.samples.append(sample)
        self.results.append(results.RESOURCES, sample.record())

    # -- the run --------------------------------------------------------------------------------

    async def execute(self) -> RunOutcome:
        """Set up, run the phases, undo the setup in reverse; then write the results."""
        self._begin()
        status = "failed"
        try:
            async with AsyncExitStack() as setup:
                self._register(setup)
                slots, reference = await self._network(setup)
                if self.backend is not None:
                    await self._links(setup, slots, reference)
                fleet = await self._fleet(setup)
                await self._collector(setup, fleet)
                await self._start_peers(fleet, slots)
                status = await self._phases(fleet)
        except asyncio.CancelledError:
            status = "interrupted"
            raise
        finally:
            self.results.close()
            outcome = self._outcome(status)
        return outcome

    def _begin(self) -> None:
        topology = self.topology
        self.echo(f"run {self.run_id.value}: {topology.peer_count} peers, mode {self.mode} ({self.why})")
        self.echo(f"results: {self.results.path}")
        self.results.update_manifest(
            status="running",
            run_id=self.run_id.value,
            topology_name=topology.name,
            seed=topology.seed,
            mode=self.mode,
            mode_reason=self.why,
            started_utc=datetime.now(UTC).isoformat(),
            clock="time.monotonic_ns (one clock for all processes of this machine)" if self.factor == 1 else
            f"virtual: time.monotonic_ns of this machine, {self.factor:g} times slower from the run's start (every "
            "event, sample and latency; CPU seconds are the machine's)",
            time_dilation={"factor": self.factor, "reason": self.factor_why, "segments": self.dilation.record()},
            versions=provenance.versions(),
            source=provenance.git_commit(),
            machine=provenance.machine(),
            topology=topology.model_dump(mode="json"),
            topology_source=self.source,
            impairment={"backend": self.backend, "reason": self.backend_why, "applied": False},
        )

    def _register(self, setup: AsyncExitStack) -> None:
        """The run's state file, so `lab clean` tells it from a dead one and `lab netem` finds it."""
        state = {
            "orchestrator_pid": os.getpid(),
            "results": str(self.results.path.resolve()),
            "control": str(self.control.resolve()),
            "impairment": str(self.impairment_socket.resolve()) if self.backend is not None else None,
            "impairment_reason": self.backend_why,
        }
        self.run_id.state_file.write_text(json.dumps(state))
        setup.callback(self.run_id.state_file.unlink, missing_ok=True)
        self.dilation = Dilation.starting_now(self.factor, switchable=self.topology.switches_dilation)
        now = self.dilation.epoch_monotonic_ns
        self.on_event(Event(RUN_STARTED, None, now, now, True))

    async def _network(self, setup: AsyncExitStack) -> tuple[list[PeerSlot], PeerSlot | None]:
        hosts = self.topology.hosts()
        network = NamespaceNetwork(self.run_id, hosts, self.factor) if self.mode == "netns" else LoopbackNetwork(hosts)
        self.network = network

        async def teardown() -> None:
            removed = await in_thread_to_completion(network.teardown)
            self.echo(f"[cleanup] removed {len(removed)} namespaces")

        setup.push_async_callback(teardown)
        slots = await in_thread_to_completion(network.build)
        self.echo(f"[network] {len(slots)} peer slots in {len(hosts)} hosts built in {time.monotonic() - self.started:.1f}s")
        return slots, network.reference

    async def _links(self, setup: AsyncExitStack, slots: list[PeerSlot], reference: PeerSlot | None) -> None:
        """Applies the topology's impairment, measures it before any peer starts, and opens
        the socket `lab netem` uses."""
        assert self.backend is not None
        prefixes = plans.prefixes_by_region([s.ip for s in slots], self.topology.peer_regions())
        backend = make_backend(self.backend, prefixes, self.run_id, self.topology.seed)
        links = Links(backend, slots, self.topology, reference, self.dilation)
        self.live = live = LiveLinks(links, self.on_event, self.topology.impairment.probes)
        setup.push_async_callback(live.close)
        await live.serve(self.impairment_socket)
        self.echo(f"[links] backend {self.backend} ({self.backend_why})")
        change = await in_thread_to_completion(links.apply_initial)
        if change is None:
            return
        self.on_event(change.event())
        groups = {name: plan.describe() for name, plan in self.topology.group_plans().items()}
        manifest: dict[str, Any] = {"backend": self.backend, "reason": self.backend_why, "applied": True, "groups": groups}
        self.results.update_manifest(impairment=manifest)
        for name, text in groups.items():
            self.echo(f"[links] {name}: {text}")
        verify = self.topology.impairment.verify
        if verify is False:
            return
        reports = await in_thread_to_completion(lambda: links.verify(self.topology.impairment.probes))
        status = worst(r.status for r in reports)
        manifest.update(verified=status == "passed", verification_status=status, verification=[r.as_dict() for r in reports])
        self.results.update_manifest(impairment=manifest)
        failures = [line for r in reports for line in r.lines("failed")]
        unverified = [line for r in reports for line in r.lines("unverified")]
        verdict = {"passed": "all match the configuration", "failed": f"{len(failures)} checks disagree",
                   "unverified": f"{len(unverified)} checks could not be verified (too noisy to tell)"}[status]
        self.echo(f"[links] measured {len(reports)} peer pairs: {verdict}")
        if failures:
            raise SetupError(f"links do not do what the topology says: {failures[0]} (see manifest.json impairment.verification)")
        if unverified and verify == "strict":
            raise SetupError(f"links could not be verified (impairment.verify: strict): {unverified[0]}")
        for line in unverified:
            self.echo(f"[links] warning: {line}; the run goes on with its impairment unverified")

    async def _fleet(self, setup: AsyncExitStack) -> Fleet:
        cores = self.topology.network.cpu_limit
        cpu_limit = CpuLimit(self.run_id, cores) if cores else None
        if cpu_limit is not None:
            try:
                cpu_limit.create()
            except CgroupError as exc:
                raise SetupError(str(exc)) from None
            setup.callback(cpu_limit.remove)  # after the fleet has stopped (exit stack order)
            self.echo(f"[peers] confined to {cores:g} cores ({cpu_limit.version} {cpu_limit.path})")
        fleet = Fleet(self.run_id.value, self.control, self.results.log_dir, self.on_event,
                      self.topology.network.peer_hosting, self.dilation, cpu_limit)
        setup.push_async_callback(self._stop, fleet)
        await fleet.open()
        return fleet

    async def _stop(self, fleet: Fleet) -> None:
        """Peers lost during the run are reported before the fleet stops (stopping is not losing)."""
        self.errors += [{"phase": "run", "peer": p.index, "error": p.lost, "stderr_tail": p.stderr_tail()}
                        for p in self._lost(fleet)]
        await fleet.stop()
        self.echo(f"[cleanup] stopped {len(fleet.peers)} peers")
        finals = [p.final for p in fleet.peers if p.final]
        if finals:
            held = {key: sorted(f[key] for f in finals) for key in ("connections", "routing_table", "gossip_mesh")}
            self.echo("[peers] at the end, per peer: " + ", ".join(
                f"{key} median {values[len(values) // 2]} max {values[-1]}" for key, values in held.items()))
        self.results.update_manifest(peers_lost=len(self._lost(fleet)), peers=self._peer_records(fleet))

    @staticmethod
    def _lost(fleet: Fleet) -> list[PeerProcess]:
        """Peers that became ready (have a peer id) and then died; those that never started are
        reported when they fail to start."""
        return [p for p in fleet.peers if p.lost is not None and p.peer_id]

    def _peer_records(self, fleet: Fleet) -> list[dict[str, Any]]:
        groups = self.topology.peer_groups()
        return [
            {"index": p.index, "group": groups[p.index].name, "peer_id": p.peer_id, "ip": p.slot.ip, "netns": p.slot.netns,
             "pid": p.pid, "lost": p.lost, "final": p.final}
            for p in fleet.peers
        ]

    async def _collector(self, setup: AsyncExitStack, fleet: Fleet) -> None:
        settings = self.topology.collector
        collector = Collector(settings.interval * self.factor, settings.detail_every, fleet.processes, self.on_sample,
                              self.live.helper_pids if self.live else dict, self.dilation.now_ns)
        collecting = asyncio.create_task(collector.run())

        async def last_sample() -> None:
            await collector.sample_once()
            collecting.cancel()
            self.results.update_manifest(collector={"sweeps": collector.sweeps, "seconds": collector.sweep_seconds})

        setup.push_async_callback(last_sample)

    async def _start_peers(self, fleet: Fleet, slots: list[PeerSlot]) -> None:
        """Starts the host processes, `network.spawn_concurrency` at a time."""
        limit = asyncio.Semaphore(self.topology.network.spawn_concurrency)
        timeout = self.topology.network.start_timeout
        started = time.monotonic()
        hosts: dict[int, list[PeerSlot]] = {}
        for slot in slots:
            hosts.setdefault(slot.host, []).append(slot)

        async def start(host: list[PeerSlot], ticker: Ticker) -> None:
            async with limit:
                failures = await fleet.start_host(host, [peer_settings(self.topology, slot.listen) for slot in host], timeout)
            self.ready += len(host) - len(failures)
            self.errors += [{"phase": "start", "peer": index, "error": why} for index, why in failures.items()]
            ticker.done += len(host)

        async with Ticker(self.echo, "peers started", len(slots)) as ticker:
            await asyncio.gather(*(start(host, ticker) for host in hosts.values()))
        self.echo(f"[peers] {self.ready}/{len(slots)} ready in {len(hosts)} host processes in {time.monotonic() - started:.1f}s")
        self.results.update_manifest(peers_ready=self.ready, peers_ready_s=time.monotonic() - self.started)
        if self.ready < len(slots):
            for error in self.errors[:5]:
                self.echo(f"  peer {error['peer']}: {error['error']}")

    async def _phases(self, fleet: Fleet) -> str:
        """The workload's phases in order; "complete" if all ran, "failed" if no peer was left."""
        workload = Workload(self.topology, fleet, self.echo, self.deliveries, self.live)
        phases = self.topology.workload
        for number, phase in enumerate(phases, 1):
            if not fleet.alive:
                self.echo(f"[run] no live peer: phases {number}-{len(phases)} not run (causes above and in manifest.json)")
                return "failed"
            factor = self.topology.dilation_of(phase)
            if factor != self.dilation.factor:
                await self._retime(fleet, factor)
            started = self.dilation.now_ns()
            report = await workload.run(phase.dilated(factor))
            self.on_event(Event(PHASE, None, started, self.dilation.now_ns(), True, details={
                "phase": phase.phase, "number": number, "cpu_busy": report.cpu_busy, "time_dilation": factor}))
            self.errors.extend(report.errors)
            since_start = {"ended_s": time.monotonic() - self.started}  # e.g. bootstrap's: time to a ready network
            self.phase_reports.append({k: v for k, v in asdict(report).items() if k != "errors"} | since_start)
            self.results.update_manifest(phases=self.phase_reports)
            self.echo(f"[{number}/{len(phases)}] {report.line()}")
        return "complete"

    async def _retime(self, fleet: Fleet, factor: float) -> None:
        """Changes the run's time dilation: announced to every host process for a real instant
        RETIME_NOTICE_S ahead (so all switch together and virtual time never jumps), then links
        and TCP's minimum RTO follow at that instant."""
        was = self.dilation.factor
        at, at_wall = time.monotonic_ns() + RETIME_NOTICE_NS, time.time_ns() + RETIME_NOTICE_NS
        self.dilation.switch(factor, at, at_wall)
        hosts = {p.pid: p for p in fleet.alive}  # one live peer per host process
        args = {"real_ns": at, "real_wall_ns": at_wall, "factor": factor}
        answers = await asyncio.gather(*(fleet.call(p, Call.RETIME, args, RETIME_NOTICE_NS / 1e9) for p in hosts.values()),
                                       return_exceptions=True)
        self.errors += [{"phase": "retime", "peer": p.index, "error": str(answer)}
                        for p, answer in zip(hosts.values(), answers, strict=True) if isinstance(answer, Exception)]
        await asyncio.sleep(max(0.0, (at - time.monotonic_ns()) / 1e9))
        if self.live is not None:
            await self.live.retime()
        network = self.network
        if isinstance(network, NamespaceNetwork):
            await in_thread_to_completion(lambda: network.retime(factor))
        self.echo(f"[time] dilation {was:g} -> {factor:g}")

    def _lab_costs(self) -> dict[str, dict[str, float]]:
        """CPU seconds and peak RSS of the lab's own processes (orchestrator, delay line): the
        share of the machine the measurement itself took."""
        costs: dict[str, dict[str, float]] = {}
        for sample in self.samples:
            if sample.role != "peer":
                cost = costs.setdefault(sample.role, {"cpu_seconds": 0.0, "max_rss_mib": 0.0})
                cost["cpu_seconds"] = max(cost["cpu_seconds"], sample.cpu_seconds)
                cost["max_rss_mib"] = max(cost["max_rss_mib"], sample.rss / MIB)
        return costs

    def _outcome(self, status: str) -> RunOutcome:
        """The manifest's last word, then every figure from the records (lab/analysis/figures.py)."""
        costs = self._lab_costs()
        self.echo("[lab] own CPU: " + ", ".join(f"{role} {c['cpu_seconds']:.1f}s" for role, c in sorted(costs.items())))
        self.results.update_manifest(
            time_dilation={"factor": self.factor, "reason": self.factor_why, "segments": self.dilation.record()},
            status=status,
            partial=status != "complete",
            ended_utc=datetime.now(UTC).isoformat(),
            duration_s=time.monotonic() - self.started,
            peers_ready=self.ready,
            phases=self.phase_reports,
            lab_processes=costs,
            lab_errors=self.errors,
        )
        analysis = analyze(RunRecords(self.results.path, self.results.manifest, self.events, self.samples))
        self.results.write(results.SUMMARY, analysis.summary_record())
        write_samples_csv(self.results.path / SAMPLES_CSV, analysis.metrics)
        write_openmetrics(
            self.results.path / SUMMARY_PROM,
            analysis.summary,
            {"topology": self.topology.name, "run_id": self.run_id.value, "status": status},
        )
        self.results.write(results.VERDICTS, analysis.verdicts_record())
        code = {"pass": exits.PASS, "fail": exits.FAILED, "inconclusive": exits.INCONCLUSIVE}[analysis.outcome]
        return RunOutcome(self.results.path, status, code, analysis)


async def run_topology(topology: Topology, source: str, out: Path, echo: Echo) -> RunOutcome:
    """Checks the machine before creating anything, so a setup error leaves nothing behind."""
    mode = await asyncio.to_thread(choose_mode, topology.network.mode)
    backend = await asyncio.to_thread(choose_impairment, topology, *mode)
    try:
        connections = min(topology.peer_count - 1, topology.libp2p.connections.max_connections)
        raised = limits.raise_open_files(topology.peer_count, topology.network.peers_per_host * connections)
        if mode[0] == "netns":
            limits.check_namespaces(len(topology.hosts()))
        if topology.network.cpu_limit:
            cpu_root()
    except (limits.LimitError, CgroupError) as exc:
        raise SetupError(str(exc)) from None
    if raised:
        echo(f"[limits] {raised}")
    factor = topology.network.time_dilation
    if factor == "auto":
        async def pilot(pilot: Topology, path: Path) -> Analysis:
            return (await run_topology(pilot, f"# the calibration pilot of {topology.name}", path, echo)).analysis

        try:
            dilation = await calibrate(topology, pilot, echo)
        except CalibrationError as exc:
            raise SetupError(str(exc)) from None
    else:
        dilation = (factor, f"network.time_dilation: {factor:g}")
    try:
        run = Run(topology, source, out, echo, mode, backend, dilation)
    except FileExistsError as exc:
        raise SetupError(str(exc)) from None
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await run.execute()


async def run_repeated(topology: Topology, source: str, out: Path, echo: Echo, repeat: int) -> list[RunOutcome]:
    """K fresh runs (new network, new processes, same seed) into out/run-1 .. out/run-K, then
    repeat.json with the between-run figures."""
    outcomes = []
    for number in range(1, repeat + 1):
        echo(f"=== repeat {number}/{repeat}")
        outcomes.append(await run_topology(topology, source, out / f"run-{number}", echo))
    results.write_json(
        out / REPEAT_FILE,
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
