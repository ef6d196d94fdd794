"""The `lab` command: one subcommand, one function."""

from __future__ import annotations

import asyncio
import sys
import traceback
from pathlib import Path
from typing import Any, Literal

import click

from lab import cleanup, exits, quantities
from lab import sweep as sweeps
from lab.analysis import compare as compare_runs
from lab.analysis.metrics import unit_of
from lab.analysis.records import EVENTS, MANIFEST, RecordsError, read_json
from lab.analysis.repeats import REPEAT_FILE
from lab.network import doctor
from lab.network.fabric import NetworkError
from lab.orchestrator import SetupError, choose_mode, default_out, run_repeated, run_topology
from lab.output import terminal
from lab.output.report import write_report
from lab.shaping import live
from lab.shaping.backend import ShapingError, choose_backend
from lab.topology import TopologyError, load_topology
from nodes.protocol import NetemRequest


class LabError(click.ClickException):
    """Bad input or an unusable machine: a one-line message and exit code 2."""

    exit_code = exits.BAD_INPUT


@click.group()
@click.version_option(package_name="p2p-lab")
def main() -> None:
    """Measure libp2p peers for real: namespaces, processes, statistics, SLA verdicts."""


@main.command()
@click.argument("topology_file", type=click.Path(path_type=Path), metavar="TOPOLOGY")
@click.option("--out", type=click.Path(path_type=Path), help="Results directory (default results/<name>-<UTC time>).")
@click.option("--seed", type=int, help="Override the topology's seed.")
@click.option("--quick", is_flag=True, help="Smaller workload: fewer packages, lookups and announcements.")
@click.option("--repeat", type=click.IntRange(min=1), default=1, show_default=True, help="Fresh runs into OUT/run-N.")
@click.option("--report/--no-report", default=True, show_default=True, help="Write report.html and plots/ into each run.")
def run(topology_file: Path, out: Path | None, seed: int | None, quick: bool, repeat: int, report: bool) -> None:
    """Run TOPOLOGY; exit 0 if every SLA held, 1 if any failed, 4 if none failed but some could not be judged (the
    machine was too busy), 2 on bad input or setup error."""
    try:
        topology = load_topology(topology_file)
    except TopologyError as exc:
        raise LabError(str(exc)) from None
    if seed is not None:
        topology = topology.model_copy(update={"seed": seed})
    if quick:
        topology = topology.quick()
    out = out or default_out(topology)
    source = topology_file.read_text()
    try:
        if repeat > 1:
            outcomes = asyncio.run(run_repeated(topology, source, out, click.echo, repeat))
        else:
            outcomes = [asyncio.run(run_topology(topology, source, out, click.echo))]
        reports = [write_report(outcome.path) for outcome in outcomes] if report else []
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C, or SIGTERM cancelling the run
        click.echo(f"interrupted: partial results in {out}", err=True)
        sys.exit(exits.INTERRUPTED)
    except (SetupError, NetworkError) as exc:
        raise LabError(str(exc)) from None
    except Exception:
        traceback.print_exc()
        click.echo(f"lab crashed; partial results in {out}; run `lab clean` if anything was left", err=True)
        sys.exit(exits.CRASH)
    outcome = outcomes[-1]
    click.echo("")
    for line in terminal.metrics_table(outcome.analysis.summary):
        click.echo(line)
    click.echo("")
    for line in terminal.fidelity_lines(outcome.analysis.fidelity):
        click.echo(line)
    click.echo("")
    for line in terminal.verdict_lines(outcome.analysis.verdicts):
        click.echo(line)
    for line in terminal.error_lines(outcome.analysis.errors):
        click.echo(line)
    if repeat > 1:
        click.echo("")
        for line in terminal.repeat_lines(read_json(out / REPEAT_FILE), outcomes):
            click.echo(line)
    click.echo(f"results: {out}")
    for path in reports:
        click.echo(f"report: {path}")
    sys.exit(exits.worst([o.exit_code for o in outcomes]))


