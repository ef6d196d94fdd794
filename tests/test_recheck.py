"""The 2N check (lab/analysis/recheck.py): a latency measured again at twice the dilation must not
move beyond its noise; operations measured again are kept apart from the workload's figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from conftest import event
from lab.analysis.figures import analyze
from lab.analysis.recheck import Stretch, recheck, split
from lab.analysis.records import RunRecords
from lab.analysis.sla import Verdict
from lab.manifest import Manifest
from lab.topology import Sla
from nodes.protocol import LAG_BINS_MS

P95 = Sla(metric="dht_lookup", stat="p95", op="<=", threshold="500ms")


def lookups(values: np.ndarray, start_ns: int = 0) -> list:
    return [event("dht_lookup", float(v), start_ns=start_ns + i) for i, v in enumerate(values)]


def test_operations_in_a_rerun_stretch_are_its_own_not_the_workloads() -> None:
    workload = lookups(np.full(5, 100.0))
    stretch = event("rerun", 10_000, peer=None, start_ns=1_000_000_000, phase="lookup", time_dilation=12.0)
    again = lookups(np.full(3, 50.0), start_ns=1_000_000_001)
    main, reruns = split([*workload, stretch, *again])
    assert main == [*workload, stretch]  # the stretch's own event marks it; it is no operation
    found, events = reruns["lookup"]
    assert found == Stretch("lookup", 12.0, 1_000_000_000, 11_000_000_000) and events == again


def test_a_figure_that_halves_at_twice_the_dilation_measured_queueing() -> None:
    rng = np.random.default_rng(3)
    queued = rng.lognormal(np.log(800), 0.3, 200)  # mostly waiting for a CPU: halves when the machine looks 2x faster
    stretch = Stretch("lookup", 12.0, 0, 1)
    check = recheck(P95, list(queued), stretch, lookups(rng.lognormal(np.log(400), 0.3, 50)), 0.05)
    assert not check.conclusive and [m.name for m in check.moves] == ["p50", "p95"]
    assert check.moves[0].move < -0.3 and "moved" in check.reason("millisecond")


def test_a_figure_of_the_protocol_holds_within_its_noise() -> None:
    rng = np.random.default_rng(4)
    protocol = rng.lognormal(np.log(300), 0.3, 200)
    check = recheck(P95, list(protocol), Stretch("lookup", 12.0, 0, 1), lookups(rng.lognormal(np.log(300), 0.3, 50)), 0.05)
    assert check.conclusive, check.reason("millisecond")
    p50 = check.moves[0]
    assert p50.tolerance > 0.05  # 50 operations bound a median to some percent, not to 5%: the noise is the band
    assert abs(p50.move) <= p50.tolerance and "held" in check.reason("millisecond")


def test_no_rerun_or_too_few_operations_is_not_conclusive() -> None:
    assert not recheck(P95, [100.0] * 50, None, [], 0.05).conclusive
    few = recheck(P95, [100.0] * 50, Stretch("lookup", 12.0, 0, 1), lookups(np.full(3, 100.0)), 0.05)
    assert not few.conclusive and "too few operations" in few.reason("millisecond")


def test_a_verdict_is_conclusive_only_with_its_2n_figure_held(tmp_path: Path) -> None:
    topology = {"name": "r", "seed": 1, "groups": [{"name": "a", "count": 4}], "workload": [{"phase": "bootstrap"}],
                "slas": [{"metric": "bootstrap", "stat": "p95", "op": "<", "threshold": "2s"}]}
    quiet = [0] * (len(LAG_BINS_MS) + 1)
    quiet[0] = 10
    rng = np.random.default_rng(5)

    def verdict_with(again: np.ndarray) -> Verdict:
        joins = [event("bootstrap", float(v), start_ns=i) for i, v in enumerate(rng.lognormal(np.log(100), 0.2, 60))]
        stretch = event("rerun", 1000, peer=None, start_ns=10**9, phase="bootstrap", time_dilation=2.0)
        rejoins = [event("bootstrap", float(v), start_ns=10**9 + i) for i, v in enumerate(again)]
        events = [event("phase", 1, peer=None, phase="bootstrap", number=1), event("loop_lag", 1, counts=quiet),
                  *joins, stretch, *rejoins]
        manifest = Manifest(status="complete", topology=topology, peers_ready=4)
        return analyze(RunRecords(tmp_path, manifest, events, [])).verdicts[0]

    held = verdict_with(rng.lognormal(np.log(100), 0.2, 50))
    assert held.status == "pass" and held.rerun is not None and held.rerun["conclusive"], held.reason
    moved = verdict_with(rng.lognormal(np.log(50), 0.2, 50))  # half as long at twice the dilation: queueing
    assert moved.status == "inconclusive" and "2N check at dilation 2" in moved.reason
