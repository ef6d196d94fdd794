"""`lab history --format table|markdown`: the change points in words. The markdown fits a CI
comment: the verdict and the confirmed changes first, everything else collapsed."""

from __future__ import annotations

from lab.history.trends import Flagged, History
from lab.quantities import shown


def _headline(history: History) -> str:
    failing = history.failing
    topologies = sorted({n.topology for n in history.nights})
    newest = history.nights[-1] if history.nights else None
    where = f"{len(history.nights)} nights of {', '.join(topologies) or 'nothing'}"
    if newest:
        where += f", newest {newest.run_id} ({newest.started:%Y-%m-%d %H:%M} UTC, commit {(newest.commit or '?')[:10]})"
    verdict = (f"{len(failing)} confirmed regression{'s' if len(failing) != 1 else ''}" if failing
               else "no confirmed regression")
    return f"{verdict}: {where}"


def _settled(flagged: Flagged) -> str:
    return f"{flagged.ack.status} by {flagged.ack.by} ({flagged.ack.note})" if flagged.ack else ""


def change_row(flagged: Flagged) -> list[str]:
    c = flagged.change
    return [flagged.night.run_id, flagged.series.metric, f"{c.change:+.1%} {'worse' if c.worse else 'better'}",
            f"{shown(c.mean_before, flagged.series.unit)} -> {shown(c.mean_after, flagged.series.unit)}",
            f"{flagged.state} ({c.before} before, {c.after} after)", flagged.commits, f"{c.p_value:.2g}",
            _settled(flagged) or ("FAILS" if flagged.fails else "")]


HEADER = ["night", "metric", "change", "before -> after", "state", "commits", "p", "settled"]


def table(history: History) -> list[str]:
    lines = [_headline(history), ""]
    rows = [HEADER] + [change_row(f) for _, group in history.by_night() for f in group]
    if len(rows) == 1:
        lines.append("no change points")
    else:
        widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
        lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines += [f"testbed from {n.run_id}: {n.testbed}" for n in history.markers]
    lines += [f"skipped: {line}" for line in history.skipped]
    return lines


def _markdown_rows(flagged: list[Flagged]) -> list[str]:
    return ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)] + [
        "| " + " | ".join(cell.replace("|", "/") for cell in change_row(f)) + " |" for f in flagged]


def markdown(history: History) -> str:
    failing = history.failing
    lines = [f"### p2p-lab history: {_headline(history)}", ""]
    if failing:
        lines += _markdown_rows(failing) + [""]
    others = [f for _, group in history.by_night() for f in group if f not in failing]
    lines += ["<details><summary>Other change points: " + str(len(others)) + " (tentative, better or settled)</summary>", ""]
    lines += (_markdown_rows(others) if others else ["none"]) + ["", "</details>", ""]
    lines += ["<details><summary>Testbeds and skipped directories</summary>", ""]
    lines += [f"- from `{n.run_id}`: {n.testbed}" for n in history.markers]
    lines += [f"- skipped: {line}" for line in history.skipped] + ["", "</details>"]
    return "\n".join(lines) + "\n"
