"""Confining the peers' host processes to part of the machine's CPU (`network.cpu_limit`).

One cgroup per run, named after it (`plab-<run>-peers`), with a CPU quota of `cores` x PERIOD_US
per period: cgroup v1's `cpu` controller (cpu.cfs_quota_us) where it is mounted, else cgroup
v2's `cpu.max`. The fork server is moved into it before it forks any host, so every host
inherits it; spawned hosts are moved in as they start. The lab's own processes (orchestrator,
delay line) stay outside: the quota emulates a slower machine for the peers only, which is how
bench/time_dilation.py checks that time dilation gives back an unconfined machine's latencies.

The quota is a ceiling, and the cgroup also gets the highest CPU weight, so that what else runs
on the machine does not take the peers below it: at the default weight, a process confined to
0.1 cores beside two qemu guests had its 10 ms timers late by p99 0.6-17.9 ms, at most 9.8-641
ms, in 20 s; at the highest weight, p99 1.4-3.2 ms, at most 3.3-7.6 ms. Within its quota the
cgroup runs first; it can take no more than the quota from the rest.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from lab.errors import CgroupError
from lab.runid import RunId

PERIOD_US = 10_000  # a short period: a quota of q per period throttles for (1 - q) periods, which is timer lag
WEIGHT = {"v1": ("cpu.shares", "262144"), "v2": ("cpu.weight", "10000")}  # the highest each allows
V1 = Path("/sys/fs/cgroup/cpu")
V2 = Path("/sys/fs/cgroup")



def cpu_root() -> tuple[Path, str]:
    """(where run cgroups go, "v1" or "v2")."""
    if (V1 / "cpu.cfs_quota_us").exists():
        return V1, "v1"
    controllers = V2 / "cgroup.controllers"
    if controllers.exists() and "cpu" in controllers.read_text().split():
        return V2, "v2"
    raise CgroupError("network.cpu_limit needs a cgroup cpu controller (v1 /sys/fs/cgroup/cpu or v2 cpu.max); none is mounted")


def run_cgroups() -> list[Path]:
    """Every run cgroup on the machine (for `lab clean`)."""
    try:
        root, _ = cpu_root()
    except CgroupError:
        return []
    return sorted(p for p in root.glob("plab-*") if p.is_dir())


class CpuLimit:
    def __init__(self, run: RunId, cores: float) -> None:
        self.root, self.version = cpu_root()
        self.path = self.root / f"{run.prefix}-peers"
        self.cores = cores

    def create(self) -> None:
        quota = max(1000, round(self.cores * PERIOD_US))
        try:
            if self.version == "v2":
                controls = self.root / "cgroup.subtree_control"
                if "cpu" not in controls.read_text().split():
                    controls.write_text("+cpu")
            self.path.mkdir()
            if self.version == "v1":
                (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
                (self.path / "cpu.cfs_quota_us").write_text(str(quota))
            else:
                (self.path / "cpu.max").write_text(f"{quota} {PERIOD_US}")
            control, weight = WEIGHT[self.version]
            (self.path / control).write_text(weight)
        except OSError as exc:
            raise CgroupError(f"network.cpu_limit: cannot create {self.path} ({exc.strerror}); run as root") from None

    def add(self, pid: int) -> None:
        """Moves a process (all its threads) into the cgroup; its children are born there."""
        (self.path / "cgroup.procs").write_text(str(pid))

    def remove(self) -> None:
        """After the processes in it ended: kills stragglers, then removes the cgroup."""
        remove(self.path)


def remove(path: Path, grace_s: float = 5.0) -> None:
    deadline = time.monotonic() + grace_s
    while path.exists():
        procs = [int(pid) for pid in (path / "cgroup.procs").read_text().split()] if (path / "cgroup.procs").exists() else []
        for pid in procs:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            path.rmdir()
        except OSError:
            if time.monotonic() > deadline:
                raise CgroupError(f"cannot remove {path}: processes {procs} remain; run `lab clean`") from None
            time.sleep(0.1)
