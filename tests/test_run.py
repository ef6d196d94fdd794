"""End-to-end: real `lab run` processes, real peers, real namespaces, and nothing left behind."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import numpy as np
import psutil
import pytest

from conftest import DEFAULT, ROOT, TINY, chromium, lab_command, leftovers, needs_root, run_lab, write_topology
from lab import runid
from lab.analysis.compare import run_samples
from lab.analysis.figures import analyze
from lab.analysis.records import load, read_jsonl
from lab.analysis.stats import summarize
from lab.manifest import read_manifest
from lab.output.report import write_report
from lab.peers.fleet import HANG_MIN_S

pytestmark = [pytest.mark.slow]


def run_id_of(stdout: str) -> str:
    first = next((line for line in stdout.splitlines() if line.startswith("run ")), stdout[:200])
    assert first.startswith("run "), first
    return first.split()[1].rstrip(":")


@pytest.fixture(scope="module")
def netns_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    out = tmp_path_factory.mktemp("netns") / "results"
    return run_lab("run", str(DEFAULT), "--quick", "--out", str(out)), out


@needs_root
def test_netns_run_writes_a_consistent_results_directory(netns_run: tuple) -> None:
    done, out = netns_run
    verdicts = json.loads((out / "verdicts.json").read_text())
    assert done.returncode == {"pass": 0, "fail": 1, "inconclusive": 4}[verdicts["outcome"]], done.stdout + done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["partial"] is False
    assert manifest["mode"] == "netns"
    assert manifest["seed"] == 42 and manifest["topology"]["name"] == "10-peers"
    assert manifest["versions"]["libp2p"] == "0.8.1"
    assert manifest["machine"]["kernel"] and "commit" in manifest["source"]
    assert manifest["machine"]["python_speed"]["best_ms"] > 0
    assert manifest["peers_ready"] == 10 and manifest["peers_lost"] == 0
    assert len({p["peer_id"] for p in manifest["peers"]}) == 10
    assert all(p["ip"].startswith("198.18.") and p["netns"] and p["group"] == "peers" for p in manifest["peers"])
    assert len(list((out / "logs").glob("host-*.stderr"))) == 10
    workload = [p["phase"] for p in manifest["topology"]["workload"]]
    rerun = [f"{kind} (2N)" for kind in ("gossip", "bootstrap") for _ in range(5)]  # warm-up, N, 2N, 2N, N of each
    assert [p["phase"] for p in manifest["phases"]] == workload + rerun

    everything = read_jsonl(out / "events.jsonl")  # the 2N check's operations come after the workload's
    stretches = [e for e in everything if e["op"] == "rerun" and e["phase"] == "gossip"]
    announced = [sum(1 for e in everything if e["op"] == "gossip_publish" and s["start_ns"] <= e["start_ns"] <= s["end_ns"])
                 for s in stretches]
    assert announced == [manifest["topology"]["fidelity"]["messages"]] * 5, announced  # 8 in the default topology
    events = [e for e in everything if e["start_ns"] < next(e["start_ns"] for e in everything if e["op"] == "rerun")]
    summary = json.loads((out / "summary.json").read_text())["metrics"]
    counts = Counter(e["op"] for e in events)
    quick = {p["phase"]: p for p in manifest["topology"]["workload"]}
    assert counts["bootstrap"] == 10
    assert counts["publish"] == quick["publish"]["packages"] == 5  # --quick shrank 20 packages to 5
    assert counts["get"] == 10 * quick["lookup"]["per_peer"]
    # publish and gossip end at their announcement barrier: it says all arrived exactly when the
    # events show every other peer received every announcement
    workload_lines = done.stdout.split("[2N]")[0].splitlines()
    barriers = [line for line in workload_lines if line.startswith("  barrier: ")]
    assert len(barriers) == 1, done.stdout  # the gossip phase's: the publish phase does not announce
    all_reached = all("reached every live peer" in line for line in barriers)
    assert all_reached == (summary["gossip_delivery_ratio"]["min"] == 1.0), barriers
    for name, metric in summary.items():
        if metric["unit"] != "millisecond":
            continue
        durations = [(e["end_ns"] - e["start_ns"]) / 1e6 for e in events if e["op"] == name and e["ok"]]
        assert metric["n"] == counts[name], name
        assert metric["successes"] == len(durations), name
        if durations:
            assert metric["p50"] == pytest.approx(np.percentile(durations, 50)), name
            assert metric["max"] == pytest.approx(max(durations)), name
    for verdict in verdicts["verdicts"]:
        if verdict.get("builtin"):
            continue
        assert verdict["measured"] == summary[verdict["metric"]][verdict["stat"]]
    assert verdicts["passed"] == all(v["passed"] for v in verdicts["verdicts"])
    bounds = json.loads((out / "summary.json").read_text())["cpu_bound"]
    assert bounds[0]["label"] == "run" and len(bounds) == 1 + len(manifest["topology"]["workload"])
    assert all(b["cpu_s"]["peer"] > 0 and b["ratio"] > 0.9 for b in bounds), bounds  # no window beats its CPU bound
    assert summary["wall_over_cpu_bound"]["p50"] == pytest.approx(bounds[0]["ratio"])
    lab = sum(bounds[0]["cpu_s"].values()) - bounds[0]["cpu_s"]["peer"]
    assert summary["lab_cpu_share"]["p50"] == pytest.approx(lab / sum(bounds[0]["cpu_s"].values())) and lab > 0
    resources = read_jsonl(out / "resources.jsonl")
    assert {r["peer"] for r in resources if r["role"] == "peer"} == set(range(10))
    assert summary["memory_rss_mib"]["n"] == summary["memory_uss_mib"]["n"] == 10
    with (out / "samples.csv").open() as handle:
        csv_rows = Counter(row.split(",")[0] for row in handle.read().splitlines()[1:])
    assert all(csv_rows[name] == metric["successes"] for name, metric in summary.items())
    prom = (out / "summary.prom").read_text()
    assert f'p2p_lab_milliseconds{{metric="get",run_id="{manifest["run_id"]}",stat="n"' in prom
    assert prom.endswith("# EOF\n")
    errors = json.loads((out / "summary.json").read_text())["errors"]
    failed = sum(1 for e in events if not e["ok"])
    assert sum(sum(causes.values()) for causes in errors["operations"].values()) == failed
    assert f"failed operations: {failed}" in done.stdout
    logged = errors["peer_logs"]["levels"]
    assert f"peer logs: {logged.get('ERROR', 0) + logged.get('CRITICAL', 0)} errors" in done.stdout
    assert leftovers(manifest["run_id"]) == []


@needs_root
def test_every_figure_is_derived_once_so_summary_report_and_compare_agree(netns_run: tuple) -> None:
    """summary.json and verdicts.json, written by the run from what it gathered in memory, equal
    what `lab report` and `lab compare` derive from the results directory."""
    _, out = netns_run
    analysis = analyze(load(out))  # what lab report renders
    assert analysis.summary_record() == json.loads((out / "summary.json").read_text())
    assert analysis.verdicts_record() == json.loads((out / "verdicts.json").read_text())
    compared = run_samples(out)  # what lab compare tests
    assert set(compared) == set(analysis.summary) and len(compared) > 10
    assert all(summarize(m.values, m.attempts, m.unit) == analysis.summary[name] for name, m in compared.items())
    report = write_report(out).path.read_text()
    p50 = analysis.summary["get"].p50
    assert p50 is not None and f"{p50:.4g}" in report


@needs_root
def test_loopback_mode_same_seed_same_keys_and_failing_sla(netns_run: tuple, tmp_path: Path) -> None:
    _, netns_out = netns_run
    topology = write_topology(
        tmp_path / "loop.yaml",
        DEFAULT,
        network={"mode": "loopback"},
        groups=[{"name": "peers", "count": 10}],  # loopback mode has no links to delay
        # Memory is not a latency: the fidelity guard cannot doubt this failure on a busy machine.
        slas=[{"metric": "memory_rss_mib", "stat": "max", "op": "<", "threshold": "1MiB"}],
    )
    out = tmp_path / "results"
    done = run_lab("run", str(topology), "--quick", "--out", str(out))
    assert done.returncode == 1, done.stdout + done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["mode"] == "loopback"
    assert all(p["ip"].startswith("127.18.") and p["netns"] is None for p in manifest["peers"])
    netns_manifest = json.loads((netns_out / "manifest.json").read_text())
    assert [p["peer_id"] for p in manifest["peers"]] == [p["peer_id"] for p in netns_manifest["peers"]]

    def gets(path: Path) -> set[tuple[int, str]]:
        return {(e["peer"], e["package"]) for e in read_jsonl(path / "events.jsonl") if e["op"] == "get"}

    assert gets(out) == gets(netns_out)  # same seed, same workload schedule
    verdict = json.loads((out / "verdicts.json").read_text())["verdicts"][0]
    assert verdict["status"] == "fail" and verdict["metric"] == "memory_rss_mib"
    assert "FAIL  memory_rss_mib max < 1MiB" in done.stdout


def start_run(out: Path, topology: Path = TINY) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        lab_command("run", str(topology), "--out", str(out)),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        # A shell's background job inherits SIGINT ignored, and Python then installs no Ctrl-C
        # handler: the run must see SIGINT as a terminal would deliver it, however pytest started.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert process.stdout is not None
    return process, run_id_of(process.stdout.readline())


def wait_for_line(process: subprocess.Popen[str], prefix: str) -> list[str]:
    assert process.stdout is not None
    seen = []
    for line in process.stdout:
        seen.append(line)
        if line.startswith(prefix):
            return seen
    raise AssertionError(f"run ended before {prefix!r}: {''.join(seen)}")


def peer_pids(run: str) -> list[int]:
    pids = []
    for process in psutil.process_iter(["pid"]):
        try:
            if process.environ().get(runid.ENV_VAR) == run:
                pids.append(process.pid)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return pids


@needs_root
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_run_leaves_a_partial_directory_and_nothing_else(tmp_path: Path, signum: int) -> None:
    out = tmp_path / "results"
    process, run = start_run(out)
    wait_for_line(process, "[1/6]")
    assert peer_pids(run), "peers should be running mid-run"
    process.send_signal(signum)
    rest, _ = process.communicate(timeout=120)
    assert process.returncode == 130, rest
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["partial"] is True
    assert json.loads((out / "summary.json").read_text())["partial"] is True
    assert leftovers(run) == []


@needs_root
def test_killed_peer_is_reported_and_the_run_finishes(tmp_path: Path) -> None:
    out = tmp_path / "results"
    process, run = start_run(out)
    wait_for_line(process, "[1/6]")
    victim = sorted(peer_pids(run))[-1]
    os.kill(victim, signal.SIGKILL)
    rest, _ = process.communicate(timeout=300)
    assert process.returncode == 1, rest
    verdicts = {v["metric"]: v for v in json.loads((out / "verdicts.json").read_text())["verdicts"]}
    assert verdicts["peers_lost"]["passed"] is False and verdicts["peers_lost"]["measured"] == 1
    lab_errors = json.loads((out / "summary.json").read_text())["errors"]["lab"]
    assert any("exited with status -9" in str(e["error"]) for e in lab_errors), lab_errors
    assert leftovers(run) == []


@needs_root
def test_a_stopped_peer_is_declared_hung_and_the_run_finishes(tmp_path: Path) -> None:
    """A host process that stops answering (SIGSTOP: alive, silent) is lost within the hang limit
    with that cause, killed, and the run goes on to its end."""
    out = tmp_path / "results"
    process, run = start_run(out)
    wait_for_line(process, "[1/6]")
    victim = sorted(peer_pids(run))[-1]
    os.kill(victim, signal.SIGSTOP)
    stopped = time.monotonic()
    rest, _ = process.communicate(timeout=300)
    assert process.returncode == 1, rest
    verdicts = {v["metric"]: v for v in json.loads((out / "verdicts.json").read_text())["verdicts"]}
    assert verdicts["peers_lost"]["measured"] == 1
    lab_errors = json.loads((out / "summary.json").read_text())["errors"]["lab"]
    (hung,) = [e for e in lab_errors if e["phase"] == "run"]  # the loss; the call it was in failed with it
    assert hung["error"].startswith("hung: its host process sent nothing for "), lab_errors
    silent = float(hung["error"].split("nothing for ")[1].split("s")[0])
    assert HANG_MIN_S <= silent < time.monotonic() - stopped, hung  # after the limit (30 s), printed to 0.1 s
    assert not psutil.pid_exists(victim) and leftovers(run) == []


@needs_root
def test_a_full_results_disk_stops_the_run_with_one_line_and_leaves_what_it_wrote_readable(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], check=True)
    try:
        out = disk / "results"
        process, run = start_run(out)
        rest, _ = process.communicate(timeout=300)
        assert process.returncode == 2, rest
        last = rest.strip().splitlines()[-1]
        assert last.startswith(f"Error: {out}") and "No space left on device" in last and "another --out" in last, rest
        assert "Traceback" not in rest
        assert leftovers(run) == []
        assert read_manifest(out).partial  # the manifest as last written: a partial run
        assert read_jsonl(out / "events.jsonl")  # every complete line reads; one cut short is skipped
    finally:
        subprocess.run(["umount", str(disk)], check=True)


@needs_root
def test_two_runs_at_once_each_work_on_their_own(tmp_path: Path) -> None:
    first, first_run = start_run(tmp_path / "a")
    second, second_run = start_run(tmp_path / "b")
    outputs = [process.communicate(timeout=600)[0] for process in (first, second)]
    assert first_run != second_run
    for process, output, out in zip((first, second), outputs, (tmp_path / "a", tmp_path / "b"), strict=True):
        assert process.returncode in (0, 1, 4), output
        assert read_manifest(out).status == "complete", output
    assert leftovers(first_run) == leftovers(second_run) == []


@needs_root
@pytest.mark.parametrize("line", ["[peers]", "[1/6]", "[2N]", "[lab] own CPU"])
def test_lab_clean_removes_what_a_killed_orchestrator_left(tmp_path: Path, line: str) -> None:
    """SIGKILL once the peers started (bootstrap), mid-workload, in the 2N check, and once the
    network is gone while the results and the report are written: `lab clean` leaves nothing,
    the directory reads and says what it is, and the next run works."""
    process, run = start_run(tmp_path / "results")
    wait_for_line(process, line)
    process.kill()
    process.wait(timeout=30)
    deadline = time.monotonic() + 15
    while peer_pids(run) and time.monotonic() < deadline:  # peers die with their parent (PDEATHSIG)
        time.sleep(0.2)
    assert peer_pids(run) == []
    built = any(item.startswith(runid.PREFIX) for item in leftovers(run))
    assert built == (line != "[lab] own CPU"), leftovers(run)  # the network is undone before the results are written
    done = run_lab("clean")
    assert done.returncode == 0
    assert (f"run {run}: removed namespace {runid.RunId(run).hub_netns}" in done.stdout) == built, done.stdout
    assert leftovers(run) == []
    manifest = read_manifest(tmp_path / "results")  # the killed run says so: partial, not "running"
    if manifest.status != "complete":  # killed before the manifest's last word
        assert manifest.status == "killed" and manifest.partial and f"run {run}: marked" in done.stdout, done.stdout
    assert run_lab("report", str(tmp_path / "results")).returncode in (0, 1, 4)  # and it still reads
    assert run_lab("run", str(TINY), "--quick", "--out", str(tmp_path / "next")).returncode in (0, 1, 4)


@needs_root
def test_report_opens_in_a_real_browser_with_every_image_and_the_runs_verdicts(netns_run: tuple) -> None:
    """lab run wrote report.html; Debian's chromium (installed by install.sh --test) loads it
    from disk, with no server, and shows what verdicts.json says."""
    from selenium.webdriver.common.by import By

    _, out = netns_run
    assert {p.name for p in (out / "plots").iterdir()} >= {"latency_cdf.png", "latency_cdf.svg", "memory_over_time.png"}
    with chromium() as browser:
        browser.get((out / "report.html").resolve().as_uri())
        images = browser.execute_script("return Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
        rows = browser.find_elements(By.CSS_SELECTOR, "#verdicts tr")[1:]
        shown = [[cell.text for cell in row.find_elements(By.TAG_NAME, "td")[:2]] for row in rows]
    assert len(images) >= 5 and all(complete and width > 0 for complete, width in images), images
    verdicts = json.loads((out / "verdicts.json").read_text())["verdicts"]
    assert shown == [[v["status"].upper(), v["metric"]] for v in verdicts]


@needs_root
def test_report_with_compare_adds_the_table_and_overlaid_distributions(netns_run: tuple, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from lab.cli import main

    _, out = netns_run
    run = shutil.copytree(out, tmp_path / "run")
    result = CliRunner().invoke(main, ["report", str(run), "--compare", str(out)])
    assert result.exit_code == 0, result.output
    closing = [line for line in result.output.splitlines()[:-1] if line.strip()]  # all but the report's path
    done, _ = netns_run
    assert closing and all(line in done.stdout.splitlines() for line in closing)  # what lab run printed at its end
    assert any("wall / bound" in line for line in closing)
    page = (run / "report.html").read_text()
    assert 'id="comparison"' in page and 'id="figure-compare_cdf"' in page and (run / "plots" / "compare_cdf.svg").exists()
    assert "within noise" in page  # a run against itself changes nothing
    bad = CliRunner().invoke(main, ["report", str(run), "--compare", str(tmp_path)])
    assert bad.exit_code == 2 and f"{tmp_path}/manifest.json: cannot read" in bad.output and len(bad.output.splitlines()) == 1


@needs_root
def test_forked_peers_run_and_a_killed_one_is_reported(tmp_path: Path) -> None:
    """network.peer_hosting: fork: the peers are children of one fork server, and the fleet
    still learns each exit status from it."""
    topology = write_topology(tmp_path / "fork.yaml", network={"peer_hosting": "fork"})
    out = tmp_path / "results"
    process, run = start_run(out, topology)
    wait_for_line(process, "[1/6]")
    servers = [p for p in map(psutil.Process, peer_pids(run)) if p.children()]
    assert len(servers) == 1 and len(servers[0].children()) == 6, servers
    os.kill(servers[0].children()[-1].pid, signal.SIGKILL)
    rest, _ = process.communicate(timeout=300)
    assert process.returncode == 1, rest
    lab_errors = json.loads((out / "summary.json").read_text())["errors"]["lab"]
    assert any("exited with status -9" in str(e["error"]) for e in lab_errors), lab_errors
    assert json.loads((out / "manifest.json").read_text())["peers_ready"] == 6
    assert leftovers(run) == []


@needs_root
def test_a_killed_host_loses_its_peers_and_only_them(tmp_path: Path) -> None:
    """network.peers_per_host: 3: six peers in two forked hosts; one host killed, its three
    peers are reported lost with the exit status, the other three finish the workload."""
    topology = write_topology(tmp_path / "hosts.yaml", network={"peer_hosting": "fork", "peers_per_host": 3,
                                                                "deployed_peer": False})
    out = tmp_path / "results"
    process, run = start_run(out, topology)
    wait_for_line(process, "[1/6]")
    server = next(p for p in map(psutil.Process, peer_pids(run)) if p.children())
    hosts = server.children()
    assert len(hosts) == 2, hosts
    os.kill(hosts[-1].pid, signal.SIGKILL)
    rest, _ = process.communicate(timeout=300)
    assert process.returncode == 1, rest
    manifest = json.loads((out / "manifest.json").read_text())
    killed = [p for p in manifest["peers"] if p["pid"] == hosts[-1].pid]
    assert len(killed) == 3 and all("exited with status -9" in p["lost"] for p in killed), manifest["peers"]
    survivors = [p for p in manifest["peers"] if p["pid"] != hosts[-1].pid]
    assert len({p["netns"] for p in survivors}) == 1 and all(p["lost"] is None for p in survivors)
    assert manifest["peers_ready"] == 6 and manifest["peers_lost"] == 3 and manifest["status"] == "complete"
    assert len(list((out / "logs").glob("host-*.stderr"))) == 2
    assert leftovers(run) == []


def test_a_bootstrap_peer_at_its_inbound_limit_refuses_the_next_joiner(tmp_path: Path) -> None:
    """connections.max_inbound reaches py-libp2p's resource manager: with 1, the one bootstrap
    peer keeps the first joiner's connection and refuses the second's (the dialler is not told:
    its connect returns), and the run counts the refusal among the peers' log warnings."""
    topology = write_topology(
        tmp_path / "inbound.yaml",
        groups=[{"name": "peers", "count": 3}],
        bootstrap={"peers": 1, "dials": 1, "min_routing_table": 0},
        libp2p={"connections": {"max_inbound": 1}},
        network={"mode": "loopback"},
        workload=[{"phase": "bootstrap", "concurrency": 1}],
        slas=[],
    )
    out = tmp_path / "results"
    done = run_lab("run", str(topology), "--out", str(out), "--no-report")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Established inbound limit exceeded: 1 >= 1" in (out / "logs" / "host-0000.stderr").read_text()
    warnings = json.loads((out / "summary.json").read_text())["errors"]["peer_logs"]["top"]
    assert any("Established inbound limit exceeded" in w["message"] and w["count"] >= 1 for w in warnings), warnings


