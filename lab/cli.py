"""The `lab` command: one subcommand, one function."""

from __future__ import annotations

import asyncio
import sys
import traceback
from pathlib import Path

import click

from lab import cleanup, console, doctor, quantities, results
from lab import compare as compare_runs
from lab.metrics import unit_of
from lab.network import NetworkError
from lab.orchestrator import (
    EXIT_INTERRUPTED,
    SetupError,
    choose_mode,
    default_out,
    run_repeated,
    run_topology,
)
from lab.repeats import REPEAT_FILE
from lab.topology import TopologyError, load_topology

EXIT_CRASH = 3


class LabError(click.ClickException):
    """Bad input or an unusable machine: a one-line message and exit code 2."""

    exit_code = 2


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
def run(topology_file: Path, out: Path | None, seed: int | None, quick: bool, repeat: int) -> None:
    """Run TOPOLOGY; exit 0 if every SLA held, 1 if any failed, 2 on bad input or setup error."""
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
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C, or SIGTERM cancelling the run
        click.echo(f"interrupted: partial results in {out}", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except (SetupError, NetworkError) as exc:
        raise LabError(str(exc)) from None
    except Exception:
        traceback.print_exc()
        click.echo(f"lab crashed; partial results in {out}; run `lab clean` if anything was left", err=True)
        sys.exit(EXIT_CRASH)
    outcome = outcomes[-1]
    click.echo("")
    for line in console.metrics_table(outcome.summary):
        click.echo(line)
    click.echo("")
    for line in console.verdict_lines(outcome.verdicts):
        click.echo(line)
    for line in console.error_lines(outcome.errors):
        click.echo(line)
    if repeat > 1:
        click.echo("")
        for line in console.repeat_lines(results.read_json(out / REPEAT_FILE), outcomes):
            click.echo(line)
    click.echo(f"results: {out}")
    sys.exit(max(o.exit_code for o in outcomes))


@main.command()
@click.argument("baseline", type=click.Path(path_type=Path))
@click.argument("candidate", type=click.Path(path_type=Path))
@click.option("--metric", "metrics", multiple=True, help="Compare only these metrics (repeatable).")
@click.option("--noise", default="3%", show_default=True, help="Changes inside ±noise are 'within noise'.")
@click.option("--alpha", default=0.05, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True))
@click.option("--strict", is_flag=True, help="Exit 1 if any metric regressed (for nightly runners).")
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
    sides = []
    for label, run_dir in (("BASELINE", baseline), ("CANDIDATE", candidate)):
        single = (run_dir / results.MANIFEST).is_file() and (run_dir / results.EVENTS).is_file()
        if not single and not compare_runs.is_repeat(run_dir):
            raise LabError(f"{label} {run_dir} is not a results directory (no manifest.json and events.jsonl, no repeat.json)")
        samples = compare_runs.run_samples(run_dir)
        sides.append({name: m for name, m in samples.items() if not metrics or name in metrics})
    repeated = [compare_runs.is_repeat(d) for d in (baseline, candidate)]
    if repeated[0] != repeated[1]:
        raise LabError("cannot compare a repeated run (--repeat) with a single run: repeat both or neither")
    minimum = compare_runs.MIN_RUNS if repeated[0] else compare_runs.MIN_SAMPLES
    if repeated[0] and output != "json":
        click.echo("run level: each value is one run's median")
    comparisons = compare_runs.compare_samples(sides[0], sides[1], noise_share, alpha, min_samples=minimum)
    for line in console.comparison_lines(comparisons, output):
        click.echo(line)
    if strict and any(c.verdict == "regressed" for c in comparisons):
        sys.exit(1)


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
