"""Every figure of a run, derived in one place from its records: metrics, their statistics,
the impairment periods, the errors and the verdicts.

`lab run` hands over the records it gathered; `lab report`, `lab compare`, sweeps and the
benchmarks load them from the results directory (lab/analysis/records.py). Both paths go
through `analyze`, so summary.json, the report and a comparison cannot disagree.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from lab.analysis import faults
from lab.analysis.bound import Bound, bounds
from lab.analysis.faults import FaultFigures, Staleness, fault_figures
from lab.analysis.guard import GUARD_SHARE, PhaseLag, judge, phase_lags
from lab.analysis.metrics import Metric, all_metrics, impairment_periods, latency_metrics, ready_span
from lab.analysis.peerlogs import count_levels
from lab.analysis.recheck import Again, recheck, split
from lab.analysis.records import RunRecords
from lab.analysis.sla import Verdict, builtin_verdicts, verdict
from lab.analysis.stats import Summary, summarize
from lab.errors import TopologyError
from lab.manifest import ClusterRecord, LabErrorRecord
from lab.metric_names import BOUND_RATIO, CPU_BOUND, DEPLOYED_OF, LAB_SHARE, NOT_MEASURED_WARM, RERUN_PHASE, TWO_CLOCKS
from lab.quantities import convert, shown
from lab.topology import Sla, Topology, parse_topology
from nodes.protocol import ANSWERED_LOCALLY, Event

Reruns = dict[str, dict[bool, Again]]  # by the kind of phase measured again, then by whether at twice its dilation

# A latency stamped on two machines' clocks stands only where their timelines agreed within this share of its
# threshold over the run (docs/cluster.md, Clocks).
CLOCK_SHARE = 0.01

INDEPENDENCE_NOTE = ("samples within one run are not independent (shared network, shared CPU); "
                     "intervals describe this run, not run-to-run variation")


@dataclass(frozen=True)
class PeriodSummary:
    label: str
    start_ns: int | None
    metrics: dict[str, Summary]

    def record(self) -> dict[str, Any]:
        return {"period": self.label, "start_ns": self.start_ns,
                "metrics": {name: s.record() for name, s in self.metrics.items()}}


@dataclass(frozen=True)
class Rerun:
    """A stretch of the 2N check: a kind of phase measured again at a dilation, and its figures."""

    time_dilation: float
    doubled: bool
    metrics: dict[str, Summary]

    def record(self) -> dict[str, Any]:
        return {"time_dilation": self.time_dilation, "doubled": self.doubled,
                "metrics": {name: s.record() for name, s in self.metrics.items()}}


@dataclass(frozen=True)
class Errors:
    operations: dict[str, dict[str, int]]  # failed operations: op -> cause -> count
    lab: list[LabErrorRecord]  # the lab's own: peers that did not start, failed calls, lost peers
    peer_logs: dict[str, Any]  # what the peers logged, counted by level and message

    def record(self) -> dict[str, Any]:
        return {"operations": self.operations, "lab": [e.model_dump(mode="json") for e in self.lab], "peer_logs": self.peer_logs}


@dataclass
class Analysis:
    metrics: dict[str, Metric]
    summary: dict[str, Summary]
    periods: list[PeriodSummary]
    errors: Errors
    verdicts: list[Verdict]
    partial: bool
    fidelity: list[PhaseLag] = field(default_factory=list)  # each phase's loop lag and busy share
    notes: list[str] = field(default_factory=list)  # what the records lacked (damaged lines, missing files)
    ready_machine_s: float | None = None  # time to ready in the machine's seconds (the metric is the run's)
    reruns: dict[str, list[Rerun]] = field(default_factory=dict)  # the 2N check's figures, by the kind of phase rerun
    bounds: list[Bound] = field(default_factory=list)  # the run's, then each phase's, CPU bound
    faults: list[FaultFigures] = field(default_factory=list)  # what users felt in each fault phase
    staleness: Staleness | None = None  # routing-table entries pointing to a peer down or lost at the end

    @property
    def passed(self) -> bool:
        return self.outcome == "pass"

    @property
    def outcome(self) -> str:
        """fail if any verdict failed, else inconclusive if any was, else pass (an SLA the run did
        not measure, unjudged, is said, not counted)."""
        statuses = {v.status for v in self.verdicts}
        return "fail" if "fail" in statuses else "inconclusive" if "inconclusive" in statuses else "pass"

    def summary_record(self) -> dict[str, Any]:
        """What summary.json holds."""
        return {
            "partial": self.partial,
            "note": INDEPENDENCE_NOTE,
            "metrics": {name: s.record() for name, s in self.summary.items()},
            "impairment_periods": [p.record() for p in self.periods],
            "fidelity": {"rule": f"a latency verdict is inconclusive when the loop lag p99 while its operations ran "
                                 f"exceeds {GUARD_SHARE:.0%} of its median, when no lag was measured then, or when the "
                                 "delay line ran later than the links' tolerance in a phase they ran in",
                         "phases": [p.record() for p in self.fidelity]},
            "errors": self.errors.record(),
            "time_to_ready_machine_s": self.ready_machine_s,
            "reruns": {phase: [rerun.record() for rerun in stretches] for phase, stretches in self.reruns.items()},
            "cpu_bound": [b.record() for b in self.bounds],
            "faults": [f.record() for f in self.faults],
            "routing_staleness": None if self.staleness is None else {**asdict(self.staleness),
                                                                        "share": self.staleness.share},
        }

    def verdicts_record(self) -> dict[str, Any]:
        """What verdicts.json holds."""
        return {"passed": self.passed, "outcome": self.outcome, "verdicts": [v.record() for v in self.verdicts]}


def summarize_metrics(metrics: dict[str, Metric]) -> dict[str, Summary]:
    return {name: summarize(m.values, m.attempts, m.unit) for name, m in metrics.items()}


def _operation_errors(records: RunRecords) -> dict[str, dict[str, int]]:
    counts: dict[str, Counter[str]] = {}
    for event in records.events:
        if not event.ok:
            counts.setdefault(event.op, Counter())[str(event.error)] += 1
    return {op: dict(causes) for op, causes in counts.items()}


def guarded(verdict: Verdict, summary: dict[str, Summary], events: list[Event], fidelity: list[PhaseLag]) -> Verdict:
    """The SLA verdict as the fidelity guard lets it stand: inconclusive where the machine was too
    busy. A success ratio that holds stands whatever the lag: a late timer can fail an operation
    (its timeout fires first), never make one succeed."""
    if verdict.stat == "success_ratio" and verdict.passed:
        return verdict
    metric = summary.get(verdict.metric)
    judgement = judge(verdict.metric, metric, events, fidelity) if metric else None
    if judgement is None:
        return verdict
    guard = {**asdict(judgement), "reason": judgement.reason()}
    if judgement.conclusive:
        return replace(verdict, guard=guard)
    return replace(verdict, status="inconclusive", guard=guard, reason=f"{verdict.reason}; {judgement.reason()}")


def clocked(verdict: Verdict, cluster: ClusterRecord | None) -> Verdict:
    """A latency stamped on two machines' clocks as their agreement lets it stand: inconclusive
    where the machines' timelines may have differed by more than CLOCK_SHARE of its threshold."""
    if (cluster is None or cluster.clock_error_ns is None or verdict.metric not in TWO_CLOCKS
            or verdict.stat == "success_ratio" or verdict.threshold_in_unit is None
            or verdict.unit not in ("millisecond", "second")):
        return verdict
    error = convert(f"{cluster.clock_error_ns}ns", verdict.unit)
    if error <= CLOCK_SHARE * verdict.threshold_in_unit:
        return verdict
    return replace(verdict, status="inconclusive",
                   reason=f"{verdict.reason}; the machines' clocks agreed within +-{shown(error, verdict.unit)} only, more "
                          f"than {CLOCK_SHARE:.0%} of the threshold (docs/cluster.md, Clocks)")


