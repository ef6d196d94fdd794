"""`lab clean`: remove what killed runs left behind, and nothing of a run still alive.

Leftovers are found three ways, all keyed by the run id: namespaces named plab-<run>-*,
processes carrying P2P_LAB_RUN=<run> in their environment (or living in such a
namespace), and state files in the state directory (orchestrator pid, control socket).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from lab import runid
from lab.errors import RecordsError
from lab.manifest import MANIFEST, read_manifest
from lab.network.netlink import netns
from lab.output.results import ResultsDir
from lab.peers import cgroup


@dataclass
class Leftovers:
    run: str
    namespaces: list[str] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    state_file: Path | None = None
    control: Path | None = None
    results: Path | None = None  # the run's results directory, as its state file names it
    directories: list[Path] = field(default_factory=list)
    cgroups: list[Path] = field(default_factory=list)


def _orchestrator_alive(state_file: Path) -> bool:
    try:
        pid = int(json.loads(state_file.read_text())["orchestrator_pid"])
    except (OSError, ValueError, KeyError):
        return False
    return pid != os.getpid() and psutil.pid_exists(pid)


def live_runs() -> list[dict[str, Any]]:
    """State of the runs whose orchestrator is alive, oldest first."""
    states = []
    for state_file in sorted(runid.state_dir().glob("*.json"), key=lambda path: path.stat().st_mtime):
        if _orchestrator_alive(state_file):
            try:
                states.append(json.loads(state_file.read_text()))
            except (OSError, ValueError):
                continue
    return states


def find_leftovers() -> dict[str, Leftovers]:
    found: dict[str, Leftovers] = {}

    def entry(run: str) -> Leftovers:
        return found.setdefault(run, Leftovers(run))

    namespaces = netns.listnetns() if os.geteuid() == 0 else []
    for name in namespaces:
        if (run := runid.run_of_name(name)) is not None:
            entry(run).namespaces.append(name)
    if namespaces:
        for name, pids in netns.ns_pids().items():
            if (run := runid.run_of_name(name)) is not None:
                entry(run).pids.extend(pids)
    for process in psutil.process_iter(["pid"]):
        try:
            run = process.environ().get(runid.ENV_VAR)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        if run and process.pid not in entry(run).pids:
            entry(run).pids.append(process.pid)
    for directory in Path(tempfile.gettempdir()).glob(f"{runid.PREFIX}-*-delayer-*"):  # the delay line's socket
        if (run := runid.run_of_name(directory.name)) is not None:
            entry(run).directories.append(directory)
    for group in cgroup.run_cgroups():  # network.cpu_limit
        if (run := runid.run_of_name(group.name)) is not None:
            entry(run).cgroups.append(group)
    for state_file in runid.state_dir().glob("*.json"):
        leftover = entry(state_file.stem)
        leftover.state_file = state_file
        try:
            state = json.loads(state_file.read_text())
            leftover.control, leftover.results = Path(state["control"]), Path(state["results"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return found


def clean(echo: Callable[[str], None]) -> int:
    """Removes every dead run's leftovers; returns how many things were removed."""
    removed = 0
    for run, leftover in sorted(find_leftovers().items()):
        if leftover.state_file is not None and _orchestrator_alive(leftover.state_file):
            echo(f"run {run}: still running (orchestrator alive), left alone")
            continue
        for pid in leftover.pids:
            try:
                psutil.Process(pid).kill()
                echo(f"run {run}: killed process {pid}")
                removed += 1
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs([p for p in map(_process, leftover.pids) if p is not None], timeout=5)
        for name in leftover.namespaces:
            try:
                netns.remove(name)
            except FileNotFoundError:
                continue  # removed meanwhile: machines that share a kernel (a test's) clean it together
            echo(f"run {run}: removed namespace {name}")
            removed += 1
        for directory in leftover.directories:
            shutil.rmtree(directory, ignore_errors=True)
            echo(f"run {run}: removed {directory}")
            removed += 1
        for group in leftover.cgroups:
            cgroup.remove(group)
            echo(f"run {run}: removed cgroup {group}")
            removed += 1
        if leftover.results is not None and mark_killed(leftover.results):
            echo(f"run {run}: marked {leftover.results / MANIFEST} killed (partial)")
        for path in (leftover.control, leftover.state_file):
            try:
                if path is not None:
                    path.unlink()
                    echo(f"run {run}: removed {path}")
                    removed += 1
            except FileNotFoundError:
                continue
    echo(f"removed {removed} leftovers" if removed else "nothing to clean")
    return removed


def mark_killed(results: Path) -> bool:
    """A run that died while its manifest said running (its orchestrator was SIGKILLed) is
    marked killed and partial, so `lab report`, `compare` and `history` treat it as such."""
    try:
        manifest = read_manifest(results)
    except RecordsError:
        return False
    if manifest.status != "running":
        return False
    manifest.status, manifest.partial = "killed", True
    ResultsDir(results).save(manifest)
    return True


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None
