"""The userspace backend's delay line: what a change of time dilation does to packets it holds."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from lab.shaping.delayer import READ_MARGIN_TICKS, READ_MAX_S, TICK_MAX_S, Delayer, Held
from lab.shaping.plan import LinkPlan, earliest_release


def test_a_change_of_dilation_stretches_what_held_packets_have_left(tmp_path: Path) -> None:
    delayer = Delayer(str(tmp_path / "control.sock"), seed=1)
    now = time.monotonic()
    packet: Any = None  # no verdict is given here: only the schedule is looked at
    delayer.heap = [Held(now + 0.100, 1, packet, packet), Held(now + 0.010, 0, packet, packet)]
    assert delayer._retime({"ratio": 4.0}) == {"ok": True, "retimed": 2}
    assert delayer.heap[0].seq == 0, "still a heap: the earliest release first"
    left = [held.due - now for held in delayer.heap]
    assert sorted(left) == [pytest.approx(0.040, abs=0.005), pytest.approx(0.400, abs=0.02)]
    delayer._retime({"ratio": 0.25})  # and back: the run's time is what a packet keeps
    assert sorted(held.due - now for held in delayer.heap) == [pytest.approx(0.010, abs=0.005), pytest.approx(0.100, abs=0.01)]


class Verdicts:
    """Stands for a queued packet: records when its verdict was given."""

    def __init__(self) -> None:
        self.accepted_at: float | None = None

    def accept(self) -> None:
        self.accepted_at = time.monotonic()


class Queue:
    """Stands for the bound queue, with nothing queued: only the plans are looked at."""

    def run(self, block: bool) -> None:
        pass


class Stamped:
    """Stands for a queued packet: its kernel stamp, as get_timestamp gives it."""

    def __init__(self, stamp: float) -> None:
        self.stamp = stamp

    def get_timestamp(self) -> float:
        return self.stamp


def configure(delayer: Delayer, plans: list[dict[str, Any]]) -> dict[str, Any]:
    if delayer.nfq is None:
        delayer.nfq = Queue()  # type: ignore[assignment]
    peers = [{"index": i, "ip": f"198.18.0.{i + 1}", "plan": plan} for i, plan in enumerate(plans)]
    return delayer._configure({"peers": peers, "regions": {"198.18.0.1": "a", "198.18.0.2": "b"}})


def test_the_tick_is_half_the_delay_checks_tolerance_for_the_shortest_delay_held(tmp_path: Path) -> None:
    """A release is off by at most half a tick, a quarter of the tolerance: a round trip through
    two delay lines (across machines) keeps half of it for late wake-ups."""
    delayer = Delayer(str(tmp_path / "control.sock"), seed=1)
    assert delayer.tick == pytest.approx(0.0005), "no plan yet: half the tolerance's 1 ms floor"
    reply = configure(delayer, [{"delay_s": 0.2, "to_region": {"a": 0.0, "b": 1.6}}, {"delay_s": 0.0, "to_region": {"a": 0.4}}])
    assert reply["tick_s"] == pytest.approx(0.05 * 0.2 / 2), "the shortest delay is the 200 ms one, not 0 (no delay)"
    configure(delayer, [{"delay_s": 0.030}])  # peer 0's link shortened: the tick follows it
    assert delayer.tick == pytest.approx(0.00075)
    delayer._retime({"ratio": 0.5})
    assert delayer.tick == pytest.approx(0.000375), "a change of dilation scales it until the new plans come"
    configure(delayer, [{"delay_s": 2.0}, {"delay_s": 2.0}])
    assert delayer.tick == TICK_MAX_S, "a release at most 5 ms off, however long the delay"


def test_a_wake_up_releases_what_is_due_within_half_a_tick_and_nothing_later(tmp_path: Path) -> None:
    delayer = Delayer(str(tmp_path / "control.sock"), seed=1)
    delayer.tick = 0.010
    now = time.monotonic()
    sender: Any = type("S", (), {"held": 3})()
    packets = [Verdicts() for _ in range(3)]
    delayer.heap = [Held(now - 0.001, 0, packets[0], sender), Held(now + 0.004, 1, packets[1], sender),
                    Held(now + 0.050, 2, packets[2], sender)]
    delayer._release_due()
    assert [p.accepted_at is not None for p in packets] == [True, True, False]
    assert sender.held == 1 and len(delayer.heap) == 1
    assert delayer.lateness[0] == pytest.approx(0.001, abs=0.001) and -0.005 <= delayer.lateness[1] < 0, \
        "the second went early, by less than half a tick"


def test_stats_count_every_release_and_sample_the_lateness_of_all_of_them(tmp_path: Path, monkeypatch: Any) -> None:
    """A phase of a large run releases millions of packets: the count is all of them, and the
    lateness quantiles come from a sample spread over the whole phase, not its first packets."""
    monkeypatch.setattr("lab.shaping.delayer.LATENESS_KEPT", 100)
    delayer = Delayer(str(tmp_path / "control.sock"), seed=1)
    for late in range(10_000):  # lateness rising through the stretch: its first 100 are all under 0.01
        delayer._keep_lateness(late / 10_000)
    stats = delayer._stats()
    assert stats["released"] == 10_000
    assert 0.3 < stats["lateness_s"]["p50"] < 0.7, "a sample of the whole stretch has its median near the middle"
    assert stats["lateness_s"]["max"] > 0.9
    assert delayer._stats()["released"] == 0, "counted since the last time it was asked"


def test_the_earliest_release_is_the_shortest_delay_less_jitter_and_none_where_a_link_reorders() -> None:
    regional = LinkPlan(delay_s=0.030, to_region={"a": 0.0, "b": 0.240})
    assert earliest_release([regional]) == pytest.approx(0.030)
    assert earliest_release([regional, LinkPlan(delay_s=0.1, jitter_s=0.02)]) == pytest.approx(0.030)
    assert earliest_release([LinkPlan(delay_s=0.1, jitter_s=0.02)]) == pytest.approx(0.080)
    assert earliest_release([LinkPlan(delay_s=0.1, jitter_s=0.02, distribution="normal")]) == 0.0, "a gaussian has no bound"
    assert earliest_release([regional, LinkPlan(delay_s=0.1, reorder=0.01)]) == 0.0, "a reordered packet goes at once"
    assert earliest_release([LinkPlan(delay_s=0.01, jitter_s=0.02)]) == 0.0


def test_an_arrival_is_the_kernels_stamp_on_either_clock_else_the_read_and_reads_are_prompt_from_then(
        tmp_path: Path) -> None:
    delayer = Delayer(str(tmp_path / "control.sock"), seed=1)
    reply = configure(delayer, [{"delay_s": 0.008}, {"delay_s": 0.240}])
    assert reply["read_within_s"] == pytest.approx(0.008 - READ_MARGIN_TICKS * reply["tick_s"]), \
        "an unread packet is read before the earliest it could be due"
    assert configure(delayer, [{"delay_s": 2.0}, {"delay_s": 2.0}])["read_within_s"] == READ_MAX_S
    delayer.reading_at = time.monotonic()
    delayer.realtime_offset = time.time() - delayer.reading_at
    realtime = Stamped(time.time() - 0.004)  # stamped on receipt, 4 ms before this read
    assert delayer._arrival(realtime) == pytest.approx(delayer.reading_at - 0.004, abs=0.0005)  # type: ignore[arg-type]
    departed = Stamped(delayer.reading_at - 0.002)  # a TCP sender's departure time, monotonic
    assert delayer._arrival(departed) == pytest.approx(delayer.reading_at - 0.002)  # type: ignore[arg-type]
    assert delayer.unstamped == 0 and delayer.read_within > 0
    assert delayer._arrival(Stamped(0.0)) == delayer.reading_at, "no stamp: the read's instant"  # type: ignore[arg-type]
    assert delayer.unstamped == 1 and delayer.read_within == 0, "without stamps a packet must be read as it comes"
    assert configure(delayer, [{"delay_s": 2.0}])["read_within_s"] == 0
