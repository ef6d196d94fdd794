"""Verdicts, metric derivation and peer-log counting on hand-made records."""

import gzip
from dataclasses import asdict
from pathlib import Path

import pytest

from conftest import event
from lab.analysis.figures import analyze, guarded
from lab.analysis.guard import Judgement, judge, phase_lags
from lab.analysis.metrics import all_metrics, cpu_per_operation, delivery_ratio, latency_metrics, resource_metrics
from lab.analysis.peerlogs import count_levels
from lab.analysis.records import RunRecords
from lab.analysis.sla import verdict
from lab.analysis.stats import summarize
from lab.events import Sample
from lab.machine import LinkWatch
from lab.manifest import Manifest
from lab.metric_names import unit_of
from lab.topology import Sla
from nodes.protocol import LAG_BINS_MS, Event


def sla(**fields: object) -> Sla:
    return Sla(**{"metric": "get", "stat": "p95", "op": "<", "threshold": "1s", **fields})


def test_latency_metric_in_ms_with_failures_as_attempts() -> None:
    metrics = latency_metrics([event("get", 10), event("get", 30), event("get", 99, ok=False)])
    assert metrics["get"].values == [10.0, 30.0]
    assert metrics["get"].attempts == 3
    assert metrics["get"].unit == "millisecond" == unit_of("get")


def test_threshold_converted_to_the_metric_unit() -> None:
    summary = {"get": summarize([900.0, 950.0, 999.0], unit="millisecond")}
    assert verdict(sla(threshold="1s"), summary).passed is True
    assert verdict(sla(threshold="900ms"), summary).passed is False
    assert verdict(sla(op=">", threshold="0.5s"), summary).passed is True


def test_success_ratio_threshold_in_percent() -> None:
    summary = {"get": summarize([1.0] * 98, attempts=100, unit="millisecond")}
    assert verdict(sla(stat="success_ratio", op=">=", threshold="99%"), summary).passed is False
    assert verdict(sla(stat="success_ratio", op=">=", threshold="98%"), summary).passed is True


def test_unmeasured_metric_fails_with_reason() -> None:
    unmeasured = verdict(sla(), {})
    assert unmeasured.passed is False and unmeasured.reason == "metric not measured"
    failed_only = {"get": summarize([], attempts=2, unit="millisecond")}
    assert "no successful samples" in verdict(sla(), failed_only).reason


def test_delivery_ratio_per_message() -> None:
    events = [
        event("gossip_publish", 1, msg="gossip:0"),
        event("publish", 1, package="pkg-1", msg="publish:pkg-1"),
        event("publish", 1, package="pkg-2"),  # published without an announcement: no deliveries owed
        *[event("gossip_delivery", 5, peer=p, msg="gossip:0") for p in (1, 2, 3)],
        event("gossip_delivery", 5, peer=3, msg="gossip:0"),  # a duplicate receiver counts once
        event("gossip_delivery", 5, peer=1, msg="publish:pkg-1"),
    ]
    ratio = delivery_ratio(events, ready_peers=4)
    assert sorted(ratio.values) == [pytest.approx(1 / 3), 1.0]


def test_memory_is_each_peers_peak_in_mib() -> None:
    mib = 1024 * 1024
    samples = [
        {"role": "peer", "peer": 0, "rss": 80 * mib, "uss": 50 * mib, "pss": 60 * mib, "cpu_user": 1.0, "cpu_system": 0.5},
        {"role": "peer", "peer": 0, "rss": 90 * mib, "uss": 55 * mib, "pss": 65 * mib, "cpu_user": 2.0, "cpu_system": 0.5},
        {"role": "peer", "peer": 1, "rss": 70 * mib, "uss": 40 * mib, "pss": 50 * mib, "cpu_user": 1.0, "cpu_system": 0.0},
        {"role": "orchestrator", "peer": None, "rss": 500 * mib, "uss": 1, "pss": 1, "cpu_user": 9.0, "cpu_system": 9.0},
    ]  # as the first lab versions wrote them: one peer per process, no sweep numbers
    metrics = resource_metrics([Sample.of({"t_ns": i, "sweep": i, "pid": 1, **s}) for i, s in enumerate(samples)])
    assert sorted(metrics["memory_rss_mib"].values) == [70.0, 90.0]
    assert sorted(metrics["memory_uss_mib"].values) == [40.0, 55.0]
    assert sorted(metrics["cpu_seconds"].values) == [1.0, 2.5]


