"""Virtual time that follows the load (lab/governor.py): the rule that switches the factor, what
the governor pools, and waits that follow a switch made while they wait."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, TINY, needs_cpu_controller, needs_root, run_lab
from lab.analysis.guard import Lag
from lab.governor import Governor, Reading, next_factor
from lab.topology import AdaptiveDilation, load_topology
from lab.workload.barrier import Deliveries
from lab.workload.phases import Workload
from nodes.protocol import LAG_BINS_MS, LOOP_LAG, Dilation, Event, Op

ADAPTIVE = ROOT / "tests" / "topologies" / "adaptive.yaml"
POLICY = AdaptiveDilation(lowest=1, highest=64, raise_share=0.5, lower_share=0.1, idle_busy=0.5, hold="10s")


def lag(p99_ms: float, windows: int = 4) -> Lag:
    """Windows whose wake-ups were all late by about `p99_ms` (its bin)."""
    counts = [0] * (len(LAG_BINS_MS) + 1)
    counts[next(i for i, edge in enumerate(LAG_BINS_MS) if edge >= p99_ms)] = 100
    return Lag.of(counts, windows)


def reading(factor: float = 4, p99_ms: float | None = 1, windows: int = 4, median_ms: float | None = 200,
            busy: float = 0.9, held_s: float = 3) -> Reading:
    return Reading(factor, lag(p99_ms, windows) if p99_ms is not None else Lag.of([0] * (len(LAG_BINS_MS) + 1), 0),
                   median_ms, busy, held_s)


def test_the_factor_doubles_when_the_lag_eats_into_the_guards_allowance() -> None:
    # a 200 ms median allows 10 ms of lag p99 (5%); half of it raises
    step = next_factor(reading(p99_ms=10), POLICY)
    assert step is not None and step[0] == 8 and "loop lag p99 10 ms" in step[1]
    assert next_factor(reading(p99_ms=5), POLICY) is None, "5 ms is half the allowance: not over it"
    assert next_factor(reading(p99_ms=10, windows=1), POLICY) is None, "one window is not evidence"
    assert next_factor(reading(p99_ms=10, median_ms=None), POLICY) is None, "no operation yet: no allowance"
    assert next_factor(reading(factor=48, p99_ms=10), POLICY)[0] == 64  # type: ignore[index]
    assert next_factor(reading(factor=64, p99_ms=10), POLICY) is None, "never above highest"


def test_the_factor_halves_only_on_a_calm_idle_machine_held_long_enough() -> None:
    idle = {"busy": 0.2, "held_s": 12}
    step = next_factor(reading(p99_ms=0.5, **idle), POLICY)
    assert step is not None and step[0] == 2 and "20% busy" in step[1]
    assert next_factor(reading(p99_ms=None, **idle), POLICY)[0] == 2  # type: ignore[index]  # no lag measured since the switch
    assert next_factor(reading(p99_ms=2, **idle), POLICY) is None, "2 ms is in the hysteresis gap (1..5 ms)"
    assert next_factor(reading(p99_ms=0.5, busy=0.6, held_s=12), POLICY) is None, "busy"
    assert next_factor(reading(p99_ms=0.5, busy=0.2, held_s=9), POLICY) is None, "switched too recently"
    assert next_factor(reading(factor=1, p99_ms=0.5, **idle), POLICY) is None, "never below lowest"
    assert next_factor(reading(factor=1.5, p99_ms=0.5, **idle), POLICY)[0] == 1  # type: ignore[index]
    assert next_factor(reading(factor=8, p99_ms=0.5, **idle), POLICY, floor=6)[0] == 6  # type: ignore[index]
    assert next_factor(reading(factor=6, p99_ms=0.5, **idle), POLICY, floor=6) is None, \
        "a phase's own factor is its floor: it was chosen for the load the phase starts"
    assert next_factor(reading(factor=6, p99_ms=10), POLICY, floor=6)[0] == 12  # type: ignore[index]  # raised above it


def test_a_policy_needs_its_hysteresis() -> None:
    with pytest.raises(ValueError, match="lower_share"):
        AdaptiveDilation(raise_share=0.2, lower_share=0.3)
    with pytest.raises(ValueError, match="lowest"):
        AdaptiveDilation(lowest=8, highest=4)


def test_the_governor_pools_lag_since_the_switch_and_latencies_of_waits_only() -> None:
    async def never(factor: float, why: str) -> Any:
        raise AssertionError("no switch here")

    governor = Governor(POLICY, lambda: 4.0, lambda: 1000, never)
    governor._restart(1000, time.monotonic_ns())
    counts = [0] * (len(LAG_BINS_MS) + 1)
    counts[LAG_BINS_MS.index(20)] = 10
    governor.hear(Event(LOOP_LAG, 0, 500, 1500, True, details={"counts": counts}))  # began before the switch
    governor.hear(Event(LOOP_LAG, 0, 1500, 2500, True, details={"counts": [1] + [0] * len(LAG_BINS_MS)}))
    governor.hear(Event(Op.DHT_LOOKUP, 3, 0, 300_000_000, True))
    governor.hear(Event(Op.SEARCH_CACHE_HIT, 3, 0, 900_000_000, True))  # answered without a wait: not a latency
    governor.hear(Event(Op.DHT_LOOKUP, 3, 0, 900_000_000, False))  # failed
    governor._sample_cpu()
    got = governor.reading()
    assert got.lag.windows == 1 and got.lag.p99_ms == LAG_BINS_MS[0]
    assert got.median_ms == pytest.approx(300)


def test_a_wait_follows_a_switch_made_while_it_waits() -> None:
    """A gossip interval or an idle phase is the run's time: a factor lowered while it waits
    shortens what is left of it on the machine's clock."""
    dilation = Dilation(8.0, ceiling=8.0)
    dilation.start()
    work = Workload(load_topology(TINY), None, print, Deliveries(), dilation, print)  # type: ignore[arg-type]

    async def scenario() -> float:
        started = dilation.now_ns()
        waiting = asyncio.create_task(work.sleep(0.5))  # 4 s of the machine's time at 8
        await asyncio.sleep(0.2)
        dilation.switch(1.0, time.monotonic_ns(), time.time_ns())
        work.retimed.set()
        await waiting
        return (dilation.now_ns() - started) / 1e9

    waited = asyncio.run(scenario())
    assert 0.5 <= waited < 1.0, f"{waited:.3f} s of the run's time: the wait kept its first schedule (3.8 s more)"
    assert dilation.real_bound_s(10) == 80, "a timeout covers the highest factor the run may reach"


