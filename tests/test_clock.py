"""Virtual time: one timeline for every process of a run, whose factor may change between phases."""

from __future__ import annotations

import math

import pytest

from nodes.protocol import Dilation

SECOND = 1_000_000_000


def timeline() -> tuple[Dilation, int]:
    dilation = Dilation.starting_now(4.0)
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


def test_every_process_rebuilds_the_same_timeline_from_the_environment() -> None:
    dilation, epoch = timeline()
    dilation.switch(10.0, epoch + 8 * SECOND, dilation.segments[0].real_wall_ns + 8 * SECOND)
    copy = Dilation.of_env(dilation.env())
    assert copy.segments == dilation.segments and not copy.switchable
    assert Dilation.of_env(Dilation.starting_now(1.0, switchable=True).env()).switchable
    probe = epoch + 12_345_678_901
    assert copy.virtual_ns(probe) == dilation.virtual_ns(probe)