def test_all_metrics_drops_empty_ones() -> None:
    metrics = all_metrics([event("get", 1)], [], ready_peers=2)
    assert set(metrics) == {"get"}


def test_peer_log_lines_are_counted_with_variable_parts_masked(tmp_path: Path) -> None:
    (tmp_path / "host-0000.stderr").write_text(
        "2026-11-22 04:58:08,032 peer 0 libp2p.transport.tcp.tcp ERROR Failed to open TCP stream: 198.18.0.91:4001 failed\n"
        "2026-11-22 04:58:09,032 peer 1 libp2p.transport.tcp.tcp ERROR Failed to open TCP stream: 198.18.0.7:4001 failed\n"
        "Traceback (most recent call last):\n"
        "2026-11-22 04:58:10,000 peer 1 libp2p.host.basic_host WARNING slow stream to 12D3KooWBFoF8MR2Qrdwwrm5dx\n"
    )
    # a committed run keeps its logs compressed
    (tmp_path / "host-0001.stderr.gz").write_bytes(gzip.compress(b"2026-11-22 04:58:11,000 peer 2 nodes.peer WARNING retry 3\n"))
    counted = count_levels(tmp_path)
    assert counted["levels"] == {"ERROR": 2, "WARNING": 2}
    assert counted["peers_with_errors"] == 2  # peers 0 and 1 of host 0 logged errors; peer 2 only a warning
    assert counted["top"][0] == {
        "level": "ERROR",
        "logger": "libp2p.transport.tcp.tcp",
        "message": "Failed to open TCP stream: <addr> failed",
        "count": 2,
    }


def test_latency_is_split_at_impairment_changes_made_during_the_run() -> None:
    from lab.analysis.metrics import impairment_periods

    def op(start: int, ok: bool = True) -> Event:
        return event("get", 1, ok=ok, start_ns=start)

    def change(at: int, source: str) -> Event:
        return event("impairment", 0, peer=None, start_ns=at, peers=[2, 3], source=source)

    assert impairment_periods([change(0, "topology"), op(5)]) == []  # the topology's own links are not a change
    periods = impairment_periods([change(0, "topology"), op(5), op(6), change(10, "lab netem"), op(11, ok=False), op(12),
                                  change(20, "lab netem --clear"), op(25)])
    assert [p.label for p in periods] == [
        "before any change", "after lab netem (peers 2..3)", "after lab netem --clear (peers 2..3)",
    ]
    assert [(p.metrics["get"].attempts, len(p.metrics["get"].values)) for p in periods] == [(2, 2), (2, 1), (1, 1)]


MIB = 1024 * 1024


def host_sample(sweep: int, pid: int, peers: list[int], rss_mib: float, pss_mib: float | None, cpu: float) -> Sample:
    pss = None if pss_mib is None else pss_mib * MIB
    return Sample.of({"t_ns": sweep, "sweep": sweep, "role": "peer", "peer": peers[0], "peers": peers, "pid": pid,
                      "rss": rss_mib * MIB, "uss": pss, "pss": pss, "cpu_user": cpu, "cpu_system": 0.0, "fds": 3})


