"""The `lab` command: one subcommand, one function, and errors mapped to exit codes in one
place (`LabGroup.invoke`): a LabError (lab/errors.py) is one line and its class's exit code,
Ctrl-C is 130, anything else a crash (traceback, exit 3)."""

from __future__ import annotations

import asyncio
import sys
import traceback
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import click

from lab import cleanup, exits, quantities
from lab import sweep as sweeps
from lab.analysis import compare as compare_runs
from lab.analysis.records import read_json
from lab.errors import OUTCOMES, BadInput, Interrupted, LabError, ResultsError, SetupError, SlaFailed
from lab.history import text as history_text
from lab.history.acks import read_acks
from lab.history.baseline import compare_with_history
from lab.history.changes import Rules
from lab.history.nights import gather
from lab.history.page import write_page
from lab.history.trends import build
from lab.local_machine import LocalPlace
from lab.machine import Job, Place
from lab.manifest import EVENTS, MANIFEST, REPEAT, SWEEP, SWEEP_TABLE, stored
from lab.metric_names import unit_of
from lab.orchestrator import RunOutcome, default_out, run_repeated, run_topology
from lab.output import terminal
from lab.output.export import write_history_openmetrics
from lab.output.report import write_report
from lab.output.results import strict_json, write_json, write_text
from lab.shaping import live
from lab.topology import load_topology
from nodes.protocol import NetemRequest

SEVERITY = ("pass", "inconclusive", "fail")  # a run's outcome, least to most severe


class LabGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LabError as exc:
            click.echo(f"{exc.label}: {exc}", err=True)
            sys.exit(exc.exit_code)
        except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C, or SIGTERM cancelling a run
            click.echo("interrupted", err=True)
            sys.exit(exits.INTERRUPTED)
        except (click.exceptions.Exit, click.ClickException):
            raise
        except Exception as exc:
            traceback.print_exc()
            click.echo(f"lab crashed ({type(exc).__name__}: {exc}); run `lab clean` if anything was left", err=True)
            sys.exit(exits.CRASH)


def _outcome_error(outcomes: list[RunOutcome]) -> LabError | None:
    """The error a run (or the worst of several) ends with, if not every SLA held."""
    worst = max((o.analysis.outcome for o in outcomes), key=SEVERITY.index, default="pass")
    if worst == "pass":
        return None
    statuses = {"fail": "fail", "inconclusive": "inconclusive"}
    named = sorted({f"{v.metric} {v.stat}" for o in outcomes for v in o.analysis.verdicts if v.status == statuses[worst]})
    return OUTCOMES[worst](f"{len(named)} verdicts {'FAILED' if worst == 'fail' else 'INCONCLUSIVE'}: {', '.join(named)}")


T = TypeVar("T")


async def _placed(cluster: str | None, work: Callable[[Place | None], Awaitable[T]]) -> T:
    """`work` on this machine, or with --cluster on a Ray cluster's (Ray is loaded only then)."""
    if cluster is None:
        return await work(None)
    try:
        from lab.remote import cluster as ray_cluster
    except ImportError as exc:
        raise SetupError(f"--cluster needs Ray ({exc}): ./install.sh --cluster, or pip install 'p2p-lab[cluster]'") from None

    async with ray_cluster.connect(cluster, click.echo) as place:
        return await work(place)


@click.group(cls=LabGroup)
@click.version_option(package_name="p2p-lab")
def main() -> None:
    """Measure libp2p peers for real: namespaces, processes, statistics, SLA verdicts."""


@main.command()
@click.argument("topology_file", type=click.Path(path_type=Path), metavar="TOPOLOGY")
@click.option("--out", type=click.Path(path_type=Path), help="Results directory (default results/<name>-<UTC time>).")
@click.option("--seed", type=int, help="Override the topology's seed.")
@click.option("--quick", is_flag=True, help="Smaller workload: fewer packages, lookups and announcements.")
@click.option("--set", "settings", multiple=True, metavar="NAME=VALUE",
              help="Change a setting as lab sweep does (peers, a link field, a dotted path); repeatable.")
