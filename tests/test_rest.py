"""A gossip phase with its own factor rests between announcements (lab/workload/phases.py
`_between`): once a message has reached every peer, the rest of the interval passes at a low
factor, and the phase's comes back before the next send, which keeps its schedule; the peers'
loop-lag windows end at each switch (nodes/lag.py), so a rest's lag is in no message's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conftest import needs_root, run_lab, write_topology

FACTOR, INTERVAL_S, ANNOUNCEMENTS = 40.0, 1.0, 3
WORKLOAD = [
    {"phase": "bootstrap"},
    {"phase": "publish", "packages": 6, "body_size": "4KiB"},
    {"phase": "gossip", "announcements": ANNOUNCEMENTS, "interval": f"{INTERVAL_S:g}s", "settle": "3s",
     "time_dilation": FACTOR},
]

SLA = {"metric": "gossip_delivery", "stat": "p95", "op": "<=", "threshold": "3s"}  # so that the guard judges gossip


def _factors(segments: list[dict[str, Any]], start_ns: int, end_ns: int) -> set[float]:
    """The factors in force at some instant from `start_ns` to `end_ns` (the run's clock)."""
    ends = [s["virtual_ns"] for s in segments[1:]] + [end_ns + 1]
    return {s["factor"] for s, end in zip(segments, ends, strict=True) if s["virtual_ns"] <= end_ns and end > start_ns}


@needs_root
def test_a_gossip_phase_rests_between_announcements_and_keeps_its_schedule(tmp_path: Path) -> None:
    topology = write_topology(tmp_path / "rest.yaml", workload=WORKLOAD, fidelity={"rerun": 0}, slas=[SLA])
    out = tmp_path / "results"
    done = run_lab("run", str(topology), "--out", str(out), "--no-report", timeout=900)
    assert done.returncode in (0, 1, 4), done.stdout[-3000:] + done.stderr[-3000:]
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    segments = json.loads((out / "manifest.json").read_text())["time_dilation"]["segments"]
    gossip = next(e for e in events if e["op"] == "phase" and e["phase"] == "gossip")
    assert gossip["time_dilation"] == FACTOR  # the highest in force: what the guard judges it at

    switches = [(e["from"], e["to"], e["why"]) for e in events if e["op"] == "time_dilation"]
    rests = switches[0::2]
    assert len(switches) == 2 * (ANNOUNCEMENTS - 1), switches
    assert all(was == FACTOR and to < FACTOR / 2 and why == "rest between announcements" for was, to, why in rests)
    assert switches[1::2] == [(to, FACTOR, "the next announcement") for _, to, _ in rests]

    during = [e for e in events if gossip["start_ns"] <= e["start_ns"] <= gossip["end_ns"]]
    sends = sorted(e["start_ns"] for e in during if e["op"] == "gossip_publish")
    gaps = [(b - a) / 1e9 for a, b in zip(sends, sends[1:], strict=False)]
    assert len(sends) == ANNOUNCEMENTS and all(INTERVAL_S <= gap <= INTERVAL_S + 0.1 for gap in gaps), gaps
    deliveries = [e for e in during if e["op"] == "gossip_delivery"]
    assert len(deliveries) == ANNOUNCEMENTS * 5 and all(e["ok"] for e in deliveries)
    assert all(_factors(segments, e["start_ns"], e["end_ns"]) == {FACTOR} for e in deliveries)

    instants = [s["virtual_ns"] for s in segments[1:]]  # a loop-lag window ends at a switch: none spans one
    lags = [e for e in events if e["op"] == "loop_lag"]
    assert lags and not [(e, t) for e in lags for t in instants if e["start_ns"] < t < e["end_ns"]]

    verdicts = {v["metric"]: v for v in json.loads((out / "verdicts.json").read_text())["verdicts"]}
    guard = verdicts["gossip_delivery"]["guard"]
    assert guard is not None and "gossip" in guard["phases"], verdicts["gossip_delivery"]  # publish announces too
