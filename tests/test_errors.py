"""One error family (lab/errors.py), mapped to exit codes in one place (lab/cli.py): each class
raised from inside a real run ends `lab run` with its code and one line, and leaves nothing
behind; anything else is a crash (exit 3, traceback), also cleaned up."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from conftest import leftovers, needs_root, write_topology
from lab import exits
from lab.analysis import guard
from lab.cli import main
from lab.errors import (
    CalibrationError,
    CgroupError,
    LimitError,
    NetworkError,
    RecordsError,
    SetupError,
    ShapingError,
)
from lab.network import fabric, limits
from lab.peers import cgroup
from lab.shaping import backend
from lab.workload import phases

ONLY_BOOTSTRAP = [{"phase": "bootstrap"}]


def invoke(tmp_path: Path, topology: Path) -> tuple[Result, str | None]:
    """`lab run` through CliRunner; the run's id if it got as far as creating one."""
    result = CliRunner().invoke(main, ["run", str(topology), "--out", str(tmp_path / "out"), "--no-report"])
    started = re.search(r"^run ([0-9a-f]{6}):", result.output, flags=re.M)
    return result, started.group(1) if started else None


def raiser(error: BaseException) -> Callable[..., Any]:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise error
    return fail


def one_error_line(result: Result) -> str:
    """The command's last word: one line on stderr, no traceback."""
    assert "Traceback" not in result.output, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@needs_root
@pytest.mark.parametrize(
    ("where", "attribute", "error", "topology"),
    [
        (fabric.NamespaceNetwork, "build", NetworkError("netlink refused building the network: test"), {}),
        (backend.Backend, "replace_tree", ShapingError("host of peer 0: tc refused delay 10ms (test)"),
         {"groups": [{"name": "peers", "count": 6, "link": {"rate": "50mbit"}}]}),
        (cgroup.PeerCgroups, "create", CgroupError("network.cpu_limit: cannot create it (test)"),
         {"network": {"cpu_limit": 1.5}}),
        (limits, "check_namespaces", LimitError("network namespaces: test"), {}),
        (phases.Workload, "run", SetupError("the run cannot go on here (test)"), {}),
    ],
    ids=["network", "link-apply", "cgroup", "limit", "setup"],
)
def test_each_setup_error_from_inside_a_run_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: Any, attribute: str, error: Exception, topology: dict[str, Any],
) -> None:
    monkeypatch.setattr(where, attribute, raiser(error))
    result, run = invoke(tmp_path, write_topology(tmp_path / "t.yaml", workload=ONLY_BOOTSTRAP, **topology))
    assert result.exit_code == exits.BAD_INPUT, result.output
    assert one_error_line(result) == f"Error: {error}"
    if run is not None:
        assert leftovers(run) == []


def test_a_calibration_error_is_one_line_and_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("lab.calibration.settle", raiser(CalibrationError("time_dilation auto: the pilot measured no join")))
    result, run = invoke(tmp_path, write_topology(tmp_path / "t.yaml", workload=ONLY_BOOTSTRAP))
    assert result.exit_code == exits.BAD_INPUT and run is None
    assert one_error_line(result) == "Error: time_dilation auto: the pilot measured no join"


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    topology = write_topology(tmp_path / "bad.yaml", groups=[{"name": "a", "count": "many"}])
    result, run = invoke(tmp_path, topology)
    assert result.exit_code == exits.BAD_INPUT and run is None
    assert one_error_line(result).startswith(f"Error: {topology}: groups[0].count:")
    (tmp_path / "notutf8.yaml").write_bytes(b"name: \xff\xfe\n")
    result, _ = invoke(tmp_path, tmp_path / "notutf8.yaml")
    assert result.exit_code == exits.BAD_INPUT and "not UTF-8" in one_error_line(result)


def test_a_damaged_results_directory_is_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text('{"status": "complete", "peers_ready": "ten"}')
    (tmp_path / "events.jsonl").write_text("")
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == exits.BAD_INPUT
    assert one_error_line(result).startswith(f"Error: {tmp_path / 'manifest.json'}: peers_ready:")
    assert isinstance(RecordsError("x"), SetupError) is False  # bad input and setup are two branches of one family


@needs_root
def test_an_sla_failure_is_exit_1_and_an_unjudgeable_one_exit_4(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    failing = [{"metric": "memory_rss_mib", "stat": "max", "op": "<", "threshold": "1MiB"}]
    result, run = invoke(tmp_path, write_topology(tmp_path / "f.yaml", workload=ONLY_BOOTSTRAP, slas=failing))
    assert result.exit_code == exits.FAILED, result.output
    assert one_error_line(result) == "failed: 1 verdicts FAILED: memory_rss_mib max"
    assert run is not None and leftovers(run) == []
    monkeypatch.setattr(guard, "GUARD_SHARE", 1e-12)  # any lag at all is too much: no latency can be judged
    holding = [{"metric": "bootstrap", "stat": "p50", "op": "<", "threshold": "60s"}]
    result, run = invoke(tmp_path / "second", write_topology(tmp_path / "i.yaml", workload=ONLY_BOOTSTRAP, slas=holding,
                                                             fidelity={"rerun": 0}))
    assert result.exit_code == exits.INCONCLUSIVE, result.output
    assert one_error_line(result) == "inconclusive: 1 verdicts INCONCLUSIVE: bootstrap p50"
    assert run is not None and leftovers(run) == []


@needs_root
def test_anything_else_is_a_crash_with_its_traceback_and_nothing_is_left(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(phases.Workload, "run", raiser(ZeroDivisionError("a bug")))
    result, run = invoke(tmp_path, write_topology(tmp_path / "t.yaml", workload=ONLY_BOOTSTRAP))
    assert result.exit_code == exits.CRASH
    assert "Traceback" in result.stderr and "ZeroDivisionError: a bug" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("lab crashed (ZeroDivisionError: a bug)")
    assert run is not None and leftovers(run) == []
    assert (tmp_path / "out" / "manifest.json").is_file()  # what was measured is kept, marked failed