def test_a_host_process_figures_are_split_evenly_among_its_peers() -> None:
    samples = [
        host_sample(0, 100, [0, 1, 2, 3], rss_mib=40, pss_mib=20, cpu=2.0),
        host_sample(0, 101, [4], rss_mib=30, pss_mib=25, cpu=1.0),
        host_sample(1, 100, [0, 1, 2, 3], rss_mib=80, pss_mib=None, cpu=8.0),  # a cheap sweep: RSS only
        Sample.of({"t_ns": 0, "sweep": 0, "role": "orchestrator", "peer": None, "peers": [], "pid": 1, "rss": 50 * MIB,
                   "uss": 5 * MIB, "pss": 5 * MIB, "cpu_user": 9.0, "cpu_system": 0.0, "fds": 9}),
    ]
    metrics = resource_metrics(samples)
    assert sorted(metrics["memory_rss_mib"].values) == [20.0, 20.0, 20.0, 20.0, 30.0]  # peak 80 MiB / 4 peers
    assert sorted(metrics["memory_pss_mib"].values) == [5.0, 5.0, 5.0, 5.0, 25.0]
    assert sorted(metrics["cpu_seconds"].values) == [1.0, 2.0, 2.0, 2.0, 2.0]  # last sample, split
    # The run's footprint: every process's PSS in the one detailed sweep, the lab's own included.
    assert metrics["memory_run_pss_mib"].values == [20.0 + 25.0 + 5.0]


def test_time_to_ready_runs_from_the_run_start_to_the_last_join() -> None:
    started = event("run_started", 0, peer=None, start_ns=1_000_000_000)
    joins = [event("bootstrap", 2000, start_ns=2_000_000_000), event("bootstrap", 3000, start_ns=3_000_000_000)]
    metrics = all_metrics([started, *joins], [], ready_peers=2)
    assert metrics["time_to_ready"].values == [5.0] and unit_of("time_to_ready") == "second"
    failed_join = event("bootstrap", 3000, ok=False, start_ns=3_000_000_000)
    assert all_metrics([started, joins[0], failed_join], [], ready_peers=2)["time_to_ready"].values == []  # never ready
    warm = [event("warm", 10, start_ns=1_500_000_000, peer=p) for p in (2, 3)]  # most peers were given their tables
    assert "time_to_ready" not in all_metrics([started, *warm, *joins], [], ready_peers=4)


def test_an_sla_on_what_a_warm_start_did_not_measure_is_not_judged(tmp_path: Path) -> None:
    topology = {"name": "w", "seed": 1, "groups": [{"name": "a", "count": 4}], "workload": [{"phase": "bootstrap"}],
                "bootstrap": {"mode": "warm", "sample": 2, "peers": 1}, "fidelity": {"rerun": 0},
                "slas": [{"metric": "time_to_ready", "stat": "max", "op": "<", "threshold": "5min"},
                         {"metric": "bootstrap", "stat": "p50", "op": "<", "threshold": "1s"}]}
    started = event("run_started", 0, peer=None, start_ns=0)
    quiet = [0] * (len(LAG_BINS_MS) + 1)
    quiet[0] = 10
    events = [started, *(event("warm", 10, peer=p) for p in (0, 1)), *(event("bootstrap", 20, peer=p) for p in (2, 3)),
              event("phase", 100, peer=None, phase="bootstrap", number=1), event("loop_lag", 100, counts=quiet)]
    records = RunRecords(tmp_path, Manifest(status="complete", topology=topology, peers_ready=4), events, [])
    analysis = analyze(records)
    unjudged, joins = analysis.verdicts[:2]
    assert unjudged.status == "unjudged" and "warm start" in unjudged.reason and unjudged.measured is None
    assert joins.status == "pass" and analysis.outcome == "pass"  # said, not counted against the run


