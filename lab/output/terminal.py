"""What the commands print: `lab run`'s metric table and verdicts, `lab compare`'s table."""

from __future__ import annotations

from typing import Any

from lab.analysis.bound import Bound
from lab.analysis.compare import Report
from lab.analysis.faults import FaultFigures, Staleness
from lab.analysis.figures import Analysis, Errors
from lab.analysis.guard import PhaseLag
from lab.analysis.sla import Verdict
from lab.analysis.stats import Summary
from lab.manifest import PhaseRecord
from lab.metric_names import TIME_TO_READY
from lab.output.results import strict_json

SHOWN = ("n", "success_ratio", "p50", "p95", "p99", "max")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _aligned(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]


def metrics_table(summary: dict[str, Summary]) -> list[str]:
    header = ["metric", "unit", *SHOWN]
    return _aligned([header] + [[name, m.unit, *(_cell(getattr(m, col)) for col in SHOWN)] for name, m in summary.items()])


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1%}"


def comparison_lines(report: Report, output: str) -> list[str]:
    """`table` for a terminal, `markdown` for a CI comment, `json` for tools."""
    if output == "json":
        return [strict_json(report.to_json())]
    families = ", ".join(f"{n} {family}" for family, n in report.adjustment["families"].items())
    what = ("each value one run's median" if report.level == "runs" else "every sample of each run")
    intro = [f"level: {report.level} ({what}); baseline {report.baseline['path']}, candidate {report.candidate['path']}; "
             f"noise ±{report.noise:.0%}, alpha {report.alpha}; {report.adjustment['method']} ({families})"]
    header = ["metric", "family", "base n", "base p50", "cand n", "cand p50", "change", f"{1 - 2 * report.alpha:.0%} interval",
              "p95 change", "failures", "verdict"]
    rows = [
        [
            c.metric, c.family, str(c.baseline.n), _cell(c.baseline.p50), str(c.candidate.n), _cell(c.candidate.p50),
            _percent(c.change), f"[{_percent(c.interval[0])}, {_percent(c.interval[1])}]" if c.interval else "-",
            _percent(c.tail["change"]) + f" ({c.tail['verdict']})" if c.tail else "-",
            f"{c.failures['baseline']:.1%} -> {c.failures['candidate']:.1%}" if c.failures else "-",
            c.verdict,
        ]
        for c in report.comparisons
    ]
    reasons = [f"  {c.metric}: {c.reason}" for c in report.comparisons if c.verdict in ("regressed", "improved", "inconclusive")]
    if output == "markdown":
        return intro + [""] + ["| " + " | ".join(row) + " |" for row in [header, ["---"] * len(header), *rows]] + reasons
    return intro + _aligned([header, *rows]) + reasons


def ready_lines(analysis: Analysis) -> list[str]:
    """Time to ready on both clocks: the run's (what the SLA judges) and the machine's."""
    ready = analysis.summary.get(TIME_TO_READY)
    if ready is None or ready.max is None or analysis.ready_machine_s is None:
        return []
    return [f"time to ready: {ready.max:.1f} s of the run's time, {analysis.ready_machine_s:.1f} s of the machine's"]


def phase_line(record: PhaseRecord) -> str:
    """`lab run`'s line at the end of a workload phase."""
    return (f"{record.phase}: {record.calls - record.failed}/{record.calls} calls ok in {record.seconds:.1f}s"
            f" (machine CPU {record.cpu_busy:.0%} busy, the lab's own {record.lab_cpu:.1%})")


STATUS_WORD = {"pass": "PASS", "fail": "FAIL", "inconclusive": "INCONCLUSIVE", "unjudged": "NOT JUDGED"}


def verdict_lines(verdicts: list[Verdict]) -> list[str]:
    """One line per verdict, and under a latency's its 2N check's figures where the reason does not give them."""
    lines = []
    for v in verdicts:
        lines.append(f"{STATUS_WORD[v.status]}  {v.metric} {v.stat} {v.op} {v.threshold}: {v.reason}")
        if v.rerun is not None and v.rerun["reason"] not in v.reason:
            lines.append(f"    {v.rerun['reason']}")
    return lines


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else _cell(seconds * 1e3)


