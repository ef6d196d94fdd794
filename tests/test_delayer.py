"""The userspace backend's delay line: what a change of time dilation does to packets it holds."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from lab.shaping.delayer import Delayer, Held


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