def rechecked(verdict: Verdict, sla: Sla, metric: Metric | None, reruns: Reruns, tolerance: float) -> Verdict:
    """A latency verdict as the 2N check lets it stand: inconclusive unless its figures held at
    twice the dilation (a success ratio and an operation answered locally are not rechecked)."""
    if metric is None or metric.unit != "millisecond" or sla.stat == "success_ratio" or sla.metric in ANSWERED_LOCALLY:
        return verdict
    stretches = reruns.get(RERUN_PHASE.get(sla.metric, ""), {})
    check = recheck(sla, metric.values, stretches.get(False), stretches.get(True), tolerance)
    record = check.record(metric.unit)
    if check.conclusive or verdict.status == "inconclusive":
        return replace(verdict, rerun=record)
    return replace(verdict, status="inconclusive", rerun=record, reason=f"{verdict.reason}; {record['reason']}")


def _judged(sla: Sla, topology: Topology, metrics: dict[str, Metric], summary: dict[str, Summary], events: list[Event],
            fidelity: list[PhaseLag], reruns: Reruns, cluster: ClusterRecord | None) -> Verdict:
    """One SLA's verdict: not judged where the run did not measure its metric; a per-peer memory
    figure judged on the deployed peer where hosts are shared; a latency as the guard and the 2N
    check let it stand."""
    unmeasured = NOT_MEASURED_WARM if topology.bootstrap.mode == "warm" else {}
    if sla.metric in unmeasured:
        return Verdict(sla.metric, sla.stat, sla.op, str(sla.threshold), None, "unjudged", unmeasured[sla.metric],
                       sla.unit, sla.limit, sla.description)
    deployed = DEPLOYED_OF.get(sla.metric) if topology.deployed_peer is not None else None
    if deployed is not None and deployed in summary:
        judged = verdict(sla, summary, judged_on=deployed)
        split = summary[sla.metric].stat(sla.stat) if sla.metric in summary else None
        shared = f"; the shared hosts split {shown(split, sla.unit)} per peer (what the run cost)" if split is not None else ""
        return replace(judged, reason=f"{judged.reason}, judged on the deployed peer (alone in a fresh process){shared}")
    judged = clocked(guarded(verdict(sla, summary), summary, events, fidelity), cluster)
    if not topology.fidelity.rerun:
        return judged
    return rechecked(judged, sla, metrics.get(sla.metric), reruns, topology.fidelity.tolerance)