@click.option("--repeat", type=click.IntRange(min=1), default=1, show_default=True, help="Fresh runs into OUT/run-N.")
@click.option("--report/--no-report", default=True, show_default=True, help="Write report.html and plots/ into each run.")
@click.option("--cluster", metavar="ADDRESS", help="Run the peers on a Ray cluster (its head, host:port; docs/cluster.md).")
def run(topology_file: Path, out: Path | None, seed: int | None, quick: bool, settings: tuple[str, ...], repeat: int,
        report: bool, cluster: str | None) -> None:
    """Run TOPOLOGY; exit 0 if every SLA held, 1 if any failed, 4 if none failed but some could not be judged (the
    machine was too busy), 2 on bad input or setup error."""
    topology = load_topology(topology_file)
    if settings:
        parsed = [sweeps.Setting.parse(text) for text in settings]
        if several := [s.name for s in parsed if len(s.values) != 1]:
            raise BadInput(f"--set {several[0]}: one value in lab run (a grid of values is lab sweep)")
        ((_, topology),) = sweeps.grid(topology.model_dump(mode="json", exclude_defaults=True), parsed, str(topology_file))
    if seed is not None:
        topology = topology.model_copy(update={"seed": seed})
    if quick:
        topology = topology.quick()
    out = out or default_out(topology)
    source = topology_file.read_text()

    async def runs(place: Place | None) -> list[RunOutcome]:
        if repeat > 1:
            return await run_repeated(topology, source, out, click.echo, repeat, place)
        return [await run_topology(topology, source, out, click.echo, place)]

    try:
        outcomes = asyncio.run(_placed(cluster, runs))
    except (KeyboardInterrupt, asyncio.CancelledError):
        raise Interrupted(f"partial results in {out}") from None
    try:
        reports = [write_report(outcome.path).path for outcome in outcomes] if report else []
    except OSError as exc:  # a figure's image on a failing disk (report.html itself is written as the run's files are)
        raise ResultsError.of(outcomes[-1].path, exc) from None
    outcome = outcomes[-1]
    click.echo("")
    for line in terminal.closing_lines(outcome.analysis):
        click.echo(line)
    if repeat > 1:
        click.echo("")
        for line in terminal.repeat_lines(read_json(out / REPEAT), outcomes):
            click.echo(line)
    click.echo(f"results: {out}")
    for path in reports:
        click.echo(f"report: {path}")
    if error := _outcome_error(outcomes):
        raise error


@main.command()
@click.argument("dirs", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="[BASELINE] CANDIDATE")
@click.option("--baseline-from", "history_root", type=click.Path(path_type=Path, file_okay=False),
              help="Take the baseline from this history: the stable nights of the candidate's topology and testbed.")
@click.option("--metric", "metrics", multiple=True, help="Compare only these metrics (repeatable).")
@click.option("--noise", default=f"{compare_runs.DEFAULT_NOISE:.0%}", show_default=True, help="Changes inside ±noise are noise.")
@click.option(
    "--alpha", default=compare_runs.DEFAULT_ALPHA, show_default=True, help="Significance level after correction.",
    type=click.FloatRange(0, 0.5, min_open=True, max_open=True),
)
@click.option("--strict", is_flag=True, help="Exit 1 if any metric regressed, 2 if nothing could be compared.")
@click.option("--format", "output", type=click.Choice(["table", "json", "markdown"]), default="table", show_default=True)
def compare(
    dirs: tuple[Path, ...], history_root: Path | None, metrics: tuple[str, ...], noise: str, alpha: float, strict: bool,
    output: str
) -> None:
    """Compare two results directories metric by metric, or a run with the stable stretch of a history
    (--baseline-from); rule: docs/compare.md."""
    noise_share = _share("--noise", noise)
    _known(metrics)
    if len(dirs) != (1 if history_root else 2):
        raise BadInput("give BASELINE and CANDIDATE, or --baseline-from ROOT and CANDIDATE")
    if history_root:
        report = compare_with_history(history_root, dirs[0], Rules(noise=noise_share), alpha, metrics)
    else:
        for label, run_dir in zip(("BASELINE", "CANDIDATE"), dirs, strict=True):
            single = (run_dir / MANIFEST).is_file() and stored(run_dir, EVENTS) is not None
            if not single and not compare_runs.is_repeat(run_dir):
                raise BadInput(f"{label} {run_dir} is not a results directory (no manifest.json and events.jsonl, "
                               "no repeat.json)")
        report = compare_runs.compare_dirs(dirs[0], dirs[1], noise_share, alpha, metrics)
    for line in report.skipped:
        click.echo(f"note: {line}", err=True)
    for line in terminal.comparison_lines(report, output):
        click.echo(line)
    judged = [c for c in report.comparisons if c.change is not None]
    if strict and not judged:
        raise BadInput("nothing was compared: no metric has enough values on both sides (--strict)")
    regressed = [c.metric for c in report.comparisons if c.verdict == "regressed"]
    if strict and regressed:
        raise SlaFailed(f"regressed (--strict): {', '.join(regressed)}")


