"""SLA verdicts: each SLA's measured statistic against its threshold, in the metric's unit."""

from __future__ import annotations

import operator
from typing import Any

from lab.topology import Sla

COMPARE = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def verdict(sla: Sla, summary: dict[str, dict[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {
        "metric": sla.metric,
        "stat": sla.stat,
        "op": sla.op,
        "threshold": str(sla.threshold),
        "description": sla.description,
    }
    metric = summary.get(sla.metric)
    if metric is None:
        return {**result, "measured": None, "unit": None, "passed": False, "reason": "metric not measured"}
    measured = metric.get(sla.stat)
    if measured is None:
        return {**result, "measured": None, "unit": None, "passed": False, "reason": f"no successful samples for {sla.stat}"}
    unit, threshold = sla.unit, sla.limit
    passed = bool(COMPARE[sla.op](measured, threshold))
    return {
        **result,
        "measured": measured,
        "unit": unit,
        "threshold_in_unit": threshold,
        "passed": passed,
        "reason": f"{sla.stat} {measured:.4g} {sla.op} {threshold:.4g} {unit}: {'holds' if passed else 'fails'}",
    }


def evaluate(slas: list[Sla], summary: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [verdict(sla, summary) for sla in slas]