def bound_metrics(windows: list[Bound]) -> dict[str, Metric]:
    """The run's CPU bound, its wall time over it and the lab's share of its CPU, as metrics, so
    that sweeps, comparisons and the history carry them like any figure."""
    run = next((b for b in windows if b.label == "run"), None)
    if run is None or run.ratio is None or run.lab_share is None:
        return {}
    return {CPU_BOUND: Metric(CPU_BOUND, "second", [run.bound_s], 1),
            BOUND_RATIO: Metric(BOUND_RATIO, "dimensionless", [run.ratio], 1),
            LAB_SHARE: Metric(LAB_SHARE, "dimensionless", [run.lab_share], 1)}


def _topology(records: RunRecords, notes: list[str]) -> Topology | None:
    try:
        return parse_topology(records.manifest.topology, f"{records.path}/manifest.json topology")
    except TopologyError as exc:
        notes.append(f"no SLA verdicts: {exc}")
        return None


def analyze(records: RunRecords) -> Analysis:
    notes = list(records.skipped)
    topology = _topology(records, notes)
    manifest = records.manifest
    events, reruns = split(records.events)
    events, faulted = faults.split(events)
    metrics = all_metrics(events, records.samples, manifest.peers_ready, topology.deployed_peer if topology else None,
                          manifest.time_dilation.real_ns)
    windows = bounds(records.events, records.samples, manifest.time_dilation, manifest.machine.cpus if manifest.machine else None)
    metrics = dict(sorted({**metrics, **bound_metrics(windows)}.items()))
    summary = summarize_metrics(metrics)
    periods = [PeriodSummary(p.label, p.start_ns, summarize_metrics(dict(sorted(p.metrics.items()))))
               for p in impairment_periods(events)]
    errors = Errors(_operation_errors(records), list(manifest.lab_errors), count_levels(records.log_dir))
    fidelity = phase_lags(events)
    verdicts = [] if topology is None else [
        *(_judged(sla, topology, metrics, summary, events, fidelity, reruns, manifest.cluster) for sla in topology.slas),
        *builtin_verdicts(topology.peer_count, manifest.peers_ready, manifest.peers_lost)]
    partial = records.manifest.status != "complete"
    span = ready_span(events)
    dilation = records.manifest.time_dilation
    ready_s = (dilation.real_ns(span[1]) - dilation.real_ns(span[0])) / 1e9 if span and span[2] else None
    again = {phase: [Rerun(stretch.factor, doubled, summarize_metrics(latency_metrics(stretch_events)))
                     for doubled, (stretch, stretch_events) in sides.items()] for phase, sides in reruns.items()}
    felt = fault_figures(topology, fidelity, faulted, records.events, manifest.peers_ready) if topology else []
    return Analysis(metrics, summary, periods, errors, verdicts, partial, fidelity, notes, ready_s, again, windows, felt,
                    faults.staleness(manifest.peers, records.routing, records.events))
