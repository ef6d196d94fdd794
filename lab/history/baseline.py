"""`lab compare --baseline-from ROOT CANDIDATE`: the baseline is the stable stretch of ROOT's
history for the candidate's topology and testbed, per metric the nights since its last change
point; the candidate, one run or a `--repeat`, is compared with it run by run (lab/analysis/
compare.py, level "stretch")."""

from __future__ import annotations

from pathlib import Path

from lab.analysis.compare import MetricData, Report, compare_report
from lab.errors import RecordsError
from lab.history.changes import Rules
from lab.history.nights import Night, gather, read_night
from lab.history.trends import build


def _data(nights: list[Night], metric: str) -> MetricData:
    points = [n.metrics[metric] for n in nights]
    return MetricData(points[0].unit, [p.value for p in points], sum(p.n for p in points), sum(p.failures for p in points),
                      [p.p95 if p.p95 is not None else p.value for p in points])


def compare_with_history(root: Path, candidate: Path, rules: Rules, alpha: float, metrics: tuple[str, ...] = ()) -> Report:
    gathered = gather([root])
    night = read_night(candidate)
    others = [n for n in gathered.nights if n.path.resolve() != candidate.resolve()]
    history = build(sorted([*others, night], key=lambda n: n.started), rules, [], metrics)
    night = next(n for n in history.nights if n.path == night.path)  # with its testbed named
    mine = [s for s in history.series if night in s.nights]
    if all(len(s.nights) == 1 for s in mine):
        raise RecordsError(f"{root}: no nights of {night.topology} on the candidate's testbed ({night.testbed}); "
                           "compare with a results directory instead")
    base: dict[str, MetricData] = {}
    cand: dict[str, MetricData] = {}
    stretches: dict[str, list[str]] = {}
    for series in mine:
        past = [n for n in series.nights if n is not night]
        starts = [f.change.index for f in history.changes if f.series is series and f.change.index < len(past)]
        stretch = past[max(starts, default=0):]
        if stretch:
            base[series.metric] = _data(stretch, series.metric)
            stretches[series.metric] = [n.run_id for n in stretch]
        cand[series.metric] = _data([night], series.metric)
    described = {"path": str(root), "testbed": night.testbed, "stretches": stretches}
    return compare_report("stretch", (described, base), ({"path": str(candidate), "runs": night.runs}, cand),
                          frozenset(s.metric for s in night.slas), rules.noise, alpha, gathered.skipped)
