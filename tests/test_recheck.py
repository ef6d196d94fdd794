"""The 2N check (lab/analysis/recheck.py): operations measured again at the phase's dilation and
at twice it must not move beyond their noise; operations measured again are kept apart from the
workload's figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from conftest import event
from lab.analysis.figures import analyze
from lab.analysis.recheck import Again, Stretch, recheck, split
from lab.analysis.records import RunRecords
from lab.analysis.sla import Verdict
from lab.manifest import Manifest
from lab.topology import Sla
from nodes.protocol import LAG_BINS_MS, Event

P95 = Sla(metric="dht_lookup", stat="p95", op="<=", threshold="500ms")


def lookups(values: np.ndarray, start_ns: int = 0, op: str = "dht_lookup") -> list[Event]:
    return [event(op, float(v), start_ns=start_ns + i) for i, v in enumerate(values)]


def stretch(values: np.ndarray, factor: float, doubled: bool) -> Again:
    return Stretch("lookup", factor, doubled, 0, 1), lookups(values)


def test_operations_in_a_rerun_stretch_are_its_own_not_the_workloads() -> None:
    workload = lookups(np.full(5, 100.0))
    marks = [event("rerun", 10_000, peer=None, start_ns=at, phase="lookup", time_dilation=f, doubled=d)
             for at, f, d in ((10**9, 6.0, False), (10**11, 12.0, True))]
    again, doubled = lookups(np.full(3, 90.0), start_ns=10**9 + 1), lookups(np.full(3, 50.0), start_ns=10**11 + 1)
    main, reruns = split([*workload, marks[0], *again, marks[1], *doubled])
    assert main == [*workload, *marks]  # the stretches' own events mark them; they are no operations
    assert reruns["lookup"][False] == (Stretch("lookup", 6.0, False, 10**9, 11 * 10**9), again)
    assert reruns["lookup"][True] == (Stretch("lookup", 12.0, True, 10**11, 110 * 10**9), doubled)


def test_a_figure_that_halves_at_twice_the_dilation_measured_queueing() -> None:
    rng = np.random.default_rng(3)
    queued = rng.lognormal(np.log(800), 0.3, 200)  # mostly waiting for a CPU: halves when the machine looks 2x faster
    check = recheck(P95, list(queued), stretch(rng.lognormal(np.log(800), 0.3, 50), 6, False),
                    stretch(rng.lognormal(np.log(400), 0.3, 50), 12, True), 0.05)
    assert not check.conclusive and [m.name for m in check.moves] == ["p50", "p95"]
    assert check.moves[0].move < -0.3 and "moved" in check.reason("millisecond")
    assert check.factors == (6, 12) and check.n == (50, 50)


def test_a_figure_of_the_protocol_holds_within_its_noise() -> None:
    rng = np.random.default_rng(4)

    def protocol(n: int) -> np.ndarray:
        return rng.lognormal(np.log(300), 0.3, n)

    check = recheck(P95, list(protocol(200)), stretch(protocol(50), 6, False), stretch(protocol(50), 12, True), 0.05)
    assert check.conclusive, check.reason("millisecond")
    p50 = check.moves[0]
    assert p50.tolerance > 0.05  # 50 operations bound a median to some percent, not to 5%: the noise is the band
    assert abs(p50.move) <= p50.tolerance and "held" in check.reason("millisecond")


def test_no_rerun_or_too_few_operations_is_not_conclusive() -> None:
    assert not recheck(P95, [100.0] * 50, None, None, 0.05).conclusive
    few = recheck(P95, [100.0] * 50, stretch(np.full(50, 100.0), 6, False), stretch(np.full(3, 100.0), 12, True), 0.05)
    assert not few.conclusive and "too few operations" in few.reason("millisecond")


def test_a_verdict_is_conclusive_only_with_its_2n_figure_held(tmp_path: Path) -> None:
    topology = {"name": "r", "seed": 1, "groups": [{"name": "a", "count": 4}], "workload": [{"phase": "bootstrap"}],
                "slas": [{"metric": "bootstrap", "stat": "p95", "op": "<", "threshold": "2s"}]}
    quiet = [0] * (len(LAG_BINS_MS) + 1)
    quiet[0] = 10
    rng = np.random.default_rng(5)

    def verdict_with(at_2n: float) -> Verdict:
        events = [event("phase", 1, peer=None, phase="bootstrap", number=1), event("loop_lag", 1, counts=quiet),
                  *lookups(rng.lognormal(np.log(100), 0.2, 60), op="bootstrap")]
        for start, factor, median in ((10**9, 1.0, 100), (10**11, 2.0, at_2n)):
            events.append(event("rerun", 1000, peer=None, start_ns=start, phase="bootstrap", time_dilation=factor,
                                doubled=factor == 2.0))
            events += lookups(rng.lognormal(np.log(median), 0.2, 50), start_ns=start + 1, op="bootstrap")
        manifest = Manifest(status="complete", topology=topology, peers_ready=4)
        return analyze(RunRecords(tmp_path, manifest, events, [])).verdicts[0]

    held = verdict_with(100)
    assert held.status == "pass" and held.rerun is not None and held.rerun["conclusive"], held.reason
    moved = verdict_with(50)  # half as long at twice the dilation: queueing
    assert moved.status == "inconclusive" and "2N check, 50 operations at dilation 1 then 50 at 2" in moved.reason


def deliveries(medians: list[float], receivers: int, rng: np.random.Generator) -> list[Event]:
    """Per message, its deliveries: each message's own median (the mesh it took), spread around it."""
    return [event("gossip_delivery", float(v), msg=f"gossip:{m}") for m, median in enumerate(medians)
            for v in rng.lognormal(np.log(median), 0.05, receivers)]


def test_a_gossip_delivery_s_noise_is_that_of_its_messages_not_of_its_deliveries() -> None:
    rng = np.random.default_rng(5)
    p95 = Sla(metric="gossip_delivery", stat="p95", op="<=", threshold="3s")
    workload = [e.ms for e in deliveries([50, 55, 47], 200, rng)]

    def side(medians: list[float], factor: float, doubled: bool) -> Again:
        return Stretch("gossip", factor, doubled, 0, 1), deliveries(medians, 200, rng)

    # Four messages a side whose medians differ by ±10% from one message to the next, the same at both
    # dilations: 800 deliveries a side would call a 7% move real; four messages cannot.
    check = recheck(p95, workload, side([50, 46, 54, 49], 400, False), side([54, 50, 57, 52], 800, True), 0.05)
    assert check.conclusive, check.reason("millisecond")
    assert check.moves[0].move > 0.05 and check.moves[0].tolerance > check.moves[0].move
    # Two messages a side are too few to tell a move from the mesh
    few = recheck(p95, workload, side([50, 46], 400, False), side([50, 46], 800, True), 0.05)
    assert not few.conclusive and not few.moves and "2 and 2 messages" in few.reason("millisecond")
    # Many messages that all took twice as long did move
    slow = recheck(p95, workload, side([50, 46, 54, 49, 51, 48], 400, False), side([100, 92, 108, 98, 102, 96], 800, True), 0.05)
    assert not slow.conclusive and slow.moves[0].move > 0.8
