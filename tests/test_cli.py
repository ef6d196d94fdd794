"""The command line through click's CliRunner: messages and exit codes for bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import ROOT, TINY, needs_root, write_topology
from lab import runid
from lab.cli import main
from lab.network import doctor
from lab.peers import cgroup


def test_malformed_topology_is_one_line_and_exit_2(tmp_path: Path) -> None:
    topology = write_topology(tmp_path / "bad.yaml", groups=[{"name": "a", "count": 0}])
    result = CliRunner().invoke(main, ["run", str(topology), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.output.strip() == f"Error: {topology}: groups[0].count: must be >= 1"
    assert not (tmp_path / "out").exists(), "nothing is built for a bad topology"


def test_missing_topology_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["run", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "nope.yaml: cannot read (No such file or directory)" in result.output


def test_non_empty_out_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    result = CliRunner().invoke(main, ["run", str(TINY), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "exists and is not empty" in result.output
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


@needs_root
def test_doctor_reports_checks_and_mode() -> None:
    result = CliRunner().invoke(main, ["doctor"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    names = {line[5:25].strip() for line in lines[:-2]}
    assert {"root", "netns+veth", "sch_netem", "htb", "iptables statistic", "nfqueue", "open files"} <= names
    assert lines[-2].startswith("lab run will use: netns")
    netem = next(line for line in lines if "sch_netem" in line).startswith("yes")
    assert lines[-1].startswith(f"link impairment backend: {'netem' if netem else 'userspace'} (")
    assert all(line[:3] in ("yes", "no ") for line in lines[:-2])


TRACKING = """Reference ID    : CB00710F (foo.example.net)
Stratum         : 3
System time     : 0.000006523 seconds slow of NTP time
Last offset     : -0.000006747 seconds
Leap status     : {leap}
"""


def test_chrony_counts_as_synchronised_only_with_a_normal_leap_status() -> None:
    assert doctor.chrony_state(TRACKING.format(leap="Normal")) == \
        "synchronised, 0.000006523 seconds slow of NTP time"
    with pytest.raises(RuntimeError, match="not synchronised this clock .leap status: Not synchronised"):
        doctor.chrony_state(TRACKING.format(leap="Not synchronised"))
    with pytest.raises(RuntimeError, match="no leap status"):
        doctor.chrony_state("506 Cannot talk to daemon")


def test_clean_removes_a_dead_runs_state_and_socket(tmp_path: Path) -> None:
    dead_pid = _dead_pid()
    control = tmp_path / "control.sock"
    control.write_text("")
    state = runid.state_dir() / "fedcba.json"
    state.write_text(json.dumps({"orchestrator_pid": dead_pid, "results": str(tmp_path), "control": str(control)}))
    result = CliRunner().invoke(main, ["clean"])
    assert result.exit_code == 0
    assert f"run fedcba: removed {control}" in result.output
    assert f"run fedcba: removed {state}" in result.output
    assert not state.exists() and not control.exists()


def test_clean_leaves_a_live_run_alone(tmp_path: Path) -> None:
    state = runid.state_dir() / "abcdef.json"
    state.write_text(json.dumps({"orchestrator_pid": os.getppid(), "results": str(tmp_path), "control": "x"}))
    try:
        result = CliRunner().invoke(main, ["clean"])
        assert "run abcdef: still running (orchestrator alive), left alone" in result.output
        assert state.exists()
    finally:
        state.unlink()


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_netns_mode_without_namespaces_is_a_setup_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The probe itself is exercised by `lab doctor` above; here: what the run does with its answer.
    monkeypatch.setattr(doctor, "netns_problem", lambda: "not running as root")
    topology = write_topology(tmp_path / "t.yaml", network={"mode": "netns"})
    result = CliRunner().invoke(main, ["run", str(topology), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.output.strip() == (
        "Error: network.mode is netns but not running as root; run as root or set network.mode: auto"
    )
    assert not (tmp_path / "out").exists()


def test_auto_mode_falls_back_to_loopback_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor, "netns_problem", lambda: "not running as root")
    assert doctor.choose_mode("auto") == ("loopback", "falling back to loopback (127.0.0.0/8): not running as root")
    assert doctor.choose_mode("loopback") == ("loopback", "requested by the topology")
    monkeypatch.setattr(doctor, "netns_problem", lambda: None)
    assert doctor.choose_mode("auto")[0] == "netns"


STARVED_PROBE = """
import os, sys
from pathlib import Path
from lab.network import doctor
Path(sys.argv[1], "cgroup.procs").write_text("0")  # imported, then this process (and the helpers it forks) in
print(doctor.netns_problem(), flush=True)
os._exit(0)  # the interpreter's teardown at a five-hundredth of a core takes minutes, and is not what is tested
"""


@needs_root
@pytest.mark.netns
@pytest.mark.skipif(not (cgroup.V1 / "cpu.cfs_quota_us").exists(), reason="needs cgroup v1's cpu controller")
def test_the_namespace_probe_waits_for_a_starved_cpu(tmp_path: Path) -> None:
    """At a five-hundredth of a core, pyroute2's own 2 s wait for its helper process made the
    probe report namespaces missing (lab/network/netlink.py); with the lab's waits it passes."""
    limit = cgroup.PeerCgroups(runid.RunId.new(), 0.002)  # the kernel's smallest quota, 1 ms, per half second
    limit.create()
    try:
        assert (limit.path / "cpu.cfs_period_us").read_text().strip() == "500000"
        done = subprocess.run([sys.executable, "-c", STARVED_PROBE, str(limit.path)], capture_output=True, text=True,
                              timeout=600, cwd=ROOT)
    finally:
        limit.remove()
    assert done.stdout.strip() == "None", done.stdout + done.stderr
