"""SLA verdicts: each SLA's measured statistic against its threshold, in the metric's unit, and
the lab's own conditions for a trustworthy run beside them."""

from __future__ import annotations

import operator
from dataclasses import asdict, dataclass
from typing import Any, Literal

from lab.analysis.stats import Summary
from lab.quantities import shown
from lab.topology import Sla

COMPARE = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


Status = Literal["pass", "fail", "inconclusive", "unjudged"]  # unjudged: the run did not measure what the SLA names


@dataclass(frozen=True)
class Verdict:
    metric: str
    stat: str
    op: str
    threshold: str  # as the topology wrote it
    measured: float | None
    status: Status
    reason: str
    unit: str | None = None
    threshold_in_unit: float | None = None
    description: str = ""
    builtin: bool = False  # the lab's own condition, not the topology's
    guard: dict[str, Any] | None = None  # the fidelity guard's judgement (lab/analysis/guard.py)
    rerun: dict[str, Any] | None = None  # the 2N check (lab/analysis/recheck.py)

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def record(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def verdict(sla: Sla, summary: dict[str, Summary], judged_on: str | None = None) -> Verdict:
    """The SLA against its metric's statistic, or against another metric's (`judged_on`: a
    per-peer memory figure's deployed estimate)."""
    metric = summary.get(judged_on or sla.metric)
    measured = metric.stat(sla.stat) if metric else None
    if measured is None:
        reason = "metric not measured" if metric is None else f"no successful samples for {sla.stat}"
        return Verdict(sla.metric, sla.stat, sla.op, str(sla.threshold), None, "fail", reason, description=sla.description)
    passed = bool(COMPARE[sla.op](measured, sla.limit))
    reason = f"{sla.stat} {shown(measured, sla.unit)} {sla.op} {shown(sla.limit, sla.unit)}: {'holds' if passed else 'fails'}"
    return Verdict(sla.metric, sla.stat, sla.op, str(sla.threshold), measured, "pass" if passed else "fail", reason,
                   sla.unit, sla.limit, sla.description)


def builtin_verdicts(peers: int, ready: int, lost: int) -> list[Verdict]:
    """Every peer became ready and none was lost: without these, the figures describe a smaller network."""
    return [
        Verdict("peers_ready", "count", "==", str(peers), ready, "pass" if ready == peers else "fail",
                f"{ready} of {peers} peers became ready", builtin=True),
        Verdict("peers_lost", "count", "==", "0", lost, "pass" if lost == 0 else "fail",
                f"{lost} peers died or stopped answering", builtin=True),
    ]