@main.command()
@click.argument("baseline", type=click.Path(path_type=Path))
@click.argument("candidate", type=click.Path(path_type=Path))
@click.option("--metric", "metrics", multiple=True, help="Compare only these metrics (repeatable).")
@click.option("--noise", default=f"{compare_runs.DEFAULT_NOISE:.0%}", show_default=True, help="Changes inside ±noise are noise.")
@click.option(
    "--alpha", default=compare_runs.DEFAULT_ALPHA, show_default=True, help="Significance level after correction.",
    type=click.FloatRange(0, 0.5, min_open=True, max_open=True),
)
@click.option("--strict", is_flag=True, help="Exit 1 if any metric regressed, 2 if nothing could be compared.")
@click.option("--format", "output", type=click.Choice(["table", "json", "markdown"]), default="table", show_default=True)
def compare(
    baseline: Path, candidate: Path, metrics: tuple[str, ...], noise: str, alpha: float, strict: bool, output: str
) -> None:
    """Compare two results directories metric by metric (rule: docs/compare.md)."""
    try:
        noise_share = quantities.fraction(noise)
    except ValueError as exc:
        raise LabError(f"--noise: {exc}") from None
    unknown = [m for m in metrics if unit_of(m) is None]
    if unknown:
        raise LabError(f"--metric: unknown metric {unknown[0]!r} (see docs/topology.md)")
    for label, run_dir in (("BASELINE", baseline), ("CANDIDATE", candidate)):
        single = (run_dir / MANIFEST).is_file() and (run_dir / EVENTS).is_file()
        if not single and not compare_runs.is_repeat(run_dir):
            raise LabError(f"{label} {run_dir} is not a results directory (no manifest.json and events.jsonl, no repeat.json)")
    try:
        report = compare_runs.compare_dirs(baseline, candidate, noise_share, alpha, metrics)
    except RecordsError as exc:
        raise LabError(str(exc)) from None
    for line in report.skipped:
        click.echo(f"note: {line}", err=True)
    for line in terminal.comparison_lines(report, output):
        click.echo(line)
    judged = [c for c in report.comparisons if c.change is not None]
    if strict and not judged:
        raise LabError("nothing was compared: no metric has enough values on both sides (--strict)")
    if strict and any(c.verdict == "regressed" for c in report.comparisons):
        sys.exit(exits.FAILED)


def _running_run(run_dir: Path | None) -> dict[str, Any]:
    """The state of a live run: the one whose results are RUN_DIR, else the newest."""
    alive = [state for state in cleanup.live_runs() if run_dir is None or Path(state["results"]) == run_dir.resolve()]
    if not alive:
        where = f" writing to {run_dir}" if run_dir else ""
        raise LabError(f"no running lab run{where}: start one with `lab run TOPOLOGY` (lab netem changes a live run)")
    return alive[-1]


@main.command()
@click.option("--delay", help="One-way delay added to every packet the peers send, e.g. 50ms.")
@click.option("--jitter", help="Spread around the delay, e.g. 5ms.")
@click.option("--distribution", type=click.Choice(["uniform", "normal"]), help="Of the jitter (default uniform).")
@click.option("--loss", help="Share of packets dropped, e.g. 5%.")
@click.option("--duplicate", help="Share of packets duplicated (netem backend only).")
@click.option("--reorder", help="Share of packets sent at once, ahead of delayed ones.")
@click.option("--corrupt", help="Share of packets with one bit flipped.")
@click.option("--rate", help="Bandwidth, e.g. 10mbit or 10Mbit/s.")
@click.option("--limit", type=click.IntRange(min=1), help="Packets a link may hold back.")
@click.option("--group", "groups", multiple=True, help="Only this group's peers (repeatable).")
@click.option("--peers", help="Only these peer indexes, e.g. 0,3,7.")
@click.option("--run", "run_dir", type=click.Path(path_type=Path), help="The run's results directory (default: newest live run).")
@click.option("--show", is_flag=True, help="Print what each link does now, read back from the kernel.")
@click.option("--clear", is_flag=True, help="Remove all impairment (region latency too) from the selected peers.")
@click.option("--verify", is_flag=True, help="Measure the links between sample peers against their configuration.")
def netem(groups: tuple[str, ...], peers: str | None, run_dir: Path | None, show: bool, clear: bool, verify: bool,
          **link: str | int | None) -> None:
    """Change, show, clear or verify the link impairment of a running lab; returns once the change is in force."""
    given = {name: value for name, value in link.items() if value is not None}
    if sum((bool(given), show, clear)) > 1:
        raise LabError("give link parameters, --show or --clear, not several")
    if not (given or show or clear or verify):
        raise LabError("nothing to do: give link parameters (e.g. --loss 5% --delay 50ms), --show, --clear or --verify")
    try:
        indexes = [int(p) for p in peers.split(",")] if peers else None
    except ValueError:
        raise LabError(f"--peers: expected comma-separated peer indexes, not {peers!r}") from None
    op: Literal["set", "clear", "show", "verify"] = "set" if given else "clear" if clear else "show" if show else "verify"
    request = NetemRequest(op, list(groups), indexes, given, verify)
    state = _running_run(run_dir)
    if state["impairment"] is None:
        raise LabError(f"the run writing to {state['results']} has no impairment backend: {state['impairment_reason']}")
    try:
        reply = live.send(Path(state["impairment"]), request)
    except OSError as exc:
        raise LabError(f"cannot reach the run writing to {state['results']} ({exc}); is it still building its network?") from None
    except ShapingError as exc:
        raise LabError(str(exc)) from None
    if not reply["ok"]:
        raise LabError(reply["error"])
    for line in terminal.netem_lines(op, reply):
        click.echo(line)
    if reply.get("status") == "failed":
        sys.exit(exits.FAILED)