def fidelity_lines(phases: list[PhaseLag]) -> list[str]:
    """Per phase: how late the peers' event loops ran timers, beside how busy the machine was,
    and what the links did (the delay line's lateness against its tolerance, drops, SYNs sent again)."""
    rows = [["phase", "loop lag p50 (ms)", "p99", "max", "machine busy", "links late p50/p99 (ms)", "tolerance",
             "drops", "SYN resent"]]
    for p in phases:
        links = p.links
        late = f"{_ms(links.late_p50_s)}/{_ms(links.late_p99_s)}{' LATE' if links.late else ''}" if links else "-"
        drops = ", ".join(f"{cause} {n}" for cause, n in sorted(links.drops.items()) if n) if links else ""
        rows.append([f"{p.number} {p.phase}", _cell(p.lag.p50_ms), _cell(p.lag.p99_ms), _cell(p.lag.max_ms),
                     "-" if p.cpu_busy is None else f"{p.cpu_busy:.0%}", late, _ms(links.tolerance_s) if links else "-",
                     drops or "-", _cell(links.syn_retransmits) if links else "-"])
    return _aligned(rows) if phases else []


def bound_lines(windows: list[Bound]) -> list[str]:
    """Where the time went: the run and each phase against its CPU bound (lab/analysis/bound.py)."""
    rows = [["window", "wall (s)", "machine busy", "peers CPU-s", "lab CPU-s", "CPU bound (s)", "wall / bound"]]
    for b in windows:
        peers = b.cpu_s.get("peer", 0.0)
        lab = _cell(sum(b.cpu_s.values()) - peers) + ("" if b.lab_share is None else f" ({b.lab_share:.1%})")
        rows.append([b.label, _cell(b.wall_s), "-" if b.busy is None else f"{b.busy:.0%}", _cell(peers), lab,
                     _cell(b.bound_s), "-" if b.ratio is None else f"{b.ratio:.2f}x"])
    return _aligned(rows) if windows else []


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def fault_lines(figures: list[FaultFigures], staleness: Staleness | None) -> list[str]:
    """Per fault phase, before, during and after its fault: what users felt, and the recovery."""
    if not figures:
        return []
    rows = [["fault", "stretch", "gets", "succeeded", "get p50 (ms)", "p95", "delivery", "latency"]]
    for f in figures:
        for name, stretch in f.stretches.items():
            gets = stretch.gets
            rows.append([f"{f.number} {f.phase} ({f.peers_hit} peers)" if name == "before" else "", name, str(gets.n),
                         _share(gets.success_ratio), _cell(gets.p50), _cell(gets.p95), _share(stretch.delivery_ratio),
                         "inconclusive (guard)" if stretch.guard else "-" if gets.p50 is None else "conclusive"])
    lines = _aligned(rows)
    for f in figures:
        back = [f"availability back in {f.availability_recovery_s:.1f}s" if f.availability_recovery_s is not None
                else "availability not back within the phase",
                f"every peer up reached in {f.gossip_recovery_s:.1f}s" if f.gossip_recovery_s is not None
                else "no message reached every peer up after it"]
        rejoined = f", {f.rejoins.successes}/{f.rejoins.n} rejoins (p50 {_cell(f.rejoins.p50)} ms)" if f.rejoins.n else ""
        lines.append(f"  {f.number} {f.phase}: after the fault, {'; '.join(back)}{rejoined}")
        lines += [f"  {f.number} {f.phase}: {note}" for note in f.notes]
    if staleness is not None and staleness.share is not None:
        lines.append(f"routing tables at the end ({staleness.tables} of {staleness.up} peers up gave theirs): "
                     f"{staleness.stale} of {staleness.entries} entries ({staleness.share:.1%}) point to a peer that is "
                     "down or lost")
    return lines


