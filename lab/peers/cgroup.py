"""The peers' share of the machine's CPU: `network.cpu_limit` and `network.cpu: core`.

One cgroup per run, named after it (`plab-<run>-peers`), holding every host process: its CPU
quota is `network.cpu_limit` cores (none without it). cgroup v1's `cpu` controller
(cpu.cfs_quota_us) where it is mounted, else cgroup v2's `cpu.max`. The fork server is moved in
before it forks any host, so every host is born in it; spawned hosts are moved in as they start.
The lab's own processes (orchestrator, delay line) stay outside: the quota emulates a slower
machine for the peers only, which is how bench/time_dilation.py checks that time dilation gives
back an unconfined machine's latencies.

With `network.cpu: core`, each host process also gets a cgroup of its own inside it, with a
quota of its peers / N cores at the dilation N in force (changed with it), so that in the run's
time every peer has one core of this machine (docs/scaling.md, The CPU model). A quota below
1 ms per period is not allowed, so its period is as long as the quota needs: at most 1 s,
which is 1/N s of the run's time.

The quota is a ceiling, and the cgroup also gets the highest CPU weight, so that what else runs
on the machine does not take the peers below it: at the default weight, a process confined to
0.1 cores beside two qemu guests had its 10 ms timers late by p99 0.6-17.9 ms, at most 9.8-641
ms, in 20 s; at the highest weight, p99 1.4-3.2 ms, at most 3.3-7.6 ms. Within its quota the
cgroup runs first; it can take no more than the quota from the rest.
"""

from __future__ import annotations

import math
import os
import signal
import time
from pathlib import Path

from lab.errors import CgroupError
from lab.runid import RunId

PERIOD_US = 10_000  # a short period: a quota of q per period throttles for (1 - q) periods, which is timer lag
MIN_QUOTA_US, MAX_PERIOD_US = 1_000, 1_000_000  # the kernel's bounds
WEIGHT = {"v1": ("cpu.shares", "262144"), "v2": ("cpu.weight", "10000")}  # the highest each allows
V1 = Path("/sys/fs/cgroup/cpu")
V2 = Path("/sys/fs/cgroup")
SHARED = "all"  # cgroup v2 keeps processes in leaves only: the run's leaf for those without their own


def cpu_root() -> tuple[Path, str]:
    """(where run cgroups go, "v1" or "v2")."""
    if (V1 / "cpu.cfs_quota_us").exists():
        return V1, "v1"
    controllers = V2 / "cgroup.controllers"
    if controllers.exists() and "cpu" in controllers.read_text().split():
        return V2, "v2"
    raise CgroupError("network.cpu_limit and network.cpu: core need a cgroup cpu controller (v1 /sys/fs/cgroup/cpu or "
                      "v2 cpu.max); none is mounted")


def run_cgroups() -> list[Path]:
    """Every run cgroup on the machine (for `lab clean`)."""
    try:
        root, _ = cpu_root()
    except CgroupError:
        return []
    return sorted(p for p in root.glob("plab-*") if p.is_dir())


def quota(cores: float | None) -> tuple[int | None, int]:
    """(quota, period) in microseconds for `cores` (None: no quota); the period is PERIOD_US,
    longer where the quota would fall below the kernel's 1 ms."""
    if cores is None:
        return None, PERIOD_US
    period = min(MAX_PERIOD_US, max(PERIOD_US, math.ceil(MIN_QUOTA_US / cores)))
    return max(MIN_QUOTA_US, round(cores * period)), period


class PeerCgroups:
    """The peers' cgroups of one run: the run's (`cores` in all: network.cpu_limit, or None),
    and with `hosts` (host -> its peers: network.cpu: core) one per host inside it."""

    def __init__(self, run: RunId, cores: float | None, hosts: dict[int, int] | None = None, factor: float = 1.0) -> None:
        self.root, self.version = cpu_root()
        self.path = self.root / f"{run.prefix}-peers"
        self.cores = cores
        self.hosts = hosts or {}
        self.factor = factor

    def host_path(self, host: int) -> Path:
        return self.path / f"h{host:04d}"

    def _limit(self, path: Path, cores: float | None) -> None:
        microseconds, period = quota(cores)
        if self.version == "v1":
            (path / "cpu.cfs_period_us").write_text(str(period))
            (path / "cpu.cfs_quota_us").write_text(str(microseconds if microseconds is not None else -1))
        else:
            (path / "cpu.max").write_text(f"{microseconds if microseconds is not None else 'max'} {period}")

    def create(self) -> None:
        try:
            if self.version == "v2":
                _enable_cpu(self.root)
            self.path.mkdir()
            self._limit(self.path, self.cores)
            control, weight = WEIGHT[self.version]
            (self.path / control).write_text(weight)
            if self.version == "v2":
                _enable_cpu(self.path)
                self.shared.mkdir()
            for host in self.hosts:
                self.host_path(host).mkdir()
            self.retime(self.factor)
        except OSError as exc:
            raise CgroupError(f"cannot create the peers' cgroup {self.path} ({exc.strerror}); run as root") from None

    def retime(self, factor: float) -> None:
        """Each host's quota at the dilation now in force: its peers / factor cores."""
        self.factor = factor
        for host, peers in self.hosts.items():
            self._limit(self.host_path(host), peers / factor)

    @property
    def shared(self) -> Path:
        """Where processes without a cgroup of their own go (cgroup v2 keeps processes in leaves only)."""
        return self.path / SHARED if self.version == "v2" else self.path

    def add_server(self, pid: int) -> None:
        """The fork server (all its threads): the hosts it forks are born in the run's cgroup."""
        (self.shared / "cgroup.procs").write_text(str(pid))

    def add_host(self, host: int, pid: int) -> None:
        """A host process, into its own cgroup (network.cpu: core) or the run's; one that already
        exited is left to the fleet, which reports it."""
        path = self.host_path(host) if host in self.hosts else self.shared
        try:
            (path / "cgroup.procs").write_text(str(pid))
        except ProcessLookupError:
            pass

    def remove(self) -> None:
        """After the processes in it ended: kills stragglers, then removes the cgroups."""
        remove(self.path)


def _enable_cpu(parent: Path) -> None:
    """cgroup v2: the cpu controller for the cgroups inside `parent`."""
    controls = parent / "cgroup.subtree_control"
    if "cpu" not in controls.read_text().split():
        controls.write_text("+cpu")


def remove(path: Path, grace_s: float = 5.0) -> None:
    """Removes a run's cgroup and those inside it, killing what is left in them."""
    for inner in [p for p in path.iterdir() if p.is_dir()] if path.exists() else []:
        remove(inner, grace_s)
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
