"""Limits a large run needs: raised for real where the process may, one-line refusals where not."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from lab.network import limits

SCRIPT = (
    "import resource; from lab.network import limits; "
    "print(limits.raise_open_files(1000)); print(resource.getrlimit(resource.RLIMIT_NOFILE))"
)


def with_open_files(soft: int, hard: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)))


def test_a_low_soft_open_file_limit_is_raised_to_what_the_peers_need() -> None:
    done = with_open_files(64, 10_000)
    assert done.stdout.splitlines() == ["open-file limit raised from 64 to 6256", "(6256, 10000)"], done.stderr


def test_a_hard_limit_this_process_may_not_raise_is_a_one_line_refusal() -> None:
    done = with_open_files(64, 64)
    if done.returncode == 0:
        pytest.skip("this process may raise its hard limit (CAP_SYS_RESOURCE)")
    assert done.stderr.strip().splitlines()[-1] == (
        "lab.errors.LimitError: open files: 1000 peers need 6256, the hard limit is 64 and this process may not "
        "raise it; start the lab from a shell with `ulimit -n 6256`"
    )


def test_too_few_network_namespaces_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    setting = tmp_path / "max_net_namespaces"
    setting.write_text("500\n")
    monkeypatch.setattr(limits, "MAX_NET_NAMESPACES", setting)
    limits.check_namespaces(497)
    with pytest.raises(limits.LimitError, match=r"1000 hosts need 1003, .*sysctl user.max_net_namespaces=1003"):
        limits.check_namespaces(1000)


def test_hosts_of_many_peers_need_a_descriptor_per_possible_connection() -> None:
    assert limits.needed_open_files(1000) == 256 + 6 * 1000  # the orchestrator's handles dominate
    assert limits.needed_open_files(1000, host_connections=20 * 300) == 256 + 6 * 1000
    assert limits.needed_open_files(1000, host_connections=40 * 300) == 256 + 40 * 300  # a full host's sockets
