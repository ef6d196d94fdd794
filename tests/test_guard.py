"""The fidelity guard, end to end, on a machine made slow for real: the peers' host processes
confined to a sliver of the CPU by a cgroup quota (`network.cpu_limit`), ten peers behind 40 ms
links (the scale model of bench/time_dilation.py, with the 1000-peer topology's delay between
regions).

Undilated, the confined peers' latencies are mostly waiting for that sliver: the guard must
call them inconclusive (exit 4) and say that a time dilation above 1 would be needed. At a
sufficient dilation the same confinement gives conclusive verdicts. Sufficient, measured: at
0.1 cores a host's timers ran up to ~200 ms late in real time (the quota's periods and
py-libp2p's CPU steps), so at 40 at most 5 ms in virtual time; a `get` over 20 ms links took
a median 136 ms at 40, so over 40 ms links about twice that, of which the guard allows 5%:
~13 ms.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, needs_cpu_controller, needs_root, run_lab, write_topology
from lab import exits

pytestmark = [pytest.mark.slow, pytest.mark.netns, needs_root, pytest.mark.timeout(1800)]

MODEL = ROOT / "bench" / "time-dilation-30.yaml"
CORES = 0.25  # an eighth of our 2-core machines
SUFFICIENT = 16  # the module's docstring says why
# Small, because at a sufficient dilation every wait on a link takes 16 times its real length:
# a warm start with two peers joining cold, one package, one get per peer, and ten of each kind
# measured again by the 2N check.
BOOTSTRAP = {"peers": 4, "dials": 2, "min_routing_table": 3, "mode": "warm", "sample": 2}
WORKLOAD = [
    {"phase": "bootstrap", "concurrency": 2, "timeout": "300s"},
    {"phase": "publish", "packages": 1, "concurrency": 1, "announce": False, "timeout": "300s"},
    {"phase": "lookup", "per_peer": 2, "concurrency": 2, "timeout": "300s"},
]
SLAS = [{"metric": "get", "stat": "p50", "op": "<", "threshold": "60s"}]


def run(tmp_path: Path, dilation: float, cores: float | None) -> tuple[int, dict[str, Any], float]:
    """One run on `cores` (None: the whole machine) at `dilation`; its exit code, the `get`
    verdict and the get median (ms)."""
    name = f"dilation-{dilation:g}-cores-{cores}"
    path = write_topology(tmp_path / f"{name}.yaml", MODEL, total=10, groups=[{"name": "peers", "percent": 100,
                          "link": {"delay": "40ms"}}], bootstrap=BOOTSTRAP, workload=WORKLOAD, slas=SLAS,
                          fidelity={"rerun": 10},
                          network={"peer_hosting": "fork", "peers_per_host": 5, "deployed_peer": False, "cpu_limit": cores,
                                   "time_dilation": dilation, "start_timeout": "300s"})
    out = tmp_path / name
    done = run_lab("run", str(path), "--out", str(out), "--no-report", timeout=1500)
    verdicts = json.loads((out / "verdicts.json").read_text())["verdicts"]
    p50 = json.loads((out / "summary.json").read_text())["metrics"]["get"]["p50"]
    return done.returncode, next(v for v in verdicts if v["metric"] == "get"), p50


@needs_cpu_controller
def test_a_confined_machine_is_inconclusive_until_time_is_dilated_enough(tmp_path: Path) -> None:
    _, _, uncontended = run(tmp_path, 1, None)

    code, verdict, _ = run(tmp_path, 1, CORES)
    assert code == exits.INCONCLUSIVE and verdict["status"] == "inconclusive", verdict
    needed = verdict["guard"]["dilation_needed"]
    assert needed is not None and needed > 1, verdict
    moved = verdict["rerun"]  # the gets measured again at twice the dilation were quicker: they had queued
    assert moved["moves"] and moved["moves"][0]["move"] < -moved["moves"][0]["tolerance"], moved

    code, verdict, p50 = run(tmp_path, SUFFICIENT, CORES)
    assert code == exits.PASS and verdict["status"] == "pass", verdict
    assert verdict["guard"]["conclusive"] and verdict["guard"]["lag_p99_ms"] <= verdict["guard"]["limit_ms"]
    assert verdict["rerun"]["conclusive"], verdict["rerun"]["reason"]
    assert abs(p50 - uncontended) <= 0.10 * uncontended, (p50, uncontended)
