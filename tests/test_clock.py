"""Virtual time: one timeline for every process of a run, whose factor may change between phases."""

from __future__ import annotations

import json
import math

import pytest

from conftest import DEFAULT, ROOT, TINY
from lab.calibration import fixed
from lab.peers.fleet import HANG_MIN_S, HANG_WINDOWS, hang_limit_s
from lab.peers.settings import peer_settings
from lab.topology import load_topology
from nodes.protocol import LAG_WINDOW_S, Dilation, PeerSettings

SECOND = 1_000_000_000


def timeline() -> tuple[Dilation, int]:
    dilation = Dilation(4.0)
    dilation.start()
    return dilation, dilation.segments[0].real_ns


def test_virtual_time_runs_factor_times_slower_from_the_epoch() -> None:
    dilation, epoch = timeline()
    assert dilation.virtual_ns(epoch) == epoch
    assert dilation.virtual_ns(epoch + 4 * SECOND) == epoch + SECOND
    assert Dilation(1.0).virtual_ns(123) == 123  # undilated: the machine's clock


def test_a_change_of_factor_is_continuous_and_sleeps_span_it() -> None:
    dilation, epoch = timeline()
    wall = dilation.segments[0].real_wall_ns
    dilation.switch(10.0, epoch + 8 * SECOND, wall + 8 * SECOND)  # announced ahead: from 8 s real on
    assert dilation.virtual_ns(epoch + 8 * SECOND) == epoch + 2 * SECOND  # no jump at the instant
    assert dilation.virtual_ns(epoch + 18 * SECOND) == epoch + 3 * SECOND  # 10 s real = 1 s virtual after it
    assert dilation.virtual_wall_ns(wall + 18 * SECOND) == wall + 3 * SECOND
    # from 4 s real (1 s virtual) to a deadline at 2.2 s virtual: 4 s real to the change, then 0.2 s x 10
    assert dilation.sleep_s((epoch + 2.2 * SECOND) / 1e9, epoch + 4 * SECOND) == pytest.approx(6.0)
    assert dilation.sleep_s(math.inf, epoch) == math.inf  # trio's "no deadline"
    for real in (epoch, epoch + 3 * SECOND, epoch + 8 * SECOND, epoch + 25 * SECOND):  # and back to the machine's clock
        assert dilation.real_ns(dilation.virtual_ns(real)) == real


def test_every_process_rebuilds_the_same_timeline_from_its_start_call() -> None:
    dilation, epoch = timeline()
    dilation.switch(10.0, epoch + 8 * SECOND, dilation.segments[0].real_wall_ns + 8 * SECOND)
    settings = peer_settings(load_topology(DEFAULT), "/ip4/127.0.0.1/tcp/0", dilation)
    copy = PeerSettings.of(json.loads(json.dumps(settings.record()))).dilation  # as the START call carries it
    assert copy == dilation and copy.switchable
    probe = epoch + 12_345_678_901
    assert copy.virtual_ns(probe) == dilation.virtual_ns(probe)
    copy.follow(copy.segments[-1])  # an announced change heard twice is one change
    assert len(copy.segments) == 2


def test_the_dilation_is_settled_once_with_each_phase_s_factor() -> None:
    written = load_topology(ROOT / "topologies" / "1000-peers.yaml")
    dilation = fixed(written, 6.0, "network.time_dilation: 6")
    gossip = next(number for number, phase in enumerate(written.workload, 1) if phase.phase == "gossip")
    assert dilation.of_phase(1) == 6.0 and dilation.of_phase(gossip) == written.workload[gossip - 1].time_dilation
    assert dilation.switchable and dilation.dilated
    default = load_topology(DEFAULT)
    checked = fixed(default, 2.0, "")  # its 2N check: gossip (its phase at 16) and joins, warm-up, N, 2N, 2N, N each
    assert checked.later == (16.0, 16.0, 32.0, 32.0, 16.0, 2.0, 2.0, 4.0, 4.0, 2.0) and checked.dilated
    tiny = load_topology(TINY)
    unchecked = tiny.model_copy(update={"fidelity": tiny.fidelity.model_copy(update={"rerun": 0})})
    assert not fixed(unchecked, 1.0, "").dilated  # the machine's own clock: nothing to install


LAG_WINDOWS = """
import json, time, trio
from nodes import clock
from nodes.lag import Speakers, watch_lag
from nodes.protocol import Dilation
from nodes.recorder import Recorder

dilation = Dilation(4.0)
dilation.start()
clock.adopt(dilation)
windows = []

async def emit(message):
    windows.append((message["start_ns"], message["end_ns"]))

async def main():
    async with trio.open_nursery() as nursery:
        speakers = Speakers()
        speakers.join(Recorder(emit, 0))
        nursery.start_soon(watch_lag, speakers)
        switch = time.monotonic_ns() + 600_000_000  # 0.6 s of the machine's time from now
        clock.retime(1.0, switch, time.time_ns() + 600_000_000)
        await trio.sleep(0.8)  # virtual: past the switch (0.15 s virtual in), and a whole window at factor 1
        nursery.cancel_scope.cancel()
    print(json.dumps({"switch": dilation.virtual_ns(switch), "windows": windows}))

trio.run(main, clock=clock.CLOCK)
"""


def test_a_loop_lag_window_ends_where_the_clock_s_factor_changes() -> None:
    """At a high factor a window lasts minutes of the machine's time; the work after a switch back
    must not be pooled with the operations measured before it (a subprocess: the clock is global)."""
    import subprocess
    import sys

    from nodes.protocol import LAG_WINDOW_S

    done = subprocess.run([sys.executable, "-c", LAG_WINDOWS], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    switch, windows = result["switch"], result["windows"]
    assert not [(start, end) for start, end in windows if start < switch < end], (switch, windows)
    ended = [(start, end) for start, end in windows if end == switch]  # at the switch, not at a wake-up after it
    assert len(ended) == 1 and ended[0][1] - ended[0][0] < LAG_WINDOW_S * SECOND / 2, (switch, windows)
    assert any(start >= switch for start, _ in windows)  # the next window is the new factor's


def test_the_hang_limit_follows_the_highest_factor_since_a_process_was_last_heard() -> None:
    dilation, epoch = timeline()
    dilation.switch(400.0, epoch + 10 * SECOND, dilation.segments[0].real_wall_ns + 10 * SECOND)
    dilation.switch(6.0, epoch + 20 * SECOND, dilation.segments[0].real_wall_ns + 20 * SECOND)
    assert dilation.highest_between(epoch, epoch + 5 * SECOND) == dilation.network
    assert dilation.highest_between(epoch + 5 * SECOND, epoch + 25 * SECOND) == 400.0  # the stretch at 400 lies between
    assert dilation.highest_between(epoch + 21 * SECOND, epoch + 25 * SECOND) == 6.0
    assert hang_limit_s(1.0) == HANG_MIN_S and hang_limit_s(400.0) == HANG_WINDOWS * LAG_WINDOW_S * 400.0