def test_cpu_per_operation_is_the_peers_cpu_in_the_phase_over_its_operations() -> None:
    second = 1_000_000_000

    def sample(t: int, pid: int, cpu: float) -> Sample:
        return Sample.of({"t_ns": t * second, "sweep": t, "role": "peer", "peers": [pid], "pid": pid, "rss": 1,
                          "cpu_user": cpu, "cpu_system": 0.0})

    # two hosts burning 1 and 3 CPU-s per second; the bootstrap phase runs from 10 s to 20 s, its
    # 4 joins from 11 s on (before them: the phase's setup, e.g. a warm start)
    samples = [sample(t, pid, rate * t) for t in (0, 5, 15, 25) for pid, rate in ((1, 1.0), (2, 3.0))]
    phase = event("phase", 10_000, peer=None, start_ns=10 * second, phase="bootstrap", number=1)
    joins = [event("bootstrap", 100, peer=p, start_ns=(11 + p) * second) for p in range(4)]
    late = event("bootstrap", 100, start_ns=21 * second)  # after the phase: not its operation
    metric = cpu_per_operation([phase, *joins, late], samples)["cpu_s_per_join"]
    assert metric.values == [pytest.approx((9 * 1.0 + 9 * 3.0) / 4)] and unit_of("cpu_s_per_join") == "second"


def test_the_guard_calls_a_latency_inconclusive_when_the_loop_lag_is_not_small_against_it() -> None:
    def lag_window(start: int, bin_ms: float) -> Event:
        counts = [0] * (len(LAG_BINS_MS) + 1)
        counts[LAG_BINS_MS.index(bin_ms)] = 20
        return event("loop_lag", 1000, start_ns=start, counts=counts)

    phase = event("phase", 10_000, peer=None, start_ns=0, phase="lookup", number=3, time_dilation=2.0)
    gets = [event("get", 10, start_ns=1_000_000 * i) for i in range(10)]  # p50 10 ms: 5% is 0.5 ms
    summary = summarize([g.ms for g in gets], unit="millisecond")
    quiet = [phase, *gets, lag_window(0, 0.2)]
    assert judge("get", summary, quiet, phase_lags(quiet)) == Judgement(True, 0.2, 0.5, ["lookup"])
    busy = [phase, *gets, lag_window(0, 2)]  # timers 2 ms late: 4x the 0.5 ms allowed
    verdict = judge("get", summary, busy, phase_lags(busy))  # the phase ran at dilation 2
    assert verdict is not None and not verdict.conclusive and verdict.dilation_needed == 8.0
    assert "needs time_dilation >= 8" in verdict.reason()
    assert judge("search_cache_hit", summary, busy, phase_lags(busy)) is None  # answered without waiting
    # Late timers after the last get ended (the phase's settle, a change of dilation) are not in any get
    after = [phase, *gets, lag_window(0, 0.2), lag_window(5_000_000_000, 50)]
    assert phase_lags(after)[0].lag.p99_ms == 50
    assert judge("get", summary, after, phase_lags(after)) == Judgement(True, 0.2, 0.5, ["lookup"])
    # Nor are late timers between two bursts of gets (a gossip phase's rest between announcements)
    bursts = [*gets, *(event("get", 10, start_ns=2_000_000_000 + 1_000_000 * i) for i in range(10))]
    rest = [phase, *bursts, lag_window(0, 0.2), lag_window(1_000_000_000, 50), lag_window(2_000_000_000, 0.2)]
    assert judge("get", summary, rest, phase_lags(rest)) == Judgement(True, 0.2, 0.5, ["lookup"])
    # No lag measured while they ran: the guard cannot vouch for them
    unwatched = judge("get", summary, [phase, *gets], phase_lags([phase, *gets]))
    assert unwatched is not None and not unwatched.conclusive and "cannot vouch" in unwatched.reason()