@main.command()
@click.argument("topology_file", type=click.Path(path_type=Path), metavar="TOPOLOGY")
@click.option("--set", "settings", multiple=True, required=True, metavar="NAME=V1,V2",
              help="A swept setting: peers, a link field (loss, delay, ...) or a dotted path (repeatable: a grid).")
@click.option("--out", type=click.Path(path_type=Path), help="Sweep directory (default results/<name>-sweep-<UTC time>).")
@click.option("--quick", is_flag=True, help="Smaller workload at every point.")
def sweep(topology_file: Path, settings: tuple[str, ...], out: Path | None, quick: bool) -> None:
    """Run TOPOLOGY at every point of a grid of settings; write sweep.json, sweep.md and scaling curves."""
    try:
        topology = load_topology(topology_file)
        parsed = [sweeps.Setting.parse(text) for text in settings]
        points = sweeps.grid(topology.model_dump(mode="json", exclude_defaults=True), parsed, str(topology_file))
    except TopologyError as exc:
        raise LabError(str(exc)) from None
    if quick:
        points = [(chosen, point.quick()) for chosen, point in points]
    out = out or default_out(topology, "-sweep")
    click.echo(f"sweep: {len(points)} points into {out}")
    try:
        done = asyncio.run(sweeps.run_sweep(points, parsed, topology_file.read_text(), out, click.echo))
    except (KeyboardInterrupt, asyncio.CancelledError):
        click.echo(f"interrupted: the points measured so far are in {out / sweeps.SWEEP_FILE}", err=True)
        sys.exit(exits.INTERRUPTED)
    except (SetupError, NetworkError) as exc:
        raise LabError(str(exc)) from None
    click.echo("")
    click.echo((out / "sweep.md").read_text())
    click.echo(f"sweep: {out}")
    sys.exit(exits.worst([p["exit_code"] for p in done]))


@main.command(name="report")
@click.argument("run_dir", type=click.Path(path_type=Path, file_okay=False), metavar="RUN_DIR")
@click.option("--compare", "baseline", type=click.Path(path_type=Path, file_okay=False), help="Baseline results directory.")
def report_command(run_dir: Path, baseline: Path | None) -> None:
    """Write RUN_DIR/report.html (self-contained) and RUN_DIR/plots/ (PNG and SVG)."""
    try:
        path = write_report(run_dir, baseline)
    except RecordsError as exc:
        raise LabError(str(exc)) from None
    click.echo(f"report: {path}")


@main.command()
def clean() -> None:
    """Remove namespaces, processes and sockets that killed runs left behind."""
    cleanup.clean(click.echo)


@main.command(name="doctor")
def doctor_command() -> None:
    """Print what this machine supports and the mode `lab run` will use."""
    for check in doctor.run_checks():
        click.echo(f"{'yes' if check.ok else 'no ':3}  {check.name:20} {check.detail}")
    try:
        mode, why = choose_mode("auto")
    except SetupError as exc:
        raise LabError(str(exc)) from None
    click.echo(f"lab run will use: {mode} ({why})")
    try:
        backend, reason = choose_backend("auto")
        click.echo(f"link impairment backend: {backend} ({reason})")
    except ShapingError as exc:
        click.echo(f"link impairment backend: none ({exc})")