def error_lines(errors: Errors) -> list[str]:
    """Counts of everything that went wrong, so nothing is only in a file nobody opens."""
    failed_ops = {op: sum(causes.values()) for op, causes in errors.operations.items()}
    logs = errors.peer_logs
    lines = [
        f"failed operations: {sum(failed_ops.values())}"
        + (f" ({', '.join(f'{op} {n}' for op, n in sorted(failed_ops.items()))})" if failed_ops else ""),
        f"lab errors (peer starts, failed calls, lost peers): {len(errors.lab)}",
        f"peer logs: {logs['levels'].get('ERROR', 0) + logs['levels'].get('CRITICAL', 0)} errors "
        f"from {logs['peers_with_errors']} peers, {logs['levels'].get('WARNING', 0)} warnings",
    ]
    lines += [f"  {top['count']:6d}x {top['level']} {top['logger']}: {top['message']}" for top in logs["top"][:3]]
    return lines


def closing_lines(analysis: Analysis) -> list[str]:
    """What `lab run` prints once a run has ended, and `lab report` for a directory: the metrics,
    time to ready, each phase's fidelity, where the time went, the verdicts and the errors."""
    return [*metrics_table(analysis.summary), *ready_lines(analysis), "", *fidelity_lines(analysis.fidelity), "",
            *bound_lines(analysis.bounds), "", *fault_lines(analysis.faults, analysis.staleness),
            *verdict_lines(analysis.verdicts), *error_lines(analysis.errors)]


def repeat_lines(repeat: dict[str, Any], outcomes: list[Any]) -> list[str]:
    """Each run's verdict, then the between-run table: the run is the independent unit."""
    lines = [f"run-{n}: {'all SLAs held' if o.exit_code == 0 else 'an SLA failed'}" for n, o in enumerate(outcomes, 1)]
    header = ["metric", "unit", "runs", "median of run medians", "95% CI", "min", "max", "cv"]
    rows = [
        [
            name,
            m["unit"],
            str(m["runs"]),
            _cell(m["median_of_medians"]),
            "-" if m["ci95"][0] is None else f"[{_cell(m['ci95'][0])}, {_cell(m['ci95'][1])}]",
            _cell(m["min"]),
            _cell(m["max"]),
            "-" if m["cv"] is None else f"{m['cv']:.1%}",
        ]
        for name, m in repeat["metrics"].items()
    ]
    return lines + [""] + _aligned([header, *rows])


def verification_lines(reports: list[dict[str, Any]]) -> list[str]:
    rows = [["pair", "check", "configured", "measured", "99% interval", "allowed", "result"]]
    reasons = []
    for report in reports:
        for check in report["checks"]:
            interval = check["interval"]
            rows.append([
                f"{report['source']}->{report['dest']}", check["name"], f"{check['configured']:.4g}", f"{check['measured']:.4g}",
                f"{interval[0]:.4g}..{interval[1]:.4g}" if interval else "-", f"{check['low']:.4g}..{check['high']:.4g}",
                check["status"].upper() if check["status"] != "passed" else "ok",
            ])
            if check["reason"]:
                reasons.append(f"  {report['source']}->{report['dest']} {check['name']}: {check['reason']}")
    return _aligned(rows) + reasons


# `lab netem --verify`'s last line, per verification status.
LINKS_OUTCOME = {"passed": "links match their configuration", "failed": "links DISAGREE with their configuration",
                 "unverified": "links could not be verified: this machine was too noisy to tell (see above)"}


def netem_lines(op: str, reply: dict[str, Any]) -> list[str]:
    """`lab netem`'s answer: what changed or what the links do, and any measurement."""
    lines = []
    if op in ("set", "clear"):
        done = "cleared" if op == "clear" else "applied to"
        lines.append(f"{done} {reply['peers']} peers (backend {reply['backend']}), in force now")
    for link in reply.get("links", []):
        lines.append(f"peer {link['peer']} ({link['group']}): {link['configured']}")
        lines.extend(f"    {line}" for line in link["kernel"] or ["(nothing in the kernel)"])
    if "verification" in reply:
        lines.extend(verification_lines(reply["verification"]))
        lines.append(LINKS_OUTCOME[reply["status"]])
    return lines
