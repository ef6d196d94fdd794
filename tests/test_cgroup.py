"""The peers' cgroups, in the kernel: network.cpu_limit's quota is a ceiling at the highest weight;
network.cpu: core gives each host its peers / N cores and follows N; removing them ends what is
left in them."""

from __future__ import annotations

import subprocess

import psutil

from conftest import needs_cpu_controller, needs_root
from lab.peers import cgroup
from lab.runid import RunId


def test_a_quota_below_the_kernels_millisecond_gets_a_longer_period() -> None:
    assert cgroup.quota(0.25) == (2500, 10_000)
    assert cgroup.quota(0.02) == (1000, 50_000)  # 1/50 of a core: 1 ms in 50
    assert cgroup.quota(0.0005) == (1000, 1_000_000)  # the kernel's longest period caps it
    assert cgroup.quota(None) == (None, 10_000)


def _settings(limit: cgroup.PeerCgroups, path: object) -> dict[str, str]:
    names = ["cpu.cfs_quota_us", "cpu.cfs_period_us"] if limit.version == "v1" else ["cpu.max"]
    return {name: (path / name).read_text().strip() for name in names}  # type: ignore[operator]


@needs_root
@needs_cpu_controller
def test_the_peers_cgroup_caps_at_the_quota_and_runs_first_within_it() -> None:
    limit = cgroup.PeerCgroups(RunId.new(), 0.25)
    limit.create()
    sleeper = subprocess.Popen(["sleep", "600"])
    try:
        limit.add_server(sleeper.pid)
        weight = "cpu.shares" if limit.version == "v1" else "cpu.weight"
        expected = ({"cpu.cfs_quota_us": "2500", "cpu.cfs_period_us": "10000"} if limit.version == "v1"
                    else {"cpu.max": "2500 10000"})
        assert _settings(limit, limit.path) == expected
        assert (limit.path / weight).read_text().strip() == cgroup.WEIGHT[limit.version][1]
        assert str(sleeper.pid) in (limit.shared / "cgroup.procs").read_text().split()
    finally:
        limit.remove()
    assert not limit.path.exists()
    assert sleeper.wait(timeout=10) == -9 and not psutil.pid_exists(sleeper.pid)


@needs_root
@needs_cpu_controller
def test_core_gives_each_host_its_peers_share_of_a_core_and_follows_the_dilation() -> None:
    limit = cgroup.PeerCgroups(RunId.new(), None, hosts={0: 2, 1: 1}, factor=4.0)
    limit.create()
    sleepers = [subprocess.Popen(["sleep", "600"]) for _ in range(2)]
    try:
        for host, sleeper in enumerate(sleepers):
            limit.add_host(host, sleeper.pid)
        v1 = limit.version == "v1"
        assert _settings(limit, limit.host_path(0)) == ({"cpu.cfs_quota_us": "5000", "cpu.cfs_period_us": "10000"} if v1
                                                      else {"cpu.max": "5000 10000"})  # 2 peers / 4 = half a core
        assert str(sleepers[1].pid) in (limit.host_path(1) / "cgroup.procs").read_text().split()
        limit.retime(8.0)  # twice the dilation: half the CPU, the same in the run's time
        assert _settings(limit, limit.host_path(1)) == ({"cpu.cfs_quota_us": "1250", "cpu.cfs_period_us": "10000"} if v1
                                                      else {"cpu.max": "1250 10000"})
        assert _settings(limit, limit.path) == ({"cpu.cfs_quota_us": "-1", "cpu.cfs_period_us": "10000"} if v1
                                                else {"cpu.max": "max 10000"})  # no cpu_limit: no quota in all
    finally:
        limit.remove()
    assert not limit.path.exists() and all(s.wait(timeout=10) == -9 for s in sleepers)