def _known(metrics: tuple[str, ...]) -> None:
    if unknown := [m for m in metrics if unit_of(m) is None]:
        raise BadInput(f"--metric: unknown metric {unknown[0]!r} (see docs/topology.md)")


def _share(option: str, text: str) -> float:
    try:
        return quantities.fraction(text)
    except ValueError as exc:
        raise BadInput(f"{option}: {exc}") from None


@main.command()
@click.argument("roots", nargs=-1, required=True, type=click.Path(path_type=Path, file_okay=False), metavar="ROOT...")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False),
              help="Where history.html, .json, .md and .prom go (default: the first ROOT).")
@click.option("--format", "output", type=click.Choice(["table", "json", "markdown"]), default="table", show_default=True)
@click.option("--metric", "metrics", multiple=True, help="Only these metrics (repeatable).")
@click.option("--last", type=click.IntRange(min=2), help="Only the newest N nights of each topology.")
@click.option("--since", type=click.DateTime(formats=["%Y-%m-%d"]), help="Only nights from this date (UTC) on.")
@click.option("--noise", default=f"{compare_runs.DEFAULT_NOISE:.0%}", show_default=True, help="Changes inside ±noise are noise.")
@click.option("--confirm", type=click.IntRange(min=1), default=Rules.confirm, show_default=True,
              help="Nights that must follow a change before it is confirmed.")
def history(roots: tuple[Path, ...], out: Path | None, output: str, metrics: tuple[str, ...], last: int | None,
            since: datetime | None, noise: str, confirm: int) -> None:
    """Gather the runs under ROOTs into nightly series per topology and testbed, find their change points, write
    history.html/.json/.md/.prom; exit 1 on a confirmed, unacknowledged regression (docs/nightly.md)."""
    _known(metrics)
    rules = Rules(noise=_share("--noise", noise), confirm=confirm)
    gathered = gather(list(roots))
    for line in gathered.skipped:
        click.echo(f"skipped: {line}", err=True)
    if not gathered.nights:
        raise BadInput(f"no complete runs under {', '.join(map(str, roots))}: nothing to make a history of")
    found = build(gathered.nights, rules, read_acks(roots[0]), metrics, last, since.replace(tzinfo=UTC) if since else None)
    found.skipped = gathered.skipped
    out = out or roots[0]
    out.mkdir(parents=True, exist_ok=True)
    record, markdown = found.record(), history_text.markdown(found)
    write_json(out / "history.json", record)
    write_text(out / "history.md", markdown)
    write_history_openmetrics(out / "history.prom", found)
    page = write_page(found, out)
    if output == "json":
        click.echo(strict_json(record))
    elif output == "markdown":
        click.echo(markdown, nl=False)
    else:
        for line in history_text.table(found):
            click.echo(line)
        click.echo(f"history: {page}")
    if found.failing:
        raise SlaFailed(f"{len(found.failing)} confirmed regressions: "
                        + ", ".join(f"{f.series.metric} at {f.night.run_id}" for f in found.failing))


def _running_run(run_dir: Path | None) -> dict[str, Any]:
    """The state of a live run: the one whose results are RUN_DIR, else the newest (a run over
    several machines by its driver's state, not its parts')."""
    alive = [state for state in cleanup.live_runs() if (run_dir is None or Path(state["results"]) == run_dir.resolve())
             and state.get("part") is None]
    if not alive:
        where = f" writing to {run_dir}" if run_dir else ""
        raise BadInput(f"no running lab run{where}: start one with `lab run TOPOLOGY` (lab netem changes a live run)")
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
        raise BadInput("give link parameters, --show or --clear, not several")
    if not (given or show or clear or verify):
        raise BadInput("nothing to do: give link parameters (e.g. --loss 5% --delay 50ms), --show, --clear or --verify")
    try:
        indexes = [int(p) for p in peers.split(",")] if peers else None
    except ValueError:
        raise BadInput(f"--peers: expected comma-separated peer indexes, not {peers!r}") from None
    op: Literal["set", "clear", "show", "verify"] = "set" if given else "clear" if clear else "show" if show else "verify"
    request = NetemRequest(op, list(groups), indexes, given, verify)
    state = _running_run(run_dir)
    if state["impairment"] is None:
        raise BadInput(f"the run writing to {state['results']} has no impairment backend: {state['impairment_reason']}")
    try:
        reply = live.send(Path(state["impairment"]), request)
    except OSError as exc:
        raise BadInput(f"cannot reach the run writing to {state['results']} ({exc}); is it still building its network?") from None
    if not reply["ok"]:
        raise BadInput(reply["error"])
    for line in terminal.netem_lines(op, reply):
        click.echo(line)
    if reply.get("status") == "failed":
        raise SlaFailed(terminal.LINKS_OUTCOME["failed"])