def test_links_that_ran_late_in_a_phase_make_its_latencies_inconclusive() -> None:
    counts = [0] * (len(LAG_BINS_MS) + 1)
    counts[LAG_BINS_MS.index(0.2)] = 20
    gets = [event("get", 10, start_ns=1_000_000 * i) for i in range(10)]
    summary = summarize([g.ms for g in gets], unit="millisecond")

    def phase(late_p50_s: float) -> list[Event]:
        links = asdict(LinkWatch(500, late_p50_s, 0.004, 0.009, 0.0015, {"loss": 5}, 0))
        return [event("phase", 10_000, peer=None, start_ns=0, phase="lookup", number=3, links=links), *gets,
                event("loop_lag", 1000, start_ns=0, counts=counts)]

    on_time, late = phase(0.0004), phase(0.002)  # 0.4 ms and 2 ms against a 1.5 ms tolerance
    assert judge("get", summary, on_time, phase_lags(on_time)) == Judgement(True, 0.2, 0.5, ["lookup"])
    judged = judge("get", summary, late, phase_lags(late))
    assert judged is not None and not judged.conclusive and judged.dilation_needed is None
    assert "links ran late in lookup (delay line p50 2 ms late, tolerance 1.5 ms)" in judged.reason()
    assert phase_lags(late)[0].links == LinkWatch(500, 0.002, 0.004, 0.009, 0.0015, {"loss": 5}, 0)


def test_the_guard_doubts_a_failed_success_ratio_but_not_a_held_one() -> None:
    """Late timers can make operations fail (timeouts fire first), never succeed."""
    counts = [0] * (len(LAG_BINS_MS) + 1)
    counts[LAG_BINS_MS.index(100)] = 20
    phase = event("phase", 10_000, peer=None, start_ns=0, phase="lookup", number=3)
    gets = [event("get", 10, ok=i > 0, start_ns=1_000_000 * i) for i in range(10)]  # 9 of 10 succeed
    busy = [phase, *gets, event("loop_lag", 1000, counts=counts)]
    summary = {"get": summarize([g.ms for g in gets if g.ok], attempts=10, unit="millisecond")}
    held = verdict(Sla(metric="get", stat="success_ratio", op=">=", threshold="80%"), summary)
    failed = verdict(Sla(metric="get", stat="success_ratio", op=">=", threshold="99%"), summary)
    assert guarded(held, summary, busy, phase_lags(busy)).status == "pass"
    assert guarded(failed, summary, busy, phase_lags(busy)).status == "inconclusive"


def test_a_per_peer_memory_sla_is_judged_on_the_deployed_peer_not_the_split(tmp_path: Path) -> None:
    mib = 1024 * 1024

    def sample(pid: int, peers: list[int], rss: int) -> Sample:
        return Sample.of({"t_ns": 0, "sweep": 0, "role": "peer", "peers": peers, "pid": pid, "rss": rss * mib,
                          "uss": rss * mib // 2, "pss": rss * mib // 2, "cpu_user": 1.0, "cpu_system": 0.0})

    samples = [sample(1, [0, 1, 2], 150), sample(2, [3], 100)]  # three peers share 150 MiB; one alone holds 100
    metrics = resource_metrics(samples, deployed=3)
    assert metrics["memory_rss_mib"].values == [50.0] * 3  # the split share: what the run cost per peer
    assert metrics["memory_deployed_rss_mib"].values == [100.0] and metrics["memory_deployed_uss_mib"].values == [50.0]
    assert metrics["memory_marginal_rss_mib"].values == [25.0]  # each peer beyond one adds (150 - 100) / 2
    topology = {"name": "m", "seed": 1, "groups": [{"name": "a", "count": 4}], "workload": [{"phase": "bootstrap"}],
                "network": {"peers_per_host": 3},
                "slas": [{"metric": "memory_rss_mib", "stat": "max", "op": "<=", "threshold": "60MiB"}]}
    records = RunRecords(tmp_path, Manifest(status="complete", topology=topology, peers_ready=4), [], samples)
    memory = analyze(records).verdicts[0]
    assert memory.status == "fail" and memory.measured == 100.0
    assert "judged on the deployed peer" in memory.reason and "split 50.0 MiB per peer" in memory.reason
