"""The orchestrator: build the network, start the peers, run the phases, collect, clean up.

Structured so that whatever happens (SLA failure, bad peer, Ctrl-C, SIGTERM, crash) the
`finally` path stops every peer, removes every namespace and writes what was gathered.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lab import runid
from lab.analysis.metrics import MIB, RUN_STARTED, Metric, all_metrics, impairment_periods
from lab.analysis.peerlogs import count_levels
from lab.analysis.repeats import REPEAT_FILE, between_runs
from lab.analysis.sla import evaluate
from lab.analysis.stats import summarize
from lab.blocking import in_thread_to_completion
from lab.network import doctor, limits
from lab.network.fabric import LoopbackNetwork, NamespaceNetwork, PeerSlot
from lab.output import provenance, results
from lab.output.export import SAMPLES_CSV, SUMMARY_PROM, write_openmetrics, write_samples_csv
from lab.output.results import ResultsDir
from lab.peers.collector import Collector
from lab.peers.fleet import Fleet
from lab.shaping import plan as plans
from lab.shaping.backend import ShapingError, choose_backend
from lab.shaping.links import Links, make_backend, topology_problem
from lab.shaping.live import LiveLinks
from lab.shaping.verify import worst
from lab.topology import Topology
from lab.workload.barrier import Deliveries
from lab.workload.phases import Workload
from lab.workload.ticker import Ticker

Echo = Callable[[str], None]

EXIT_PASS, EXIT_SLA_FAILED, EXIT_SETUP, EXIT_INTERRUPTED = 0, 1, 2, 130


class SetupError(RuntimeError):
    """The run cannot start here (privilege, kernel feature, directory); exit code 2."""


@dataclass
class RunOutcome:
    path: Path
    status: str
    exit_code: int
    summary: dict[str, Any]
    verdicts: list[dict[str, Any]]
    errors: dict[str, Any]


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


def choose_impairment(topology: Topology, mode: str) -> tuple[str | None, str]:
    """(backend or None, why). Refuses, before anything is built, impairment the machine or
    the backend cannot give; without impairment in the topology a missing backend only means
    `lab netem` will not work on this run."""
    if topology.network.peers_per_host > 1:  # the topology refuses impaired links with shared hosts
        return None, "network.peers_per_host > 1: a host's peers share its link, so links cannot be shaped per peer"
    if mode != "netns":
        if topology.is_impaired:
            raise SetupError("the topology impairs links, which needs network namespaces: run as root (see `lab doctor`)")
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


def peer_settings(topology: Topology) -> dict[str, Any]:
    libp2p = topology.libp2p
    return {
        "seed": topology.seed,
        "connections": {
            "max_per_peer": libp2p.connections.max_per_peer,
            "max_connections": libp2p.connections.max_connections,
            "max_inbound": libp2p.connections.max_inbound,
            "auto_connect": libp2p.connections.auto_connect,
            "dial_timeout_s": libp2p.connections.dial_timeout,
        },
        "dht": {**libp2p.dht.model_dump(), "maintenance_interval_s": libp2p.dht.maintenance_interval},
        "yamux": {**libp2p.yamux.model_dump(), "rtt_interval_s": libp2p.yamux.rtt_interval},
        "gossipsub": {**libp2p.gossipsub.model_dump(), "heartbeat_s": libp2p.gossipsub.heartbeat},
    }


def summarize_metrics(metrics: dict[str, Metric]) -> dict[str, dict[str, Any]]:
    return {name: {"unit": m.unit, **summarize(m.values, m.attempts)} for name, m in metrics.items()}


def default_out(topology: Topology, kind: str = "") -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return Path("results") / f"{topology.name}{kind}-{stamp}"


class Run:
    def __init__(
        self, topology: Topology, source: str, out: Path, echo: Echo, mode: tuple[str, str], backend: tuple[str | None, str]
    ) -> None:
        self.topology = topology
        self.source = source
        self.echo = echo
        self.mode, self.why = mode
        self.backend, self.backend_why = backend
        self.live: LiveLinks | None = None
        self.run_id = runid.RunId.new()
        self.results = ResultsDir.create(out)
        self.events: list[dict[str, Any]] = []
        self.deliveries = Deliveries()
        self.samples: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.ready = 0
        self.lost = 0
        self.phase_reports: list[dict[str, Any]] = []
        self.started = time.monotonic()

    # -- sinks for the fleet and the collector -------------------------------------------------

    def on_event(self, event: dict[str, Any]) -> None:
        event.pop("type", None)
        self.events.append(event)
        self.deliveries.record(event)
        self.results.append(results.EVENTS, event)

    def on_sample(self, sample: dict[str, Any]) -> None:
        self.samples.append(sample)
        self.results.append(results.RESOURCES, sample)

    # -- the run --------------------------------------------------------------------------------

    async def execute(self) -> RunOutcome:
        topology, mode, why = self.topology, self.mode, self.why
        self.echo(f"run {self.run_id.value}: {topology.peer_count} peers, mode {mode} ({why})")
        self.echo(f"results: {self.results.path}")
        self.results.update_manifest(
            status="running",
            run_id=self.run_id.value,
            topology_name=topology.name,
            seed=topology.seed,
            mode=mode,
            mode_reason=why,
            started_utc=datetime.now(UTC).isoformat(),
            clock="time.monotonic_ns (one clock for all processes of this machine)",
            versions=provenance.versions(),
            source=provenance.git_commit(),
            machine=provenance.machine(),
            topology=topology.model_dump(mode="json"),
            topology_source=self.source,
        )
        self.results.update_manifest(impairment={"backend": self.backend, "reason": self.backend_why, "applied": False})
        network = NamespaceNetwork(self.run_id, topology.hosts()) if mode == "netns" else LoopbackNetwork(topology.hosts())
        control = self.results.path / "control.sock"
        fleet = Fleet(self.run_id.value, control, self.results.log_dir, self.on_event, topology.network.peer_hosting)
        collector = Collector(
            topology.collector.interval,
            topology.collector.detail_every,
            fleet.processes,
            self.on_sample,
            lambda: self.live.links.backend.helper_pids() if self.live else {},
        )
        impair_socket = self.results.path / "impairment.sock"
        state = {
            "orchestrator_pid": os.getpid(),
            "results": str(self.results.path.resolve()),
            "control": str(control.resolve()),
            "impairment": str(impair_socket.resolve()) if self.backend is not None else None,
            "impairment_reason": self.backend_why,
        }
        self.run_id.state_file.write_text(json.dumps(state))
        status, collecting = "failed", None
        now = time.monotonic_ns()
        self.on_event({"op": RUN_STARTED, "ok": True, "start_ns": now, "end_ns": now, "peer": None, "error": None})
        try:
            slots = await in_thread_to_completion(network.build)
            self.echo(f"[network] {len(slots)} peer slots in {len(topology.hosts())} hosts built in "
                      f"{time.monotonic() - self.started:.1f}s")
            if self.backend is not None:
                await self._open_links(slots, network.reference, impair_socket)
            await fleet.open()
            collecting = asyncio.create_task(collector.run())
            await self._start_peers(fleet, slots)
            workload = Workload(topology, fleet, self.echo, self.deliveries, self.live)
            for number, phase in enumerate(topology.workload, 1):
                if not fleet.alive:
                    self.echo(f"[run] no live peer: phases {number}-{len(topology.workload)} not run (causes above and "
                              "in manifest.json)")
                    break
                report = await workload.run(phase)
                self.errors.extend(report.errors)
                since_start = {"ended_s": time.monotonic() - self.started}  # e.g. bootstrap's: time to a ready network
                self.phase_reports.append({k: v for k, v in asdict(report).items() if k != "errors"} | since_start)
                self.echo(f"[{number}/{len(topology.workload)}] {report.line()}")
            else:
                status = "complete"
        except asyncio.CancelledError:
            status = "interrupted"
            raise
        finally:
            await self._finish(fleet, network, collector, collecting, status, time.monotonic() - self.started)
            outcome = self._outcome(status)
        return outcome

    async def _open_links(self, slots: list[PeerSlot], reference: PeerSlot | None, socket_path: Path) -> None:
        """Applies the topology's impairment, measures it before any peer starts, and opens
        the socket `lab netem` uses."""
        assert self.backend is not None
        prefixes = plans.prefixes_by_region([s.ip for s in slots], self.topology.peer_regions())
        backend = make_backend(self.backend, prefixes, self.run_id, self.topology.seed)
        links = Links(backend, slots, self.topology, reference)
        self.live = LiveLinks(links, self.on_event, self.topology.impairment.probes)
        await self.live.serve(socket_path)
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

    async def _start_peers(self, fleet: Fleet, slots: list[Any]) -> None:
        """Starts the host processes, `network.spawn_concurrency` at a time."""
        limit = asyncio.Semaphore(self.topology.network.spawn_concurrency)
        settings = peer_settings(self.topology)
        timeout = self.topology.network.start_timeout
        started = time.monotonic()
        hosts: dict[int, list[Any]] = {}
        for slot in slots:
            hosts.setdefault(slot.host, []).append(slot)

        async def start(host: list[Any], ticker: Ticker) -> None:
            async with limit:
                failures = await fleet.start_host(host, settings, timeout)
            self.ready += len(host) - len(failures)
            self.errors += [{"phase": "start", "peer": index, "error": why} for index, why in failures.items()]
            ticker.done += len(host)

        async with Ticker(self.echo, "peers started", len(slots)) as ticker:
            await asyncio.gather(*(start(host, ticker) for host in hosts.values()))
        self.echo(f"[peers] {self.ready}/{len(slots)} ready in {len(hosts)} host processes in {time.monotonic() - started:.1f}s")
        self.results.update_manifest(peers_ready_s=time.monotonic() - self.started)
        if self.ready < len(slots):
            for error in self.errors[:5]:
                self.echo(f"  peer {error['peer']}: {error['error']}")

    async def _finish(
        self, fleet: Fleet, network: Any, collector: Collector, collecting: asyncio.Task[None] | None, status: str, seconds: float
    ) -> None:
        """Cleanup first (it must happen even if writing results fails), then the results."""
        # Lost during the run: peers that became ready (have a peer id) and then died; those
        # that never started are already reported by _start_peers.
        lost = [
            {"phase": "run", "peer": p.index, "error": p.lost, "stderr_tail": p.stderr_tail()}
            for p in fleet.peers
            if p.lost is not None and p.peer_id
        ]
        self.errors.extend(lost)
        try:
            if collecting is not None:
                await collector.sample_once()
                collecting.cancel()
            await fleet.stop()
        finally:
            if self.live is not None:
                await self.live.close()
            removed = await in_thread_to_completion(network.teardown)
            self.run_id.state_file.unlink(missing_ok=True)
            self.results.close()
        self.lost = len(lost)
        groups = self.topology.peer_groups()
        self.echo(f"[cleanup] stopped {len(fleet.peers)} peers, removed {len(removed)} namespaces")
        finals = [p.final for p in fleet.peers if p.final]
        if finals:
            held = {key: sorted(f[key] for f in finals) for key in ("connections", "routing_table", "gossip_mesh")}
            self.echo("[peers] at the end, per peer: " + ", ".join(
                f"{key} median {values[len(values) // 2]} max {values[-1]}" for key, values in held.items()))
        costs = self._lab_costs()
        self.echo("[lab] own CPU: " + ", ".join(f"{role} {c['cpu_seconds']:.1f}s" for role, c in sorted(costs.items())))
        self.results.update_manifest(
            status=status,
            partial=status != "complete",
            ended_utc=datetime.now(UTC).isoformat(),
            duration_s=seconds,
            peers_ready=self.ready,
            peers_lost=self.lost,
            phases=self.phase_reports,
            collector={"sweeps": collector.sweeps, "seconds": collector.sweep_seconds},
            lab_processes=costs,
            peers=[
                {
                    "index": p.index,
                    "group": groups[p.index].name,
                    "peer_id": p.peer_id,
                    "ip": p.slot.ip,
                    "netns": p.slot.netns,
                    "pid": p.pid,
                    "lost": p.lost,
                    "final": p.final,
                }
                for p in fleet.peers
            ],
        )

    def _lab_costs(self) -> dict[str, dict[str, float]]:
        """CPU seconds and peak RSS of the lab's own processes (orchestrator, delay line): the
        share of the machine the measurement itself took."""
        costs: dict[str, dict[str, float]] = {}
        for sample in self.samples:
            if sample.get("role") != "peer":
                cost = costs.setdefault(sample["role"], {"cpu_seconds": 0.0, "max_rss_mib": 0.0})
                cost["cpu_seconds"] = max(cost["cpu_seconds"], sample["cpu_user"] + sample["cpu_system"])
                cost["max_rss_mib"] = max(cost["max_rss_mib"], sample["rss"] / MIB)
        return costs

    def _outcome(self, status: str) -> RunOutcome:
        metrics = all_metrics(self.events, self.samples, self.ready)
        summary = summarize_metrics(metrics)
        periods = [
            {"period": p.label, "start_ns": p.start_ns, "metrics": summarize_metrics(dict(sorted(p.metrics.items())))}
            for p in impairment_periods(self.events)
        ]
        errors = self._error_counts()
        self.results.write(
            results.SUMMARY,
            {
                "partial": status != "complete",
                "note": "samples within one run are not independent (shared network, shared CPU); "
                "intervals describe this run, not run-to-run variation",
                "metrics": summary,
                "impairment_periods": periods,
                "errors": errors,
            },
        )
        write_samples_csv(self.results.path / SAMPLES_CSV, metrics)
        write_openmetrics(
            self.results.path / SUMMARY_PROM,
            summary,
            {"topology": self.topology.name, "run_id": self.run_id.value, "status": status},
        )
        verdicts = evaluate(self.topology.slas, summary) + self._builtin_verdicts()
        self.results.write(results.VERDICTS, {"passed": all(v["passed"] for v in verdicts), "verdicts": verdicts})
        exit_code = EXIT_PASS if all(v["passed"] for v in verdicts) else EXIT_SLA_FAILED
        return RunOutcome(self.results.path, status, exit_code, summary, verdicts, errors)

    def _builtin_verdicts(self) -> list[dict[str, Any]]:
        """The lab's own conditions for a trustworthy run, reported beside the topology's SLAs."""
        total = self.topology.peer_count
        return [
            {"metric": "peers_ready", "stat": "count", "op": "==", "threshold": str(total), "measured": self.ready,
             "passed": self.ready == total, "builtin": True, "reason": f"{self.ready} of {total} peers became ready"},
            {"metric": "peers_lost", "stat": "count", "op": "==", "threshold": "0", "measured": self.lost,
             "passed": self.lost == 0, "builtin": True, "reason": f"{self.lost} peers died or stopped answering"},
        ]

    def _error_counts(self) -> dict[str, Any]:
        """Failed operations by cause, the lab's own errors, and what peers logged."""
        by_op: dict[str, dict[str, int]] = {}
        for event in self.events:
            if not event["ok"]:
                errors = by_op.setdefault(event["op"], {})
                errors[event["error"]] = errors.get(event["error"], 0) + 1
        return {"operations": by_op, "lab": self.errors, "peer_logs": count_levels(self.results.log_dir)}


async def run_topology(topology: Topology, source: str, out: Path, echo: Echo) -> RunOutcome:
    """Checks the machine before creating anything, so a setup error leaves nothing behind."""
    mode = await asyncio.to_thread(choose_mode, topology.network.mode)
    backend = await asyncio.to_thread(choose_impairment, topology, mode[0])
    try:
        connections = min(topology.peer_count - 1, topology.libp2p.connections.max_connections)
        raised = limits.raise_open_files(topology.peer_count, topology.network.peers_per_host * connections)
        if mode[0] == "netns":
            limits.check_namespaces(len(topology.hosts()))
    except limits.LimitError as exc:
        raise SetupError(str(exc)) from None
    if raised:
        echo(f"[limits] {raised}")
    try:
        run = Run(topology, source, out, echo, mode, backend)
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
            "metrics": between_runs([o.summary for o in outcomes]),
        },
    )
    return outcomes
