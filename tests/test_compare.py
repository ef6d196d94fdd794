"""`lab compare`: the decision rule on data with known truth (seeded simulations), tails and
failures, the fidelity guard, damaged inputs, and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import strict_json_loads
from lab.analysis.compare import MetricData, compare_sides
from lab.cli import main

ALPHA, NOISE = 0.05, 0.03


def latencies(values: np.ndarray, failures: int = 0, doubt: str | None = None) -> MetricData:
    return MetricData("millisecond", list(values), len(values) + failures, failures, None, doubt)


def run_medians(values: np.ndarray) -> MetricData:
    return MetricData("millisecond", list(values), len(values), 0, list(values * 1.5), None)


def names(count: int) -> list[str]:
    return ["get"] + [f"concurrent_search_{i}" for i in range(1, count)]


def regressed_share(shift: float, trials: int, metrics: int, level: str, size: int, log_sd: float, seed: int = 0) -> float:
    """Share of trials in which some metric was called regressed; only `get` is shifted."""
    hits = 0
    for trial in range(trials):
        rng = np.random.default_rng(seed * 100_000 + trial)
        make = run_medians if level == "runs" else latencies
        base = {n: make(rng.lognormal(3, log_sd, size)) for n in names(metrics)}
        cand = {n: make(rng.lognormal(3, log_sd, size) * (1 + (shift if n == "get" else 0))) for n in names(metrics)}
        results = compare_sides(base, cand, NOISE, ALPHA, level, frozenset({"get"}), seed=trial)  # type: ignore[arg-type]
        hits += any(c.verdict == "regressed" for c in results)
    return hits / trials


@pytest.mark.parametrize(("level", "size", "log_sd"), [("samples", 200, 0.25), ("runs", 6, 0.08)])
@pytest.mark.parametrize("metrics", [1, 20])
def test_identical_inputs_are_called_regressed_at_most_alpha_of_the_time(level: str, size: int, log_sd: float,
                                                                        metrics: int) -> None:
    assert regressed_share(0.0, 100 if metrics == 1 else 60, metrics, level, size, log_sd) <= ALPHA


def test_a_one_percent_change_under_a_three_percent_band_is_rarely_regressed() -> None:
    # n = 1000 per side measures the change tightly: the interval sits around +1%, inside the band
    assert regressed_share(0.01, 100, 1, "samples", 1000, 0.25, seed=1) <= 0.05


def test_power_at_sample_level_is_kept_a_ten_percent_slowdown_at_n_200() -> None:
    assert regressed_share(0.10, 100, 1, "samples", 200, 0.25, seed=2) >= 0.78


def test_a_big_clean_change_is_found_at_run_level_beside_many_metrics() -> None:
    """+20%, runs that do not even overlap, 24 metrics: found every time (a rank test's p-value
    floor of 2/924 with six runs, times 24, never could)."""
    assert regressed_share(0.20, 40, 24, "runs", 6, 0.03, seed=3) == 1.0


def test_within_noise_needs_the_interval_inside_the_band() -> None:
    rng = np.random.default_rng(4)
    tight = compare_sides({"get": latencies(rng.lognormal(3, 0.1, 2000))}, {"get": latencies(rng.lognormal(3, 0.1, 2000))},
                          NOISE, ALPHA)[0]
    assert tight.verdict == "within noise", tight
    loose = compare_sides({"get": latencies(rng.lognormal(3, 0.8, 20))}, {"get": latencies(rng.lognormal(3, 0.8, 20))},
                          NOISE, ALPHA)[0]
    assert loose.verdict == "unclear", loose  # 20 samples of a wide distribution cannot show ±3%


def test_a_doubled_tail_with_the_same_median_is_a_regression() -> None:
    rng = np.random.default_rng(5)
    base = rng.lognormal(3, 0.2, 600)
    cand = base.copy()
    cand[base > np.percentile(base, 90)] *= 2.5  # the slowest tenth much slower: p95 more than doubles
    result = compare_sides({"get": latencies(base)}, {"get": latencies(cand)}, NOISE, ALPHA)[0]
    assert result.tail is not None and result.tail["verdict"] == "regressed"
    assert result.verdict == "regressed" and "the tail" in result.reason


def test_an_operation_that_newly_fails_is_a_regression_even_when_its_successes_are_fast() -> None:
    rng = np.random.default_rng(6)
    base, fast = rng.lognormal(3, 0.2, 200), rng.lognormal(3, 0.2, 100) * 0.8
    result = compare_sides({"get": latencies(base)}, {"get": latencies(fast, failures=100)}, NOISE, ALPHA)[0]
    assert result.failures is not None and result.failures["candidate"] == 0.5
    assert result.verdict == "regressed" and "fails more: 0.0% -> 50.0%" in result.reason


def test_higher_is_better_for_delivery_ratio() -> None:
    rng = np.random.default_rng(7)
    ratio = "gossip_delivery_ratio"
    base = {ratio: MetricData("dimensionless", list(rng.uniform(0.5, 0.6, 50)), 50, 0)}
    cand = {ratio: MetricData("dimensionless", list(rng.uniform(0.8, 0.9, 50)), 50, 0)}
    assert compare_sides(base, cand, NOISE, ALPHA)[0].verdict == "improved"


def test_what_the_guard_could_not_trust_is_inconclusive() -> None:
    rng = np.random.default_rng(8)
    busy = latencies(rng.lognormal(3, 0.2, 200) * 1.5, doubt="loop lag p99 200 ms > 5% of the median")
    result = compare_sides({"get": latencies(rng.lognormal(3, 0.2, 200))}, {"get": busy}, NOISE, ALPHA)[0]
    assert result.verdict == "inconclusive" and result.change == pytest.approx(0.5, abs=0.1)
    assert result.reason.startswith("candidate: loop lag p99 200 ms")


def test_sides_missing_a_metric_and_too_few_values() -> None:
    few = compare_sides({"get": latencies(np.ones(3))}, {"get": latencies(np.ones(20))}, NOISE, ALPHA)[0]
    assert few.verdict == "not enough samples" and few.p_value is None
    one_sided = compare_sides({"get": latencies(np.ones(20))}, {"fetch": latencies(np.ones(20))}, NOISE, ALPHA)
    assert {r.metric: r.verdict for r in one_sided} == {"fetch": "only in candidate", "get": "only in baseline"}


def test_constant_samples() -> None:
    same = compare_sides({"get": latencies(np.full(40, 7.0))}, {"get": latencies(np.full(40, 7.0))}, NOISE, ALPHA)[0]
    assert same.verdict == "within noise" and same.change == 0.0
    slower = compare_sides({"get": latencies(np.full(40, 10.0))}, {"get": latencies(np.full(40, 12.0))}, NOISE, ALPHA)[0]
    assert slower.verdict == "regressed" and slower.change == pytest.approx(0.2)


def test_a_baseline_centred_on_zero_gives_no_invented_relative_change() -> None:
    zero = compare_sides({"get": latencies(np.r_[np.zeros(20), -np.ones(5), np.ones(5)])},
                         {"get": latencies(np.full(30, 5.0))}, NOISE, ALPHA)[0]
    assert zero.verdict == "unclear" and zero.change is None and "median is 0" in zero.reason


def test_an_unbounded_p95_interval_is_null_with_a_reason_in_strict_json(tmp_path: Path) -> None:
    """At n=40 the order statistics cannot bound a p95 at the family's level: its interval has no
    upper end, which JSON has no number for."""
    rng = np.random.default_rng(5)
    base, cand = (write_run(tmp_path / side, list(rng.lognormal(3, 0.2, 40))) for side in "bc")
    result = CliRunner().invoke(main, ["compare", str(base), str(cand), "--format", "json"])
    (get,) = [c for c in strict_json_loads(result.output)["comparisons"] if c["metric"] == "get"]
    assert get["tail"]["interval"][1] is None and "no upper bound" in get["tail"]["unbounded"]


# -- results directories with known truth ------------------------------------------------------

TOPOLOGY = {"name": "t", "seed": 1, "groups": [{"name": "g", "count": 2}], "workload": [{"phase": "bootstrap"}],
            "slas": [{"metric": "get", "stat": "p95", "op": "<", "threshold": "1s"}]}


def write_run(path: Path, latencies_ms: list[float], failures: int = 0, resources: bool = True,
              status: str = "complete") -> Path:
    path.mkdir(parents=True)
    manifest = {"peers_ready": 2, "status": status, "partial": status != "complete", "topology": TOPOLOGY}
    (path / "manifest.json").write_text(json.dumps(manifest))
    if resources:
        (path / "resources.jsonl").write_text("")
    events = [{"op": "get", "peer": 0, "start_ns": 0, "end_ns": int(ms * 1e6), "ok": True} for ms in latencies_ms]
    events += [{"op": "get", "peer": 1, "start_ns": 0, "end_ns": 5, "ok": False, "error": "x"}] * failures
    (path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


def write_repeat(path: Path, per_run_ms: list[float]) -> Path:
    rng = np.random.default_rng(int(sum(per_run_ms)))
    for number, median in enumerate(per_run_ms, 1):
        write_run(path / f"run-{number}", list(rng.lognormal(np.log(median), 0.05, 30)))
    runs = [{"dir": f"run-{n}", "status": "complete", "exit_code": 0} for n in range(1, len(per_run_ms) + 1)]
    (path / "repeat.json").write_text(json.dumps({"repeats": len(per_run_ms), "runs": runs, "metrics": {}}))
    return path


def test_cli_strict_exits_1_on_regression_speaks_markdown_and_json_says_how(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    base = write_run(tmp_path / "base", list(rng.lognormal(3, 0.1, 200)))
    cand = write_run(tmp_path / "cand", list(rng.lognormal(3, 0.1, 200) * 1.3))
    runner = CliRunner()
    table = runner.invoke(main, ["compare", str(base), str(cand)])
    assert table.exit_code == 0 and "regressed" in table.output and "level: samples" in table.output
    strict = runner.invoke(main, ["compare", str(base), str(cand), "--strict", "--format", "markdown"])
    assert strict.exit_code == 1 and "| get | primary |" in strict.output
    same = runner.invoke(main, ["compare", str(base), str(base), "--strict", "--format", "json"])
    report = json.loads(same.output)
    assert same.exit_code == 0 and report["comparisons"][0]["verdict"] == "within noise"
    assert report["level"] == "samples" and report["baseline"]["samples"] == {"get": 200}
    assert report["adjustment"]["families"] == {"primary": 1, "exploratory": 0} and report["adjustment"]["primary"] == ["get"]
    assert "Benjamini-Hochberg" in report["adjustment"]["method"] and "unclear" in report["verdicts"]


def test_repeated_runs_are_compared_run_by_run(tmp_path: Path) -> None:
    medians = [10.0, 11.0, 10.5, 10.2, 10.8, 10.4]
    base = write_repeat(tmp_path / "base", medians)
    slower = write_repeat(tmp_path / "slower", [m * 1.3 for m in medians])
    result = CliRunner().invoke(main, ["compare", str(base), str(slower), "--format", "json"])
    report = json.loads(result.output)
    assert result.exit_code == 0 and report["level"] == "runs" and report["baseline"]["runs"] == 6
    (get,) = report["comparisons"]
    assert (get["baseline"]["n"], get["candidate"]["n"]) == (6, 6) and get["verdict"] == "regressed"
    single = write_run(tmp_path / "single", [1.0] * 10)
    mixed = CliRunner().invoke(main, ["compare", str(single), str(base)])
    assert mixed.exit_code == 2 and "repeat both or neither" in mixed.output


def test_nothing_to_compare_is_an_error_under_strict(tmp_path: Path) -> None:
    empty = write_run(tmp_path / "empty", [])
    result = CliRunner().invoke(main, ["compare", str(empty), str(empty), "--strict"])
    assert result.exit_code == 2 and "nothing was compared" in result.output


def test_damaged_inputs_give_a_verdict_or_one_line(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    good = write_run(tmp_path / "good", list(rng.lognormal(3, 0.1, 100)))
    damaged = write_run(tmp_path / "damaged", list(rng.lognormal(3, 0.1, 100)), resources=False)
    with (damaged / "events.jsonl").open("a") as events:
        events.write("\n")  # empty
        events.write("garbage{\n")
        events.write(json.dumps({"peer": 0, "start_ns": 0, "end_ns": 1, "ok": True}) + "\n")  # no op
        events.write('{"op": "get", "peer": 0, "start_ns": NaN, "end_ns": 1, "ok": true}\n')  # NaN timestamp
    runner = CliRunner()
    result = runner.invoke(main, ["compare", str(good), str(damaged)])
    assert result.exit_code == 0 and "get" in result.output and "Traceback" not in result.output
    notes = [line for line in result.output.splitlines() if line.startswith("note: ")]
    assert any("skipped 4 damaged lines: 101, 102, 103, 104" in line for line in notes), result.output
    assert any("resources.jsonl: missing" in line for line in notes), result.output
    (damaged / "manifest.json").write_text("{not json")
    broken = runner.invoke(main, ["compare", str(good), str(damaged)])
    assert broken.exit_code == 2 and len(broken.output.strip().splitlines()) == 1
    assert "manifest.json: not JSON" in broken.output and "Traceback" not in broken.output
    (damaged / "manifest.json").unlink()
    gone = runner.invoke(main, ["compare", str(good), str(damaged)])
    assert gone.exit_code == 2 and "is not a results directory" in gone.output


def test_a_killed_run_is_compared_as_partial_and_said_so(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    base = write_run(tmp_path / "base", list(rng.lognormal(3, 0.1, 100)))
    killed = write_run(tmp_path / "killed", list(rng.lognormal(3, 0.1, 40)), status="killed")
    result = CliRunner().invoke(main, ["compare", str(base), str(killed)])
    assert result.exit_code == 0, result.output
    assert f"note: {killed}: the run is killed (partial)" in result.output
    assert "(partial)" not in CliRunner().invoke(main, ["compare", str(base), str(base)]).output


def test_cli_bad_options(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", [1.0] * 10)
    runner = CliRunner()
    noise = runner.invoke(main, ["compare", str(run), str(run), "--noise", "lots"])
    assert noise.exit_code == 2 and "--noise" in noise.output
    metric = runner.invoke(main, ["compare", str(run), str(run), "--metric", "nope"])
    assert metric.exit_code == 2 and "unknown metric 'nope'" in metric.output
