"""What a results directory must say about where its numbers came from."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
import subprocess
import sys
import timeit
from pathlib import Path

import psutil

from lab.manifest import Source, SpeedProbe, Testbed

PACKAGES = ("libp2p", "multiaddr", "trio", "pyroute2", "psutil", "scipy", "numpy", "click", "pydantic", "pint")
SOURCE_DIR = Path(__file__).resolve().parent.parent
SPEED_PROBE = "sum(i * i for i in range(200_000))"


def git_commit() -> Source:
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(SOURCE_DIR), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return Source(commit=commit, dirty=bool(status) if status is not None else None)


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    from lab import __version__

    found["p2p-lab"] = __version__
    return found


def python_speed() -> SpeedProbe:
    """How fast this machine runs plain Python, the work py-libp2p peers do: one loop timed five
    times. A CPU's name says little on shared virtual machines: two both called "AMD EPYC" ran
    the same 300-peer bootstrap in 183 s and in 416 s (docs/scaling.md)."""
    times = timeit.repeat(SPEED_PROBE, number=1, repeat=5)
    return SpeedProbe(probe=SPEED_PROBE, best_ms=min(times) * 1000, median_ms=statistics.median(times) * 1000)


def _cpuinfo() -> dict[str, str]:
    """The first CPU's fields from /proc/cpuinfo ("model name", "cpu family", "cpu MHz", ...)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().split("\n\n", 1)[0].splitlines()
    except OSError:
        return {}
    return {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in lines)}


def machine() -> Testbed:
    uname = platform.uname()
    cpu = _cpuinfo()
    return Testbed(
        hostname=uname.node,
        kernel=uname.release,
        kernel_version=uname.version,
        arch=uname.machine,
        cpu_model=cpu.get("model name"),
        cpu_family_model_stepping=[cpu.get("cpu family"), cpu.get("model"), cpu.get("stepping")],
        cpu_mhz=float(cpu["cpu MHz"]) if "cpu MHz" in cpu else None,
        python_speed=python_speed(),
        cpus=os.cpu_count(),
        memory_total_bytes=psutil.virtual_memory().total,
        euid=os.geteuid(),
        argv=sys.argv,
    )
