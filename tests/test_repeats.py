"""Repeated runs: between-run figures from known run medians, and a real `--repeat 2`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import TINY, leftovers, needs_root, run_lab, strict_json_loads
from lab import exits
from lab.analysis.repeats import between_runs
from lab.analysis.stats import Summary, summarize


def summary(p50: float) -> dict[str, Summary]:
    return {"get": summarize([p50], unit="millisecond")}


def test_median_of_run_medians_with_its_interval() -> None:
    runs = [summary(x) for x in (12.0, 10.0, 11.0, 14.0, 13.0, 9.0, 15.0)]
    figures = between_runs(runs)["get"]
    assert figures["run_medians"] == [12.0, 10.0, 11.0, 14.0, 13.0, 9.0, 15.0]
    assert figures["median_of_medians"] == 12.0
    # n = 7: the distribution-free 95% interval is [x(1), x(7)] (P = 1 - 2/128 = 0.984;
    # [x(2), x(6)] covers only 0.875).
    assert figures["ci95"] == [9.0, 15.0]
    assert (figures["min"], figures["max"]) == (9.0, 15.0)
    assert figures["cv"] == pytest.approx(2.1602 / 12.0, rel=1e-3)


def test_too_few_runs_give_no_interval_and_missing_metrics_are_skipped() -> None:
    figures = between_runs([summary(1.0), summary(2.0), {"get": summarize([], attempts=3, unit="millisecond")}])
    assert figures["get"]["runs"] == 2
    assert figures["get"]["ci95"] == [None, None]


@needs_root
@pytest.mark.slow
def test_repeat_two_runs_fresh_networks_and_every_json_written_is_strict(tmp_path: Path) -> None:
    out = tmp_path / "results"
    done = run_lab("run", str(TINY), "--repeat", "2", "--out", str(out))
    repeat = json.loads((out / "repeat.json").read_text())
    runs = [out / "run-1", out / "run-2"]
    manifests = [json.loads((r / "manifest.json").read_text()) for r in runs]
    assert manifests[0]["run_id"] != manifests[1]["run_id"], "each repeat builds its own network"
    assert [m["status"] for m in manifests] == ["complete", "complete"]
    assert repeat["repeats"] == 2 and repeat["seeds"] == [7, 7]
    codes = [r["exit_code"] for r in repeat["runs"]]
    assert done.returncode == exits.worst(codes), done.stdout + done.stderr
    for name, figures in repeat["metrics"].items():
        medians = [json.loads((r / "summary.json").read_text())["metrics"].get(name, {}).get("p50") for r in runs]
        assert figures["run_medians"] == [m for m in medians if m is not None], name
    assert "median of run medians" in done.stdout
    for manifest in manifests:
        assert leftovers(manifest["run_id"]) == []
    sweep = run_lab("sweep", str(TINY), "--set", "loss=0", "--out", str(tmp_path / "sweep"))
    assert (tmp_path / "sweep" / "sweep.json").is_file(), sweep.stdout + sweep.stderr
    outputs = [run_lab("compare", str(runs[0]), str(runs[1]), "--format", "json").stdout,
               run_lab("history", str(out), "--format", "json").stdout]
    written = [path.read_text() for path in tmp_path.rglob("*.json")]
    assert len(written) >= 3 * 3 + 3  # manifest, summary, verdicts of each run (two repeats, one point); repeat, sweep, history
    for text in outputs + written:  # jq, browsers and CI steps reject NaN and Infinity
        strict_json_loads(text)
