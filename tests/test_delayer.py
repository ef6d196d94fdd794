"""The userspace backend's delay line: what a change of time dilation does to packets it holds,
how fine it releases them, and the alarm it wakes on."""

from __future__ import annotations

import select
import time
from pathlib import Path
from typing import Any

import pytest

from lab.shaping.alarm import Alarm
from lab.shaping.delayer import GRAIN_S, Delayer
from lab.shaping.plan import LinkPlan


def test_a_change_of_dilation_stretches_what_held_packets_have_left(tmp_path: Path) -> None:
    delayer = Delayer(str(tmp_path / "control.sock"), seed=1)
    now = time.monotonic()
    packet: Any = None  # no verdict is given here: only the schedule is looked at
    delayer.heap = [(now + 0.100, 1, packet, packet), (now + 0.010, 0, packet, packet)]
    assert delayer._retime({"ratio": 4.0}) == {"ok": True, "retimed": 2}
    assert delayer.heap[0][1] == 0, "still a heap: the earliest release first"
    left = [due - now for due, *_ in delayer.heap]
    assert sorted(left) == [pytest.approx(0.040, abs=0.005), pytest.approx(0.400, abs=0.02)]
    delayer._retime({"ratio": 0.25})  # and back: the run's time is what a packet keeps
    assert sorted(due - now for due, *_ in delayer.heap) == [pytest.approx(0.010, abs=0.005), pytest.approx(0.100, abs=0.01)]


def test_the_release_grain_is_a_fifth_of_the_tolerance_of_the_shortest_delay(tmp_path: Path) -> None:
    """A busy delay line releases at most a grain late: a fifth of what the delay check lets the
    shortest delay in force be off (max(1 ms, 5%)), so a dilated run's longer delays buy fewer wake-ups."""
    delayer = Delayer(str(tmp_path / "control.sock"), seed=1)
    delayer.nfq = object()  # type: ignore[assignment]  # bound already: configure only takes plans here

    def configure(*plans: LinkPlan) -> float:
        peers = [{"index": i, "ip": f"198.18.0.{i + 1}", "plan": p.as_dict()} for i, p in enumerate(plans)]
        delayer._configure({"peers": peers})
        return delayer.grain

    assert configure(LinkPlan(jitter_s=0.002), LinkPlan(reorder=0.1)) == GRAIN_S  # no delay: the default
    assert configure(LinkPlan(delay_s=0.010)) == pytest.approx(0.001 / 5)  # 5% of 10 ms is under the 1 ms floor
    assert configure(LinkPlan(delay_s=0.240), LinkPlan(to_region={"a": 0.030, "b": 0.0})) == pytest.approx(0.05 * 0.030 / 5)
    assert LinkPlan(delay_s=0.010, to_region={"a": 0.005}).dilated(400).shortest_delay_s == pytest.approx(4.0)
    assert LinkPlan(loss=0.01).shortest_delay_s is None


def test_the_alarm_fires_at_its_instant_and_not_before() -> None:
    alarm = Alarm()
    try:
        alarm.at(time.monotonic() + 0.3)
        assert select.select([alarm.fd], [], [], 0)[0] == [], "readable before its instant"
        assert select.select([alarm.fd], [], [], 5)[0] == [alarm.fd], "never fired"
        assert time.monotonic() >= alarm.armed  # type: ignore[operator]
        alarm.clear()
        assert alarm.armed is None and select.select([alarm.fd], [], [], 0)[0] == [], "still readable once read"
        alarm.at(time.monotonic() - 1)  # a past instant fires at once
        assert select.select([alarm.fd], [], [], 5)[0] == [alarm.fd]
        alarm.clear()
        alarm.at(time.monotonic() + 0.05)
        alarm.disarm()
        assert select.select([alarm.fd], [], [], 0.2)[0] == [], "fired though disarmed"
    finally:
        alarm.close()
