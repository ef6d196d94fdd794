"""The nights of a history: results directories found under some roots, read from their compact
files only (manifest.json, summary.json, verdicts.json; repeat.json for `--repeat`), since a
nightly runner keeps those in a results branch and lets events.jsonl expire with its artifacts.

A night is one run, or one `--repeat` directory (its value per metric the median of its run
medians). Nights are grouped into series by topology name and testbed: the machine's CPU
model, kernel, shaping backend and py-libp2p version, and its speed probe, since two machines
of one CPU name ran the same work 2x apart here. A testbed change starts a new series.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from lab.analysis.records import read_json
from lab.analysis.stats import Summary, median_ci
from lab.errors import RecordsError
from lab.manifest import MANIFEST, REPEAT, REPORT, SUMMARY, SWEEP, VERDICTS, Manifest, read_manifest

SPEED_STEP = 1.75  # machines of one CPU name ran 2x apart here; one machine's probe moved up to 1.65x under a concurrent install


@dataclass(frozen=True)
class Point:
    """One metric on one night: the run median (or the median of a repeat's run medians), its
    95% interval where bounded, the p95 and the operations behind it."""

    unit: str
    value: float
    low: float | None
    high: float | None
    p95: float | None
    n: int
    failures: int


@dataclass(frozen=True)
class Sla:
    metric: str
    stat: str
    op: str
    threshold: float  # in the metric's unit
    status: str


@dataclass(frozen=True)
class Night:
    path: Path
    run_id: str
    started: datetime
    topology: str
    commit: str | None
    machine: tuple[str, ...]  # CPU model, kernel, shaping backend, py-libp2p version
    speed_ms: float | None
    outcome: str  # pass, fail or inconclusive (the worst of a repeat's)
    metrics: dict[str, Point]
    slas: tuple[Sla, ...] = ()
    runs: int = 1
    testbed: str = ""  # set when the series is formed

    @property
    def report(self) -> Path | None:
        path = self.path / REPORT if self.runs == 1 else self.path / "run-1" / REPORT
        return path if path.is_file() else None


@dataclass
class Gathered:
    nights: list[Night] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # one line per directory left out, and why


def _parsed_time(text: str | None, where: Path) -> datetime:
    if not text:
        raise RecordsError(f"{where / MANIFEST}: started_utc is missing; the manifest is damaged")
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise RecordsError(f"{where / MANIFEST}: started_utc {text!r} is not a time; the manifest is damaged") from None


def _json(path: Path) -> Any:
    try:
        return read_json(path)
    except OSError as exc:
        raise RecordsError(f"{path}: cannot read ({exc.strerror})") from None
    except ValueError as exc:
        raise RecordsError(f"{path}: not JSON ({exc}); the directory is damaged") from None


def _summaries(run_dir: Path) -> dict[str, Summary]:
    data = _json(run_dir / SUMMARY)
    try:
        return {name: Summary.of(record) for name, record in data["metrics"].items()}
    except (KeyError, TypeError, ValueError) as exc:
        raise RecordsError(f"{run_dir / SUMMARY}: {exc!s} is missing or wrong; the summary is damaged") from None


def _verdicts(run_dir: Path) -> tuple[str, tuple[Sla, ...]]:
    data = _json(run_dir / VERDICTS)
    try:
        slas = tuple(Sla(v["metric"], v["stat"], v["op"], float(v["threshold_in_unit"]), v["status"])
                     for v in data["verdicts"] if v.get("threshold_in_unit") is not None)
        return str(data["outcome"]), slas
    except (KeyError, TypeError, ValueError) as exc:
        raise RecordsError(f"{run_dir / VERDICTS}: {exc!s} is missing or wrong; the verdicts are damaged") from None


def _complete(run_dir: Path) -> Manifest:
    manifest = read_manifest(run_dir)
    if manifest.status != "complete" or manifest.partial:
        raise RecordsError(f"{run_dir}: the run is {manifest.status}{' (partial)' if manifest.partial else ''}, not a night")
    for name in (SUMMARY, VERDICTS):
        if not (run_dir / name).is_file():
            raise RecordsError(f"{run_dir / name}: missing; the directory is damaged")
    return manifest


def _machine(manifest: Manifest) -> tuple[tuple[str, ...], float | None]:
    testbed = manifest.machine
    identity = (testbed.cpu_model or "unknown CPU" if testbed else "unknown CPU", testbed.kernel if testbed else "?",
                manifest.impairment.backend or "no impairment", f"libp2p {manifest.versions.get('libp2p') or '?'}")
    return identity, testbed.python_speed.best_ms if testbed else None


def _point(summary: Summary) -> Point | None:
    if summary.p50 is None:
        return None
    low, high = summary.median_ci or (None, None)
    return Point(summary.unit, summary.p50, low, high, summary.p95, summary.n, summary.failures)


def _of_run(run_dir: Path) -> Night:
    manifest = _complete(run_dir)
    outcome, slas = _verdicts(run_dir)
    metrics = {name: point for name, summary in _summaries(run_dir).items() if (point := _point(summary))}
    machine, speed = _machine(manifest)
    return Night(run_dir, manifest.run_id, _parsed_time(manifest.started_utc, run_dir), manifest.topology_name,
                 manifest.source.commit, machine, speed, outcome, metrics, slas)


def _of_repeat(repeat_dir: Path) -> Night:
    """A `--repeat` directory as one night: per metric, the median of its run medians."""
    try:
        dirs = [repeat_dir / run["dir"] for run in _json(repeat_dir / REPEAT)["runs"]]
    except (KeyError, TypeError) as exc:
        raise RecordsError(f"{repeat_dir / REPEAT}: {exc!s} is missing; rerun `lab run --repeat`") from None
    runs = [_of_run(d) for d in dirs]
    if not runs:
        raise RecordsError(f"{repeat_dir / REPEAT}: no runs")
    metrics = {}
    for name in sorted(set().union(*(r.metrics for r in runs))):
        points = [r.metrics[name] for r in runs if name in r.metrics]
        medians = np.asarray([p.value for p in points])
        low, high = median_ci(medians)
        tails = [p.p95 for p in points if p.p95 is not None]
        metrics[name] = Point(points[0].unit, float(np.median(medians)), low, high,
                              float(np.median(tails)) if tails else None, sum(p.n for p in points),
                              sum(p.failures for p in points))
    worst = max((r.outcome for r in runs), key=lambda o: ("pass", "inconclusive", "fail").index(o))
    first = runs[0]
    return Night(repeat_dir, first.run_id, first.started, first.topology, first.commit, first.machine, first.speed_ms,
                 worst, metrics, first.slas, runs=len(runs))


def read_night(path: Path) -> Night:
    """One results or `--repeat` directory as a night; RecordsError names what is wrong."""
    return _of_repeat(path) if (path / REPEAT).is_file() else _of_run(path)


def _directories(root: Path) -> Iterator[tuple[str, Path]]:
    """(kind, path) of every results, repeat and sweep directory under ROOT; none inside another."""
    for here, subdirs, files in os.walk(root):
        kind = "repeat" if REPEAT in files else "sweep" if SWEEP in files else "run" if MANIFEST in files else None
        if kind:
            subdirs.clear()
            yield kind, Path(here)
        subdirs.sort()


def gather(roots: list[Path]) -> Gathered:
    """Every night under ROOTS in start order; a damaged or unfinished directory is one skipped line."""
    gathered = Gathered()
    for root in roots:
        if not root.is_dir():
            raise RecordsError(f"{root}: not a directory of results")
        for kind, path in _directories(root):
            if kind == "sweep":
                gathered.skipped.append(f"{path}: a sweep (its points are different settings, not nights)")
                continue
            try:
                gathered.nights.append(read_night(path))
            except RecordsError as exc:
                gathered.skipped.append(str(exc))
    gathered.nights.sort(key=lambda n: n.started)
    return gathered


def testbeds(nights: list[Night]) -> list[Night]:
    """The nights (of one topology, in order) with their testbed named: the machine's identity,
    and a new name whenever the speed probe leaves its current testbed's median by SPEED_STEP."""
    named: list[Night] = []
    speeds: dict[tuple[str, ...], list[float]] = {}
    label: dict[tuple[str, ...], str] = {}
    for night in nights:
        seen = speeds.setdefault(night.machine, [])
        if night.speed_ms is not None and seen:
            middle = statistics.median(seen)
            if not 1 / SPEED_STEP <= night.speed_ms / middle <= SPEED_STEP:
                seen.clear()
                label.pop(night.machine, None)
        if night.machine not in label:
            speed = f", probe {night.speed_ms:.0f} ms" if night.speed_ms is not None else ""
            label[night.machine] = f"{' · '.join(night.machine)}{speed} (from {night.started:%Y-%m-%d %H:%M})"
        if night.speed_ms is not None:
            seen.append(night.speed_ms)
        named.append(replace(night, testbed=label[night.machine]))
    return named
