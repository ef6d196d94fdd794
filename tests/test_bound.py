"""The CPU bound on hand-made records whose answer is known: processes burning CPU at set rates,
a dilated clock, phases of set lengths."""

import pytest

from conftest import event
from lab.analysis.bound import bounds
from lab.analysis.figures import bound_metrics
from lab.events import Sample
from lab.metric_names import BOUND_RATIO, CPU_BOUND, LAB_SHARE, higher_is_better, unit_of
from nodes.protocol import Dilation

SECOND = 1_000_000_000
FACTOR = 4.0  # events and samples are on the run's clock, 4 times slower than the machine's


def sample(real_s: float, pid: int, role: str, cpu: float) -> Sample:
    return Sample.of({"t_ns": round(real_s / FACTOR * SECOND), "sweep": 0, "role": role, "peers": [pid] if role == "peer" else [],
                      "pid": pid, "rss": 1, "cpu_user": cpu, "cpu_system": 0.0})


def window(op: str, start_real_s: float, end_real_s: float, **fields: object) -> object:
    start = round(start_real_s / FACTOR * SECOND)
    return event(op, (end_real_s - start_real_s) / FACTOR * 1e3, peer=None, start_ns=start, **fields)


def test_each_window_is_its_cpu_seconds_over_the_cores_against_its_machine_time() -> None:
    # A host burning 1.5 CPU-s per second from the start, the delay line 0.25; a second host born at
    # 40 s (machine time) that had burnt 2 CPU-s before its first sample and 1 per second after it.
    samples = [sample(t, 1, "peer", 1.5 * t) for t in range(0, 101, 10)]
    samples += [sample(t, 2, "delay_line", 0.25 * t) for t in range(0, 101, 10)]
    samples += [sample(t, 3, "peer", 2 + (t - 40)) for t in range(40, 101, 10)]
    events = [window("run_started", 0, 0), window("phase", 10, 30, phase="bootstrap", number=1, cpu_busy=0.9),
              window("phase", 50, 90, phase="lookup", number=2), window("rerun", 90, 100, phase="lookup")]
    run, first, second = bounds(events, samples, Dilation(FACTOR), cores=2)

    assert (run.label, first.label, second.label) == ("run", "1 bootstrap", "2 lookup")
    assert run.wall_s == pytest.approx(100) and first.wall_s == pytest.approx(20) and second.wall_s == pytest.approx(40)
    # the run counts the late host from its birth: 150 + 2 + 60 peer CPU-s, 25 of the delay line's
    assert run.cpu_s == pytest.approx({"delay_line": 25.0, "peer": 212.0})
    assert run.bound_s == pytest.approx(237 / 2) and run.ratio == pytest.approx(100 / 118.5)
    assert first.cpu_s == pytest.approx({"delay_line": 5.0, "peer": 30.0}) and first.ratio == pytest.approx(20 / 17.5)
    assert (run.busy, first.busy, second.busy) == (None, 0.9, None)  # a phase carries the busy share it was run at
    assert second.cpu_s == pytest.approx({"delay_line": 10.0, "peer": 60.0 + 40.0})
    assert second.bound_s == pytest.approx(55.0)

    metrics = bound_metrics([run, first, second])
    assert metrics[CPU_BOUND].values == [pytest.approx(118.5)] and unit_of(CPU_BOUND) == "second"
    assert metrics[BOUND_RATIO].values == [pytest.approx(100 / 118.5)] and unit_of(BOUND_RATIO) == "dimensionless"
    assert not higher_is_better(BOUND_RATIO)  # a rise of wall over bound is a regression in compare and history
    assert run.lab_share == pytest.approx(25 / 237) and first.lab_share == pytest.approx(5 / 35)
    assert metrics[LAB_SHARE].values == [pytest.approx(25 / 237)] and unit_of(LAB_SHARE) == "dimensionless"
    assert not higher_is_better(LAB_SHARE)


def test_no_samples_no_phases_or_no_core_count_give_no_bound() -> None:
    samples = [sample(t, 1, "peer", t) for t in (0, 10)]
    phase = window("phase", 0, 10, phase="lookup", number=1)
    assert bounds([phase], [], Dilation(FACTOR), 2) == []
    assert bounds([], samples, Dilation(FACTOR), 2) == []
    assert bounds([phase], samples, Dilation(FACTOR), None) == []
    assert bound_metrics([]) == {}


def test_cpu_is_spread_over_the_machine_s_time_across_a_change_of_factor() -> None:
    # One process burning 1 CPU-s per second of the machine's time, sampled at 0 and 20 s; the
    # clock's factor goes from 1 to 10 at 10 s, so the second phase is 1 s of the run's time.
    dilation = Dilation(1.0)
    dilation.switch(10.0, 10 * SECOND, 10 * SECOND)
    samples = [Sample.of({"t_ns": dilation.virtual_ns(t * SECOND), "sweep": 0, "role": "peer", "peers": [0], "pid": 1,
                          "rss": 1, "cpu_user": float(t), "cpu_system": 0.0}) for t in (0, 20)]
    events = [event("phase", 10_000, peer=None, start_ns=0, phase="search", number=1),
              event("phase", 1_000, peer=None, start_ns=10 * SECOND, phase="gossip", number=2)]
    _, search, gossip = bounds(events, samples, dilation, cores=1)
    assert search.wall_s == pytest.approx(10) and gossip.wall_s == pytest.approx(10)
    assert search.cpu_s["peer"] == pytest.approx(10) and gossip.cpu_s["peer"] == pytest.approx(10)
    assert search.ratio == pytest.approx(1) and gossip.ratio == pytest.approx(1)  # on the run's clock: 18.2 and 1.8


def test_cpu_per_operation_is_interpolated_on_the_machine_s_clock() -> None:
    """A gossip phase at a high factor lasts a moment of the run's time but minutes of the machine's:
    the peers' CPU in it, between samples taken around it, follows the machine's time."""
    from lab.analysis.metrics import cpu_per_operation

    dilation = Dilation(1.0)
    dilation.switch(10.0, 10 * SECOND, 10 * SECOND)  # the gossip phase: 10 s of the machine's time, 1 s of the run's
    samples = [Sample.of({"t_ns": dilation.virtual_ns(t * SECOND), "sweep": 0, "role": "peer", "peers": [0], "pid": 1,
                          "rss": 1, "cpu_user": float(t), "cpu_system": 0.0}) for t in (0, 20)]
    phase = event("phase", 1_000, peer=None, start_ns=10 * SECOND, phase="gossip", number=1)
    deliveries = [event("gossip_delivery", 1, start_ns=10 * SECOND + i) for i in range(5)]
    per = cpu_per_operation([phase, *deliveries], samples, dilation.real_ns)["cpu_s_per_delivery"]
    assert per.values == [pytest.approx(10 / 5)]  # on the run's clock 20 / 11 CPU-s, ten times too little
