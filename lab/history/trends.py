"""A history of nights as series and change points: what `lab history` prints, pages and exports.

Series are (topology, testbed, metric): a testbed change starts a new series and is a marker,
never a change point, since no change across machines says anything about the code. Change
points of one night are grouped across metrics; only a confirmed, unacknowledged regression
fails the command.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from itertools import groupby
from typing import Any

from lab.history.acks import Ack
from lab.history.changes import Change, Rules, change_points
from lab.history.nights import Night, testbeds
from lab.metric_names import higher_is_better


@dataclass(frozen=True)
class Series:
    topology: str
    testbed: str
    metric: str
    unit: str
    nights: tuple[Night, ...]  # those that measured the metric, in order

    @property
    def values(self) -> list[float]:
        return [night.metrics[self.metric].value for night in self.nights]


@dataclass(frozen=True)
class Flagged:
    """A change point placed in its history: the nights around it, their commits, its acknowledgement."""

    series: Series
    change: Change
    ack: Ack | None

    @property
    def night(self) -> Night:
        return self.series.nights[self.change.index]

    @property
    def previous(self) -> Night:
        return self.series.nights[self.change.index - 1]

    @property
    def commits(self) -> str:
        def short(commit: str | None) -> str:
            return commit[:10] if commit else "?"
        return f"{short(self.previous.commit)}..{short(self.night.commit)}"

    @property
    def state(self) -> str:
        return "confirmed" if self.change.confirmed else "tentative"

    @property
    def fails(self) -> bool:
        return self.change.worse and self.change.confirmed and self.ack is None

    def record(self) -> dict[str, Any]:
        c = self.change
        return {"topology": self.series.topology, "testbed": self.series.testbed, "metric": self.series.metric,
                "unit": self.series.unit, "night": self.night.run_id, "started_utc": self.night.started.isoformat(),
                "path": str(self.night.path), "commits": self.commits, "state": self.state,
                "direction": "worse" if c.worse else "better", "change": c.change, "interval95": list(c.interval),
                "p_value": c.p_value, "mean_before": c.mean_before, "mean_after": c.mean_after, "nights_before": c.before,
                "nights_after": c.after, "found_by": c.found_by,
                "ack": None if self.ack is None else self.ack.model_dump(mode="json")}


@dataclass
class History:
    rules: Rules
    nights: list[Night]
    series: list[Series]
    changes: list[Flagged]
    markers: list[Night]  # each night that started a testbed (the first of each topology's included)
    skipped: list[str] = field(default_factory=list)

    @property
    def failing(self) -> list[Flagged]:
        return [f for f in self.changes if f.fails]

    def by_night(self) -> list[tuple[Night, list[Flagged]]]:
        """Change points grouped by the night they start at, newest first."""
        ordered = sorted(self.changes, key=lambda f: (f.night.started, f.series.metric), reverse=True)
        return [(night, list(group)) for night, group in groupby(ordered, key=lambda f: f.night)]

    def record(self) -> dict[str, Any]:
        return {
            "rules": {"noise": self.rules.noise, "confirm": self.rules.confirm, "max_pvalue": self.rules.max_pvalue},
            "nights": [{"run_id": n.run_id, "path": str(n.path), "started_utc": n.started.isoformat(), "topology": n.topology,
                        "testbed": n.testbed, "commit": n.commit, "outcome": n.outcome, "runs": n.runs} for n in self.nights],
            "testbeds": [{"topology": n.topology, "testbed": n.testbed, "from": n.run_id} for n in self.markers],
            "series": [{"topology": s.topology, "testbed": s.testbed, "metric": s.metric, "unit": s.unit,
                        "nights": [n.run_id for n in s.nights],
                        "medians": s.values,
                        "intervals95": [[n.metrics[s.metric].low, n.metrics[s.metric].high] for n in s.nights]}
                       for s in self.series],
            "changes": [f.record() for f in self.changes],
            "failing": [f"{f.series.metric} at {f.night.run_id}" for f in self.failing],
            "skipped": self.skipped,
        }


def _window(nights: list[Night], last: int | None, since: datetime | None) -> list[Night]:
    kept = [n for n in nights if since is None or n.started >= since]
    return kept[-last:] if last else kept


def _ack(acks: Iterable[Ack], metric: str, night: Night) -> Ack | None:
    return next((a for a in acks if a.settles(metric, night.run_id, night.commit)), None)


def build(nights: list[Night], rules: Rules, acks: list[Ack], metrics: tuple[str, ...] = (), last: int | None = None,
          since: datetime | None = None) -> History:
    """Series per topology, testbed and metric from NIGHTS (in start order), and their change points."""
    kept: list[Night] = []
    series: list[Series] = []
    for topology in sorted({n.topology for n in nights}):
        named = testbeds(_window([n for n in nights if n.topology == topology], last, since))
        kept += named
        for testbed in dict.fromkeys(n.testbed for n in named):  # a testbed's nights, even if others came between
            stretch = [n for n in named if n.testbed == testbed]
            names = sorted({m for n in stretch for m in n.metrics if not metrics or m in metrics})
            for metric in names:
                measured = tuple(n for n in stretch if metric in n.metrics)
                series.append(Series(topology, testbed, metric, measured[0].metrics[metric].unit, measured))
    flagged = [Flagged(s, change, _ack(acks, s.metric, s.nights[change.index]))
               for s in series for change in change_points(s.values, higher_is_better(s.metric), rules)]
    markers = [n for i, n in enumerate(kept) if i == 0 or (kept[i - 1].topology, kept[i - 1].testbed) != (n.topology, n.testbed)]
    return History(rules, sorted(kept, key=lambda n: n.started), series, flagged, markers)
