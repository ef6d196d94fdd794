"""The round-trip check of a link across machines (lab/shaping/crossing.py), on synthetic round
trips with known truth."""

from __future__ import annotations

import random

from lab.shaping.crossing import crossing_report
from lab.shaping.plan import LinkPlan

THERE, BACK = LinkPlan(delay_s=0.010), LinkPlan(delay_s=0.020)  # 30 ms added to every round trip


def _trips(median_s: float, spread_s: float, count: int = 40, seed: int = 1) -> list[float]:
    rng = random.Random(seed)
    return [median_s + rng.uniform(-spread_s, spread_s) for _ in range(count)]


def _status(before: list[float], after: list[float]) -> tuple[str, float]:
    check = crossing_report(0, 5, THERE, BACK, None, None, before, after).checks[0]
    return check.status, check.measured


def test_links_that_add_their_delays_pass() -> None:
    status, added = _status(_trips(0.0004, 0.0001), _trips(0.0304, 0.0002, seed=2))
    assert status == "passed" and abs(added - 0.030) < 0.0005


def test_links_that_add_nothing_fail() -> None:
    assert _status(_trips(0.0004, 0.0001), _trips(0.0004, 0.0001, seed=2))[0] == "failed"


def test_a_difference_hidden_in_noise_is_unverified_not_failed() -> None:
    """4 ms off (beyond the 1.5 ms tolerance) but the round trips spread over +-25 ms."""
    assert _status(_trips(0.010, 0.025), _trips(0.044, 0.025, seed=2))[0] == "unverified"


def test_no_probe_back_fails_and_says_so() -> None:
    check = crossing_report(0, 5, THERE, BACK, None, None, _trips(0.0004, 0.0001), []).checks[0]
    assert check.status == "failed" and "no probe came back" in check.reason