def test_a_run_whose_peers_never_start_stops_with_their_causes(tmp_path: Path) -> None:
    """network.start_timeout shorter than any interpreter's start: no peer says hello in time,
    so no phase runs; the run fails with each peer's cause instead of crashing in a phase."""
    topology = write_topology(tmp_path / "late.yaml", network={"mode": "loopback", "start_timeout": "1ms"})
    out = tmp_path / "results"
    done = run_lab("run", str(topology), "--out", str(out), "--no-report")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "no hello within" in done.stdout and "[run] no live peer: phases 1-6 not run" in done.stdout, done.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["peers_ready"] == 0 and manifest["phases"] == []
    verdicts = json.loads((out / "verdicts.json").read_text())["verdicts"]
    assert any(v["metric"] == "peers_ready" and not v["passed"] for v in verdicts), verdicts
    assert leftovers(run_id_of(done.stdout)) == []


@needs_root
def test_auto_dilation_doubles_until_joins_measured_again_hold(tmp_path: Path) -> None:
    """time_dilation: auto: an estimate from a pilot, then pilots whose 2N check joins peers again at
    N and 2N, doubling N until the joins no longer move; the run then goes at that N."""
    topology = write_topology(tmp_path / "auto.yaml", network={"time_dilation": "auto"},
                              groups=[{"name": "peers", "count": 6, "link": {"delay": "20ms"}}], fidelity={"rerun": 10},
                              workload=[{"phase": "bootstrap", "concurrency": 2}],
                              slas=[{"metric": "bootstrap", "stat": "p50", "op": "<", "threshold": "60s"}])
    out = tmp_path / "results"
    done = run_lab("run", str(topology), "--out", str(out), "--no-report")
    assert done.returncode in (0, 4), done.stdout + done.stderr
    checks = [line for line in done.stdout.splitlines() if line.startswith("[calibration] the 2N check of 6 peers")]
    assert checks, done.stdout
    dilation = read_manifest(out).time_dilation
    assert dilation.reason.startswith("auto: a pilot of 6 peers") and "measured again at twice it" in dilation.reason
    tried = [float(line.split("dilation ")[-1]) for line in checks]
    assert dilation.network == tried[-1] and all(b == 2 * a for a, b in itertools.pairwise(tried))
    n = dilation.network
    assert dilation.later == (n, n, 2 * n, 2 * n, n)  # the run's own 2N check of its bootstrap
    assert leftovers(run_id_of(done.stdout)) == []
