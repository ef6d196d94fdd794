"""From raw records to metric samples: what each metric is, in which unit, one place.

- every operation `op` the peers report becomes a latency metric `op` in milliseconds
  (failed operations count as attempts, not as samples);
- `gossip_delivery_ratio`: per announced message, the share of other ready peers that got it;
- `memory_rss_mib`, `memory_uss_mib`, `memory_pss_mib`: each peer's peak, from psutil samples;
  a host process's figure is split evenly among the peers it hosts (`network.peers_per_host`);
- `memory_run_pss_mib`: the peak, over the collector's detailed sweeps, of the PSS of every
  process of the run (peers and the lab itself) added up: the run's footprint on the machine,
  shared pages counted once;
- `cpu_seconds`: each peer's user+system CPU time at its last sample (split like memory);
- `time_to_ready`: seconds from the run's start (its `run_started` event) to the end of the
  last bootstrap: how long the lab took to give a listening, bootstrapped network.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

MIB = 1024 * 1024
MEMORY_FIELDS = {"memory_rss_mib": "rss", "memory_uss_mib": "uss", "memory_pss_mib": "pss"}
RUN_PSS = "memory_run_pss_mib"
TIME_TO_READY = "time_to_ready"
RUN_STARTED = "run_started"  # the orchestrator's event at the start of a run
# Operations the peers report (nodes/), each a latency metric.
OPERATIONS = (
    "bootstrap", "connect", "publish", "get", "dht_lookup", "dht_lookup_local", "dht_find_providers", "fetch",
    "search_cache_hit", "search_local", "search_remote", "gossip_publish", "gossip_delivery", "gossip_duplicate",
)
CONCURRENT_SEARCH = "concurrent_search_"


def unit_of(metric: str) -> str | None:
    """The unit a metric is summarised in, or None for a name the lab never produces."""
    if metric in OPERATIONS or (metric.startswith(CONCURRENT_SEARCH) and metric[len(CONCURRENT_SEARCH):].isdigit()):
        return "millisecond"
    if metric in MEMORY_FIELDS or metric == RUN_PSS:
        return "mebibyte"
    if metric in ("cpu_seconds", TIME_TO_READY):
        return "second"
    if metric == "gossip_delivery_ratio":
        return "dimensionless"
    return None


def higher_is_better(metric: str) -> bool:
    """Only delivery ratios improve upwards; latency, memory and CPU improve downwards."""
    return unit_of(metric) == "dimensionless"


@dataclass
class Metric:
    name: str
    unit: str  # a pint unit name, so SLA thresholds convert ("2s" vs milliseconds)
    values: list[float] = field(default_factory=list)
    attempts: int = 0


def latency_metrics(events: list[dict[str, Any]], into: dict[str, Metric] | None = None) -> dict[str, Metric]:
    metrics: dict[str, Metric] = {} if into is None else into
    for event in events:
        if unit_of(event["op"]) != "millisecond":
            continue  # impairment changes and verifications are events, not operations
        metric = metrics.setdefault(event["op"], Metric(event["op"], "millisecond"))
        metric.attempts += 1
        if event["ok"]:
            metric.values.append((event["end_ns"] - event["start_ns"]) / 1e6)
    return metrics


@dataclass
class Period:
    """A stretch of the run between two impairment changes (the first starts at the run's start)."""

    label: str
    start_ns: int | None
    metrics: dict[str, Metric] = field(default_factory=dict)


def impairment_periods(events: list[dict[str, Any]]) -> list[Period]:
    """Latency metrics split at every impairment change made during the run (workload phases,
    `lab netem`), so an effect can be read before, during and after. Operations belong to the
    period in which they started. Empty when the links never changed during the run."""
    changes = sorted((e for e in events if e["op"] == "impairment" and e.get("source") != "topology"),
                     key=lambda e: e["start_ns"])
    if not changes:
        return []
    periods = [Period("before any change", None)]
    periods += [Period(f"after {c['source']} (peers {c['peers'][0]}..{c['peers'][-1]})", c["start_ns"]) for c in changes]
    starts = [c["start_ns"] for c in changes]
    for event in events:
        if unit_of(event["op"]) == "millisecond":
            period = periods[bisect.bisect_right(starts, event["start_ns"])]
            period.metrics.update(latency_metrics([event], period.metrics))
    return periods


def announced_message(event: dict[str, Any]) -> str | None:
    """The message an event says was sent: a gossip-phase announcement or a publish's."""
    if not event["ok"]:
        return None
    if event["op"] == "gossip_publish":
        return str(event["msg"])
    if event["op"] == "publish":
        return f"publish:{event['package']}"
    return None


def announced_messages(events: list[dict[str, Any]]) -> set[str]:
    return {message for event in events if (message := announced_message(event))}


def delivery_ratio(events: list[dict[str, Any]], ready_peers: int) -> Metric:
    receivers: dict[str, set[int]] = defaultdict(set)
    for event in events:
        if event["op"] == "gossip_delivery":
            receivers[event["msg"]].add(event["peer"])
    metric = Metric("gossip_delivery_ratio", "dimensionless")
    expected = max(ready_peers - 1, 1)
    for message in sorted(announced_messages(events)):
        metric.attempts += 1
        metric.values.append(len(receivers[message]) / expected)
    return metric


def hosted(sample: dict[str, Any]) -> list[int]:
    """The peers a process hosted at that sample (results written before hosts: its one peer)."""
    return sample.get("peers") or [sample["peer"]]


def per_peer(sample: dict[str, Any], key: str) -> float:
    """A host process's figure divided among the peers it hosted at that sample."""
    return float(sample[key]) / max(len(hosted(sample)), 1)


def resource_metrics(samples: list[dict[str, Any]]) -> dict[str, Metric]:
    peaks: dict[str, dict[int, float]] = {name: {} for name in MEMORY_FIELDS}
    cpu: dict[int, float] = {}
    run_pss: dict[int, float] = defaultdict(float)
    for sample in samples:
        if sample.get("pss") is not None and "sweep" in sample:
            run_pss[sample["sweep"]] += sample["pss"] / MIB
        if sample.get("role") != "peer":
            continue
        shares = {name: per_peer(sample, key) / MIB for name, key in MEMORY_FIELDS.items() if sample.get(key) is not None}
        cpu_share = per_peer(sample, "cpu_user") + per_peer(sample, "cpu_system")
        for peer in hosted(sample):
            for name, share in shares.items():
                peaks[name][peer] = max(peaks[name].get(peer, 0.0), share)
            cpu[peer] = cpu_share
    metrics = {
        name: Metric(name, "mebibyte", list(by_peer.values()), len(by_peer)) for name, by_peer in peaks.items()
    }
    metrics["cpu_seconds"] = Metric("cpu_seconds", "second", list(cpu.values()), len(cpu))
    if run_pss:
        metrics[RUN_PSS] = Metric(RUN_PSS, "mebibyte", [max(run_pss.values())], 1)
    return metrics


def time_to_ready(events: list[dict[str, Any]]) -> Metric:
    metric = Metric(TIME_TO_READY, "second")
    started = [e["start_ns"] for e in events if e["op"] == RUN_STARTED]
    joined = [e["end_ns"] for e in events if e["op"] == "bootstrap"]
    if started and joined:
        metric.attempts = 1
        if all(e["ok"] for e in events if e["op"] == "bootstrap"):
            metric.values.append((max(joined) - started[0]) / 1e9)
    return metric


def all_metrics(events: list[dict[str, Any]], samples: list[dict[str, Any]], ready_peers: int) -> dict[str, Metric]:
    metrics = latency_metrics(events)
    metrics[TIME_TO_READY] = time_to_ready(events)
    metrics.update(resource_metrics(samples))
    ratio = delivery_ratio(events, ready_peers)
    if ratio.attempts:
        metrics[ratio.name] = ratio
    return {name: m for name, m in sorted(metrics.items()) if m.attempts}
