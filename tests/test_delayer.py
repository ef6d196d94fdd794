"""The userspace backend's delay line: what a change of time dilation does to packets it holds."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from lab.shaping.delayer import TICK_MAX_S, Delayer, Held


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


def configure(delayer: Delayer, plans: list[dict[str, Any]]) -> dict[str, Any]:
    delayer.nfq = object()  # type: ignore[assignment]  # bound already: only the plans are given
    peers = [{"index": i, "ip": f"198.18.0.{i + 1}", "plan": plan} for i, plan in enumerate(plans)]
    return delayer._configure({"peers": peers, "regions": {"198.18.0.1": "a", "198.18.0.2": "b"}})


def test_the_tick_is_half_the_delay_checks_tolerance_for_the_shortest_delay_held(tmp_path: Path) -> None:
    delayer = Delayer(str(tmp_path / "control.sock"), seed=1)
    assert delayer.tick == pytest.approx(0.0005), "no plan yet: half the tolerance's 1 ms floor"
    reply = configure(delayer, [{"delay_s": 0.2, "to_region": {"a": 0.0, "b": 1.6}}, {"delay_s": 0.0, "to_region": {"a": 0.4}}])
    assert reply["tick_s"] == pytest.approx(0.05 * 0.2 / 2), "the shortest delay is the 200 ms one, not 0 (no delay)"
    configure(delayer, [{"delay_s": 0.030}])  # peer 0's link shortened: the tick follows it
    assert delayer.tick == pytest.approx(0.00075)
    delayer._retime({"ratio": 0.5})
    assert delayer.tick == pytest.approx(0.000375), "a change of dilation scales it until the new plans come"
    configure(delayer, [{"delay_s": 2.0}, {"delay_s": 2.0}])
    assert delayer.tick == TICK_MAX_S, "what arrives in a tick waits in the socket's buffer: a tick is short"


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
