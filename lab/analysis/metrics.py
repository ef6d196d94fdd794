"""From raw records to metric samples: what each metric is, in which unit, one place.

- every operation `op` the peers report becomes a latency metric `op` in milliseconds
  (failed operations count as attempts, not as samples);
- `gossip_delivery_ratio`: per announced message, the share of other ready peers that got it;
- `memory_rss_mib`, `memory_uss_mib`, `memory_pss_mib`: each peer's peak, from psutil samples;
  a host process's figure is split evenly among the peers it hosts (`network.peers_per_host`):
  what the run cost per peer, not what a peer needs;
- `memory_deployed_rss_mib` (`_uss_`, `_pss_`): with shared hosts, the peak of the deployed peer,
  alone in a fresh process of its own through the same workload: what a peer deployed alone
  needs, on which a per-peer memory SLA is judged; `memory_marginal_rss_mib`: per shared host,
  what each of its peers beyond one adds to its resident memory (its peak less the deployed
  peer's, over its peers less one);
- `memory_run_pss_mib`: the peak, over the collector's detailed sweeps, of the PSS of every
  process of the run (peers and the lab itself) added up: the run's footprint on the machine,
  shared pages counted once;
- `cpu_seconds`: each peer's user+system CPU time at its last sample (split like memory);
- `time_to_ready`: seconds from the run's start (its `run_started` event) to the end of the
  last bootstrap: how long the lab took to give a listening, bootstrapped network. Only a cold
  start measures it: under a warm start most peers were given their tables and never joined,
  so the figure would be the sample's, not the network's, and it is not produced;
- `cpu_s_per_join`, `cpu_s_per_lookup`, `cpu_s_per_publish`, `cpu_s_per_delivery`: per phase of
  that kind (bootstrap, lookup, publish, gossip), the peers' CPU-seconds from its first such
  operation to its end (the machine's seconds, from the collector's samples, interpolated)
  divided by its operations (successful joins, gets, publishes, gossip deliveries): what
  dilation cannot hide, and what bounds the wall time;
- `cpu_bound_s`, `wall_over_cpu_bound`, `lab_cpu_share`: the run against its CPU bound and the
  lab's share of its CPU (lab/analysis/bound.py,
  added by lab/analysis/figures.py, which knows the cores and the clock).
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass, field

from lab.analysis.bound import Clock, cpu_at, cpu_series, same_instant
from lab.events import IMPAIRMENT, MIB, PHASE, RUN_STARTED, Sample, announced_message
from lab.metric_names import (
    CPU_PER_OPERATION,
    CPU_SECONDS,
    DELIVERY_RATIO,
    DEPLOYED_FIELDS,
    MARGINAL_RSS,
    MEMORY_FIELDS,
    RUN_PSS,
    TIME_TO_READY,
    unit_of,
)
from nodes.protocol import Event, Op


@dataclass
class Metric:
    name: str
    unit: str  # a pint unit name, so SLA thresholds convert ("2s" vs milliseconds)
    values: list[float] = field(default_factory=list)
    attempts: int = 0


def latency_metrics(events: list[Event], into: dict[str, Metric] | None = None) -> dict[str, Metric]:
    metrics: dict[str, Metric] = {} if into is None else into
    for event in events:
        if unit_of(event.op) != "millisecond":
            continue  # impairment changes and verifications are events, not operations
        metric = metrics.setdefault(event.op, Metric(event.op, "millisecond"))
        metric.attempts += 1
        if event.ok:
            metric.values.append(event.ms)
    return metrics


@dataclass
class Period:
    """A stretch of the run between two impairment changes (the first starts at the run's start)."""

    label: str
    start_ns: int | None
    metrics: dict[str, Metric] = field(default_factory=dict)


UNCHANGED = ("topology", "time dilation")  # the links as written, and the same links at another dilation


def impairment_periods(events: list[Event]) -> list[Period]:
    """Latency metrics split at every impairment change made during the run (workload phases,
    `lab netem`), so an effect can be read before, during and after. Operations belong to the
    period in which they started. Empty when the links never changed during the run."""
    changes = sorted((e for e in events if e.op == IMPAIRMENT and e.details.get("source") not in UNCHANGED
                      and e.details.get("peers")), key=lambda e: e.start_ns)
    if not changes:
        return []
    periods = [Period("before any change", None)]
    periods += [Period(f"after {c.details['source']} (peers {c.details['peers'][0]}..{c.details['peers'][-1]})", c.start_ns)
                for c in changes]
    starts = [c.start_ns for c in changes]
    for event in events:
        if unit_of(event.op) == "millisecond":
            period = periods[bisect.bisect_right(starts, event.start_ns)]
            period.metrics.update(latency_metrics([event], period.metrics))
    return periods


def announced_messages(events: list[Event]) -> set[str]:
    return {message for event in events if (message := announced_message(event))}


def delivery_ratio(events: list[Event], ready_peers: int) -> Metric:
    receivers: dict[str, set[int | None]] = defaultdict(set)
    for event in events:
        if event.op == Op.GOSSIP_DELIVERY and event.message is not None:
            receivers[event.message].add(event.peer)
    metric = Metric(DELIVERY_RATIO, "dimensionless")
    expected = max(ready_peers - 1, 1)
    for message in sorted(announced_messages(events)):
        metric.attempts += 1
        metric.values.append(len(receivers[message]) / expected)
    return metric


def resource_metrics(samples: list[Sample], deployed: int | None = None) -> dict[str, Metric]:
    """`deployed`: the peer alone in a process of its own among shared hosts (its memory is
    the deployed figures, not a split share)."""
    peaks: dict[str, dict[int, float]] = {name: {} for name in MEMORY_FIELDS}
    hosts: dict[int, dict[str, float]] = defaultdict(dict)  # pid -> kind -> the process's peak (MiB)
    sizes: dict[int, int] = defaultdict(int)  # pid -> the most peers it hosted
    cpu: dict[int, float] = {}
    run_pss: dict[int, float] = defaultdict(float)
    alone_pid: int | None = None
    for sample in samples:
        if sample.pss is not None:
            run_pss[sample.sweep] += sample.pss / MIB
        if sample.role != "peer":
            continue
        cpu_share = sample.per_peer(sample.cpu_seconds)
        for peer in sample.peers:
            cpu[peer] = cpu_share
        sizes[sample.pid] = max(sizes[sample.pid], len(sample.peers))
        for kind in MEMORY_FIELDS.values():
            if (value := getattr(sample, kind)) is not None:
                hosts[sample.pid][kind] = max(hosts[sample.pid].get(kind, 0.0), value / MIB)
        if deployed is not None and sample.peers == (deployed,):
            alone_pid = sample.pid
            continue
        for name, kind in MEMORY_FIELDS.items():
            if (value := getattr(sample, kind)) is not None:
                for peer in sample.peers:
                    peaks[name][peer] = max(peaks[name].get(peer, 0.0), sample.per_peer(value) / MIB)
    metrics = {
        name: Metric(name, "mebibyte", list(by_peer.values()), len(by_peer)) for name, by_peer in peaks.items()
    }
    metrics[CPU_SECONDS] = Metric(CPU_SECONDS, "second", list(cpu.values()), len(cpu))
    if run_pss:
        metrics[RUN_PSS] = Metric(RUN_PSS, "mebibyte", [max(run_pss.values())], 1)
    if alone_pid is not None:
        alone = hosts[alone_pid]
        metrics.update({name: Metric(name, "mebibyte", [alone[kind]], 1) for name, kind in DEPLOYED_FIELDS.items()
                        if kind in alone})
        grown = [(peaks_of["rss"] - alone["rss"]) / (sizes[pid] - 1) for pid, peaks_of in hosts.items() if sizes[pid] > 1]
        metrics[MARGINAL_RSS] = Metric(MARGINAL_RSS, "mebibyte", grown, len(grown))
    return metrics


def ready_span(events: list[Event]) -> tuple[int, int, bool] | None:
    """(the run's start, the last join's end, whether every join succeeded) in the run's time,
    for a cold start; None for a run without joins or with a warm start."""
    started = [e.start_ns for e in events if e.op == RUN_STARTED]
    joins = [e for e in events if e.op == Op.BOOTSTRAP]
    if not started or not joins or any(e.op == Op.WARM for e in events):
        return None
    return started[0], max(e.end_ns for e in joins), all(e.ok for e in joins)


def time_to_ready(events: list[Event]) -> Metric:
    metric = Metric(TIME_TO_READY, "second")
    if (span := ready_span(events)) is not None:
        start, end, ready = span
        metric.attempts = 1
        metric.values += [(end - start) / 1e9] if ready else []
    return metric


def cpu_per_operation(events: list[Event], samples: list[Sample], clock: Clock = same_instant) -> dict[str, Metric]:
    """Per phase of a kind in CPU_PER_OPERATION: the peers' CPU in it per operation. `clock` maps
    the run's instants to the machine's, on which CPU is spent and so interpolated (across a
    change of factor the run's clock would give a slow phase a share by its virtual length)."""
    series = [points for _, points in cpu_series(samples, "peer", clock).values()]
    metrics: dict[str, Metric] = {}
    for phase in (e for e in events if e.op == PHASE and e.details.get("phase") in CPU_PER_OPERATION):
        name, op = CPU_PER_OPERATION[str(phase.details["phase"])]
        metric = metrics.setdefault(name, Metric(name, "second"))
        starts = [e.start_ns for e in events if e.op == op and e.ok and phase.start_ns <= e.start_ns <= phase.end_ns]
        metric.attempts += 1
        if starts and series:  # from the first operation on: a warm start's setup is not a join
            cpu = sum(cpu_at(s, clock(phase.end_ns)) - cpu_at(s, clock(min(starts))) for s in series)
            metric.values.append(cpu / len(starts))
    return metrics


def all_metrics(events: list[Event], samples: list[Sample], ready_peers: int, deployed: int | None = None,
                clock: Clock = same_instant) -> dict[str, Metric]:
    metrics = latency_metrics(events)
    metrics[TIME_TO_READY] = time_to_ready(events)
    metrics.update(resource_metrics(samples, deployed))
    metrics.update(cpu_per_operation(events, samples, clock))
    ratio = delivery_ratio(events, ready_peers)
    if ratio.attempts:
        metrics[ratio.name] = ratio
    return {name: m for name, m in sorted(metrics.items()) if m.attempts}
