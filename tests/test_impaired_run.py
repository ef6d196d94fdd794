"""A whole `lab run` with impaired links: measured before the workload, changed by a phase and
by `lab netem` from outside while it runs, every change in the events, nothing left after."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from conftest import ROOT, lab_command, leftovers, needs_root, run_lab, write_topology
from lab.analysis.records import read_jsonl
from lab.cli import main
from lab.output.terminal import LINKS_OUTCOME
from lab.shaping.backend import choose_backend

# Under qemu's emulation on a busy machine one impaired run takes up to ~10 minutes.
pytestmark = [pytest.mark.slow, pytest.mark.impairment, needs_root, pytest.mark.timeout(2400)]
IMPAIRED = ROOT / "tests" / "topologies" / "impaired.yaml"
BACKEND = choose_backend("auto")[0]  # probed once: each probe builds throwaway namespaces
# What does not depend on the backend runs once, on the userspace one (the host's), not again under
# qemu's emulation, where each impaired run costs minutes.
USERSPACE_ONLY = pytest.mark.skipif(BACKEND != "userspace", reason="the same with either backend")


def start_impaired_run(out: Path) -> subprocess.Popen[str]:
    """`lab run` of the impaired topology, its output to out.log (read when a test fails)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with (out.parent / "out.log").open("w") as log:
        return subprocess.Popen(lab_command("run", str(IMPAIRED), "--out", str(out)), cwd=ROOT, text=True, stdout=log,
                                stderr=subprocess.STDOUT)


def wait_for_restore(out: Path, run: subprocess.Popen[str]) -> None:
    """The impair phase's 1 s change has ended and the last phase is 90 s idle: the window for
    live changes. Under qemu's emulation on a busy machine the phases before it took 5 minutes."""
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and run.poll() is None:
        events = out / "events.jsonl"
        if events.exists() and any("end of duration" in e.get("source", "") for e in read_jsonl(events)):
            return
        time.sleep(0.5)
    state = "still running" if run.poll() is None else f"exit {run.poll()}"
    pytest.fail(f"the impair phase's change never ended ({state}):\n{(out.parent / 'out.log').read_text()}")


def test_impaired_run_with_live_changes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run = start_impaired_run(out)
    try:
        wait_for_restore(out, run)
        cli = CliRunner()
        changed = cli.invoke(main, ["netem", "--loss", "10%", "--delay", "30ms", "--group", "b", "--run", str(out), "--verify"])
        assert changed.exit_code == 0 and "applied to 2 peers" in changed.output, changed.output
        # Right links are matched, or too noisy to tell; never DISAGREE.
        assert any(LINKS_OUTCOME[status] in changed.output for status in ("passed", "unverified")), changed.output
        shown = cli.invoke(main, ["netem", "--show", "--peers", "2", "--run", str(out)])
        assert "peer 2 (b): delay 30ms, loss 10%" in shown.output, shown.output
        cleared = cli.invoke(main, ["netem", "--clear", "--run", str(out)])
        assert cleared.exit_code == 0 and "cleared 4 peers" in cleared.output, cleared.output
        bad = cli.invoke(main, ["netem", "--loss", "150%", "--run", str(out)])
        assert bad.exit_code == 2 and "loss" in bad.output
        run.wait(timeout=900)
    finally:
        run.kill()
    output = (tmp_path / "out.log").read_text()
    assert run.returncode == 0, output
    manifest = json.loads((out / "manifest.json").read_text())
    impairment = manifest["impairment"]
    assert impairment["applied"] and len(impairment["verification"]) == 4
    # Right links are never called wrong; on a machine too busy to tell (qemu beside other VMs) the
    # run goes on, unverified, and says so.
    assert impairment["verification_status"] in ("passed", "unverified"), output
    if impairment["verification_status"] == "unverified":
        assert "the run goes on with its impairment unverified" in output, output
    assert impairment["backend"] == BACKEND
    costs = manifest["lab_processes"]
    assert costs["orchestrator"]["cpu_seconds"] > 0
    if impairment["backend"] == "userspace":  # the delay line's own CPU time is measured, not hidden
        assert costs["delay_line"]["cpu_seconds"] > 0 and costs["delay_line"]["max_rss_mib"] > 0
    sources = [e["source"] for e in read_jsonl(out / "events.jsonl") if e["op"] == "impairment"]
    assert sources == ["topology", "workload phase impair ['a']", "workload phase impair ['a'] (end of duration)",
                       "lab netem", "lab netem --clear"]
    periods = json.loads((out / "summary.json").read_text())["impairment_periods"]
    assert [p["period"].rsplit(" (peers", 1)[0] for p in periods] == [
        "before any change", "after workload phase impair ['a']", "after workload phase impair ['a'] (end of duration)",
        "after lab netem", "after lab netem --clear",
    ]
    assert leftovers(manifest["run_id"]) == []