@needs_root
@needs_cpu_controller
def test_the_factor_rises_under_load_and_falls_back_when_it_ends(tmp_path: Path) -> None:
    """Six peers confined to a fifth of a core join and fetch at once (their timers run late),
    then rest: the governor raises the factor while they work and lowers it while they rest;
    each phase is judged at the highest factor in force during it."""
    out = tmp_path / "results"
    result = run_lab("run", str(ADAPTIVE), "--out", str(out), "--no-report", timeout=900)
    assert result.returncode in (0, 4), result.stdout[-3000:] + result.stderr[-3000:]
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    phases = {e["phase"]: e for e in events if e["op"] == "phase"}
    switches = [e for e in events if e["op"] == "time_dilation"]
    loaded = [phases[name] for name in ("bootstrap", "publish", "lookup")]

    def during(phase: dict[str, Any]) -> list[dict[str, Any]]:
        return [s for s in switches if phase["start_ns"] <= s["start_ns"] <= phase["end_ns"]]

    rises = [s for p in loaded for s in during(p) if s["to"] > s["from"]]
    assert rises, f"no raise while loaded: {switches}"
    assert all("loop lag p99" in s["why"] for s in rises)
    falls = [s for s in during(phases["idle"]) if s["to"] < s["from"]]
    assert falls and all("busy over" in s["why"] for s in falls), f"no fall while idle: {switches}"
    segments = json.loads((out / "manifest.json").read_text())["time_dilation"]["segments"]

    def highest(phase: dict[str, Any]) -> float:
        ends = [s["virtual_ns"] for s in segments[1:]] + [phase["end_ns"] + 1]
        return max(s["factor"] for s, end in zip(segments, ends, strict=True)
                   if s["virtual_ns"] <= phase["end_ns"] and end > phase["start_ns"])

    assert all(p["time_dilation"] == highest(p) for p in phases.values())
    assert max(p["time_dilation"] for p in loaded) > 1
    assert falls[-1]["to"] < max(s["to"] for s in rises)
    verdict = next(v for v in json.loads((out / "verdicts.json").read_text())["verdicts"] if v["metric"] == "get")
    assert verdict["guard"] is not None and "lookup" in verdict["guard"]["phases"]