@main.command()
@click.argument("topology_file", type=click.Path(path_type=Path), metavar="TOPOLOGY")
@click.option("--set", "settings", multiple=True, required=True, metavar="NAME=V1,V2",
              help="A swept setting: peers, a link field (loss, delay, ...) or a dotted path (repeatable: a grid).")
@click.option("--out", type=click.Path(path_type=Path), help="Sweep directory (default results/<name>-sweep-<UTC time>).")
@click.option("--quick", is_flag=True, help="Smaller workload at every point.")
@click.option("--cluster", metavar="ADDRESS", help="Run the peers on a Ray cluster's machine (docs/cluster.md).")
def sweep(topology_file: Path, settings: tuple[str, ...], out: Path | None, quick: bool, cluster: str | None) -> None:
    """Run TOPOLOGY at every point of a grid of settings; write sweep.json, sweep.md and scaling curves."""
    topology = load_topology(topology_file)
    parsed = [sweeps.Setting.parse(text) for text in settings]
    points = sweeps.grid(topology.model_dump(mode="json", exclude_defaults=True), parsed, str(topology_file))
    if quick:
        points = [(chosen, point.quick()) for chosen, point in points]
    out = out or default_out(topology, "-sweep")
    click.echo(f"sweep: {len(points)} points into {out}")
    try:
        source = topology_file.read_text()
        done = asyncio.run(_placed(cluster, lambda place: sweeps.run_sweep(points, parsed, source, out, click.echo, place)))
    except (KeyboardInterrupt, asyncio.CancelledError):
        raise Interrupted(f"the points measured so far are in {out / SWEEP}") from None
    click.echo("")
    click.echo((out / SWEEP_TABLE).read_text())
    click.echo(f"sweep: {out}")
    if error := _outcome_error(done):
        raise error


@main.command(name="report")
@click.argument("run_dir", type=click.Path(path_type=Path, file_okay=False), metavar="RUN_DIR")
@click.option("--compare", "baseline", type=click.Path(path_type=Path, file_okay=False), help="Baseline results directory.")
def report_command(run_dir: Path, baseline: Path | None) -> None:
    """Write RUN_DIR/report.html (self-contained) and RUN_DIR/plots/ (PNG and SVG), and print
    the run's closing tables as `lab run` does, derived again from its records."""
    written = write_report(run_dir, baseline)
    for line in terminal.closing_lines(written.analysis):
        click.echo(line)
    click.echo(f"report: {written.path}")


@main.command()
@click.option("--cluster", metavar="ADDRESS", help="On every machine of a Ray cluster (its head, host:port; docs/cluster.md).")
def clean(cluster: str | None) -> None:
    """Remove namespaces, processes and sockets that killed runs left behind."""
    _on_each_machine(cluster, "clean")


@main.command(name="doctor")
@click.option("--cluster", metavar="ADDRESS",
              help="Ask every machine of a Ray cluster, and check what a run over them needs (docs/cluster.md).")
def doctor_command(cluster: str | None) -> None:
    """Print what this machine supports and the mode `lab run` will use."""
    _on_each_machine(cluster, "doctor")


def _on_each_machine(cluster: str | None, job: Job) -> None:
    """`job` on this machine, or done by each machine's agent, its lines under the machine's name."""
    async def work(place: Place | None) -> list[tuple[str, list[str]]]:
        return await (place or LocalPlace()).each_machine(job)

    for name, lines in asyncio.run(_placed(cluster, work)):
        if cluster:
            click.echo(f"[{name}]")
        for line in lines:
            click.echo(f"  {line}" if cluster else line)