def test_netem_without_a_running_lab_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["netem", "--loss", "5%", "--run", str(tmp_path)])
    assert result.exit_code == 2 and "no running lab run" in result.output


@pytest.mark.skipif(BACKEND != "userspace", reason="netem can duplicate")
def test_impairment_the_backend_cannot_give_refuses_before_building(tmp_path: Path) -> None:
    link = {"delay": "5ms", "duplicate": "1%"}
    topology = write_topology(tmp_path / "dup.yaml", groups=[{"name": "peers", "count": 6, "link": link}])
    done = run_lab("run", str(topology), "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "Error: groups[0].link.duplicate: the userspace backend cannot duplicate packets; it needs the netem backend "
        "(kernel sch_netem); set impairment.backend or change the link"
    ]
    assert not (tmp_path / "out").exists()


@USERSPACE_ONLY
def test_a_link_the_machine_cannot_verify_is_a_warning_and_strict_refuses_it(tmp_path: Path) -> None:
    """No Python sender offers 27 Gbit/s, so a 30 Gbit/s link cannot be told from a slower one:
    the run says so and goes on, marked unverified; `impairment.verify: strict` refuses it. HTB
    gives the rate under either backend, and the verification is the same."""
    fields = {"groups": [{"name": "peers", "count": 2, "link": {"rate": "30gbit"}}], "workload": [{"phase": "bootstrap"}],
              "slas": [], "network": yaml.safe_load(IMPAIRED.read_text())["network"]}  # peers that start under qemu too
    loose = run_lab("run", str(write_topology(tmp_path / "fast.yaml", **fields, bootstrap={"peers": 1, "dials": 1})),
                    "--out", str(tmp_path / "loose"), "--no-report", timeout=1200)
    assert loose.returncode == 0, loose.stdout + loose.stderr
    assert "rate_bps: configured 3e+10" in loose.stdout and "the sender offered only" in loose.stdout, loose.stdout
    impairment = json.loads((tmp_path / "loose" / "manifest.json").read_text())["impairment"]
    assert impairment["verification_status"] == "unverified"
    strict_file = write_topology(tmp_path / "strict.yaml", **fields, impairment={"verify": "strict"})
    strict = run_lab("run", str(strict_file), "--out", str(tmp_path / "strict"), "--no-report", timeout=1200)
    assert strict.returncode == 2, strict.stdout + strict.stderr
    [line] = strict.stderr.strip().splitlines()
    assert line.startswith("Error: links could not be verified (impairment.verify: strict): peer 0->1 rate_bps"), line
    for out in (tmp_path / "loose", tmp_path / "strict"):
        assert leftovers(json.loads((out / "manifest.json").read_text())["run_id"]) == []


@USERSPACE_ONLY
def test_lab_clean_after_a_killed_impaired_run_leaves_nothing(tmp_path: Path) -> None:
    """SIGKILL the orchestrator mid-run: the delay line dies with it (PDEATHSIG); lab clean
    removes the namespaces (and with them every qdisc and rule) and the delay line's directory.
    The netem backend builds only qdiscs inside the namespaces, which go the same way."""
    out = tmp_path / "run"
    run = start_impaired_run(out)
    try:
        wait_for_restore(out, run)
    finally:
        run.kill()
        run.wait(timeout=30)
    run_id = json.loads((out / "manifest.json").read_text())["run_id"]
    deadline = time.monotonic() + 15
    while any(item.startswith("pid") for item in leftovers(run_id)) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = leftovers(run_id)
    assert not any(item.startswith("pid") for item in left), left
    assert any(item.startswith("plab-") for item in left), left
    assert any("-delayer-" in item for item in left), left  # the delay line's directory, until lab clean
    assert run_lab("clean").returncode == 0
    assert leftovers(run_id) == []
