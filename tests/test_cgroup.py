"""`network.cpu_limit`'s cgroup, in the kernel: its quota is a ceiling at the highest weight, and
removing it ends what is left in it."""

from __future__ import annotations

import subprocess

import psutil

from conftest import needs_cpu_controller, needs_root
from lab.peers import cgroup
from lab.runid import RunId


@needs_root
@needs_cpu_controller
def test_the_peers_cgroup_caps_at_the_quota_and_runs_first_within_it() -> None:
    limit = cgroup.CpuLimit(RunId.new(), 0.25)
    limit.create()
    sleeper = subprocess.Popen(["sleep", "600"])
    try:
        limit.add(sleeper.pid)
        settings = {name: (limit.path / name).read_text().strip() for name in
                    (["cpu.cfs_quota_us", "cpu.cfs_period_us", "cpu.shares"] if limit.version == "v1"
                     else ["cpu.max", "cpu.weight"])}
        expected = ({"cpu.cfs_quota_us": "2500", "cpu.cfs_period_us": "10000", "cpu.shares": "262144"}
                    if limit.version == "v1" else {"cpu.max": "2500 10000", "cpu.weight": "10000"})
        assert settings == expected
        assert str(sleeper.pid) in (limit.path / "cgroup.procs").read_text().split()
    finally:
        limit.remove()
    assert not limit.path.exists()
    assert sleeper.wait(timeout=10) == -9 and not psutil.pid_exists(sleeper.pid)
