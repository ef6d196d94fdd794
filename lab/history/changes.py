"""Change points in one series of nights: where a metric's level moved, by how much, how sure.

Segmentation is ruptures' binary segmentation (l2 cost on the log run medians, every night a
candidate, penalty PENALTY·σ²·ln n with σ the night-to-night noise, estimated robustly from
successive differences so that the steps themselves do not inflate it). Each change point it
proposes is then tested with scipy: Welch's t between the stretches on either side, kept only if
its p-value is below `max_pvalue` and its size beyond the noise band (`--noise`, as in `lab
compare`); the weakest is dropped and its neighbours retested until all hold.

Segmentation needs several nights after a step to see it, so the newest nights are also compared
with the stable stretch since the last change point (a pooled baseline, never the previous night
alone): Student's t with the stretch's spread (lab/analysis/compare.py `pooled_test`), held to
the same p-value. A change is
*tentative* until `confirm` nights follow it; one bad night is at most a tentative change.
docs/nightly.md states the false-alarm and detection rates this gives on synthetic histories.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import ruptures

from lab.analysis.compare import Test, pooled_test, welch_test

PENALTY = 4.0  # x sigma^2 ln n: no false change in 20 noise-only histories of 60 nights (the measurement)
MIN_SIZE = 2  # nights a segment needs on each side


@dataclass(frozen=True)
class Rules:
    noise: float = 0.03  # relative changes inside ±noise are not changes
    confirm: int = 3  # nights that must follow a change before it is confirmed
    max_pvalue: float = 0.001  # a change's test (Otava's default): both segmentation's and the newest nights'
    stretch: int = 5  # nights of stable stretch the newest nights need to be compared with


@dataclass(frozen=True)
class Change:
    index: int  # the first night at the new level
    before: int  # nights in the stretch before (since the previous change point)
    after: int  # nights at the new level, this one included
    mean_before: float  # geometric means in the metric's unit
    mean_after: float
    change: float  # relative: after / before - 1
    interval: tuple[float, float]  # 95%
    p_value: float
    worse: bool
    confirmed: bool
    found_by: Literal["segmentation", "newest nights"]


def _centre(values: np.ndarray) -> float:
    return float(np.exp(np.log(values).mean()))


def _noise(signal: np.ndarray) -> float:
    """The night-to-night standard deviation, from the median absolute successive difference."""
    diffs = np.diff(signal)
    return float(1.4826 * np.median(np.abs(diffs - np.median(diffs))) / math.sqrt(2))


def _segments(signal: np.ndarray) -> list[int]:
    """Where binary segmentation puts the steps (indexes of the first night after each)."""
    n = signal.size
    if n < 2 * MIN_SIZE:
        return []
    sigma2 = max(_noise(signal) ** 2, 1e-12)
    ends = ruptures.Binseg(model="l2", min_size=MIN_SIZE, jump=1).fit(signal.reshape(-1, 1)).predict(
        pen=PENALTY * sigma2 * math.log(n))
    return [end for end in ends if end < n]


def _change(values: np.ndarray, start: int, index: int, stop: int, test: Test, higher_better: bool, rules: Rules,
            found_by: Literal["segmentation", "newest nights"]) -> Change:
    before, after = values[start:index], values[index:stop]
    return Change(index, before.size, after.size, _centre(before), _centre(after), test.change, test.interval,
                  test.p_value, (test.change > 0) != higher_better, values.size - index - 1 >= rules.confirm, found_by)


def _holds(test: Test, rules: Rules) -> bool:
    return test.p_value < rules.max_pvalue and abs(test.change) >= rules.noise


def _tested(values: np.ndarray, points: list[int], rules: Rules) -> list[tuple[int, Test]]:
    """The segmentation's points that hold, each tested against its neighbours' stretches."""
    points = sorted(points)
    while points:
        edges = [0, *points, values.size]
        tests = [welch_test(list(values[edges[i]:edges[i + 1]]), list(values[edges[i + 1]:edges[i + 2]]), rules.noise, 0.025)
                 for i in range(len(points))]
        weak = [i for i, test in enumerate(tests) if not _holds(test, rules)]
        if not weak:
            return list(zip(points, tests, strict=True))
        del points[max(weak, key=lambda i: tests[i].p_value)]
    return []


def _newest(values: np.ndarray, start: int, rules: Rules) -> tuple[int, Test] | None:
    """The newest nights' move from the stable stretch since START, if they moved: the split
    with the smallest p-value among the last `confirm` + 3 nights,
    each split's p-value multiplied by the number tried."""
    n = values.size
    splits = range(max(start + rules.stretch, n - rules.confirm - 3), n)
    tests = [(index, pooled_test(list(values[start:index]), list(values[index:]), rules.noise, 0.025)) for index in splits]
    held = [(index, test) for index, test in tests if test.p_value * len(tests) < rules.max_pvalue  # Bonferroni
            and abs(test.change) >= rules.noise]
    return min(held, key=lambda found: found[1].p_value, default=None)


def change_points(series: list[float], higher_better: bool, rules: Rules) -> list[Change]:
    """The change points of one metric's nightly values (in night order). A series with a night at
    0 or below has none: a change relative to 0 is undefined (as in `lab compare`)."""
    values = np.asarray(series, float)
    if not bool(np.all(values > 0)):
        return []
    kept = _tested(values, _segments(np.log(values)), rules)
    edges = [0, *(index for index, _ in kept), values.size]
    changes = [_change(values, edges[i], index, edges[i + 2], test, higher_better, rules, "segmentation")
               for i, (index, test) in enumerate(kept)]
    if (newest := _newest(values, edges[-2], rules)) is not None:
        index, test = newest
        changes.append(_change(values, edges[-2], index, values.size, test, higher_better, rules, "newest nights"))
    return changes
