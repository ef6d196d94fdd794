"""The machines' clocks against each other: four-timestamp readings from synthetic exchanges with
a known offset, drift and the bound they give, a real exchange over loopback (one clock: the
offset is 0), and the rule that makes a latency stamped on two machines inconclusive."""

from __future__ import annotations

import pytest

from lab.analysis.figures import CLOCK_SHARE, clocked
from lab.analysis.sla import Verdict
from lab.manifest import ClusterRecord
from lab.remote import clocks
from lab.remote.clocks import Exchange, Reading

MS = 1_000_000


def _exchange(sent: int, offset: int, there: int, back: int, turn: int = 20_000) -> Exchange:
    """A probe sent at `sent` (reference clock) to a clock `offset` ahead, `there` and `back` ns on the way."""
    arrived = sent + there + offset
    return Exchange(sent, arrived, arrived + turn, sent + there + turn + back)


def test_the_quickest_exchange_gives_the_offset_within_half_its_delay() -> None:
    exchanges = [_exchange(0, 5 * MS, 300_000, 40_000), _exchange(10**9, 5 * MS, 30_000, 30_000),
                 _exchange(2 * 10**9, 5 * MS, 40_000, 900_000)]
    reading = Reading.of(exchanges)
    assert reading == Reading(10**9 + (30_000 + 20_000 + 30_000) // 2, 5 * MS, 30_000)
    skewed = Reading.of([_exchange(0, 5 * MS, 10_000, 50_000)])  # a one-sided delay: off by half the asymmetry
    assert skewed is not None and abs(skewed.offset_ns - 5 * MS) == 20_000 <= skewed.error_ns
    assert Reading.of([]) is None


def test_drift_wander_and_the_bound_on_two_machines() -> None:
    """A clock 10 ppm fast read every 30 s for 5 minutes: drift 10 ppm; it strays 3 ms from the
    offset it was given; two such machines' timelines differ by at most both wanders."""
    readings = [Reading(t * 30 * 10**9, 5 * MS + t * 300_000, 20_000) for t in range(11)]
    assert clocks.drift_ppm(readings) == pytest.approx(10.0)
    assert clocks.wander_ns(readings) == 3 * MS + 40_000
    assert clocks.wander_ns(readings[:1]) == 20_000
    assert clocks.drift_ppm(readings[:1]) is None
    assert clocks.timeline_error_ns([3 * MS, 1 * MS, 2 * MS]) == 5 * MS
    assert clocks.timeline_error_ns([3 * MS]) == 3 * MS  # against the reference, whose own wander is 0


def test_a_real_exchange_over_loopback_reads_one_clock() -> None:
    port = clocks.serve("127.0.0.1", None)
    exchanges = clocks.probe("127.0.0.1", None, ("127.0.0.1", port), count=10)
    reading = Reading.of(exchanges)
    assert len(exchanges) == 10 and reading is not None
    assert abs(reading.offset_ns) <= reading.error_ns < 50 * MS


def _verdict(metric: str, unit: str, threshold: float, stat: str = "p95") -> Verdict:
    return Verdict(metric, stat, "<=", f"{threshold}", threshold / 2, "pass", "holds", unit, threshold)


@pytest.mark.parametrize(("metric", "unit", "threshold", "error_ms", "status"), [
    ("gossip_delivery", "millisecond", 3000.0, 3000 * CLOCK_SHARE * 1.2, "inconclusive"),
    ("gossip_delivery", "millisecond", 3000.0, 3000 * CLOCK_SHARE * 0.8, "pass"),
    ("time_to_ready", "second", 300.0, 300_000 * CLOCK_SHARE * 1.2, "inconclusive"),
    ("get", "millisecond", 500.0, 500.0, "pass"),  # stamped by its caller alone
])
def test_a_latency_stamped_on_two_machines_needs_their_clocks_to_agree(metric: str, unit: str, threshold: float,
                                                                       error_ms: float, status: str) -> None:
    cluster = ClusterRecord(address="h:1", ray_version="x", nodes=[], placement="p", clock_error_ns=int(error_ms * MS))
    judged = clocked(_verdict(metric, unit, threshold), cluster)
    assert judged.status == status
    assert ("clocks agreed within" in judged.reason) == (status == "inconclusive")
    assert clocked(_verdict(metric, unit, threshold), None).status == "pass"  # one machine: one clock
    one_machine = cluster.model_copy(update={"clock_error_ns": None})
    assert clocked(_verdict(metric, unit, threshold), one_machine).status == "pass"
