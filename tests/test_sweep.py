"""`lab sweep`: the grid of settings (pure logic) and a real two-point sweep."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import TINY, needs_root, run_lab
from lab import exits
from lab.errors import TopologyError
from lab.output.plots import scaling_curve
from lab.sweep import Setting, grid, numeric, point_dir


def base() -> dict:
    return yaml.safe_load(TINY.read_text())


def test_settings_parse_and_name_their_mistakes() -> None:
    assert Setting.parse("peers=10,50") == Setting("peers", ("10", "50"))
    with pytest.raises(TopologyError, match="expected NAME=V1,V2"):
        Setting.parse("peers")


def test_grid_scales_groups_sets_link_fields_and_dotted_paths() -> None:
    data = base()
    data["groups"] = [{"name": "a", "count": 2}, {"name": "b", "count": 4}]
    points = grid(data, [Setting("peers", ("12",)), Setting("loss", ("0", "5%")),
                         Setting("libp2p.gossipsub.heartbeat", ("500ms",))], "tiny.yaml")
    assert [chosen for chosen, _ in points] == [
        {"peers": "12", "loss": "0", "libp2p.gossipsub.heartbeat": "500ms"},
        {"peers": "12", "loss": "5%", "libp2p.gossipsub.heartbeat": "500ms"},
    ]
    topology = points[1][1]
    assert topology.group_sizes() == [4, 8] and all(g.link.loss == 0.05 for g in topology.groups)
    assert topology.libp2p.gossipsub.heartbeat == 0.5 and points[0][1].seed == topology.seed


def test_a_point_that_makes_no_valid_topology_is_refused_before_any_run() -> None:
    with pytest.raises(TopologyError, match=r"with peers=1: bootstrap.peers: 2 exceeds the 1 peers"):
        grid(base(), [Setting("peers", ("6", "1"))], "tiny.yaml")
    with pytest.raises(TopologyError, match="peers=many: must be a positive whole number"):
        grid(base(), [Setting("peers", ("many",))], "tiny.yaml")


def test_point_names_and_numeric_axes() -> None:
    assert point_dir(Path("out"), {"peers": "10", "delay": "50ms"}) == Path("out/peers=10_delay=50ms")
    assert (numeric("5%"), numeric("1.5s"), numeric("fast")) == (5.0, 1.5, None)


def _point(setting: str, x: float | None, p50: float) -> dict[str, Any]:
    figures = {"unit": "millisecond", "n": 10, "p50": p50, "p95": 2 * p50, "p50_ci95": [p50 - 1, p50 + 1]}
    return {"settings": {"bootstrap.mode": setting}, "x": x, "metrics": {"get": figures}}


def test_a_curve_over_a_setting_that_is_not_a_number_has_a_point_per_value() -> None:
    figure = scaling_curve([_point("cold", None, 30.0), _point("warm", None, 20.0)], "bootstrap.mode", "get")
    axes = figure.axes[0]
    p50 = axes.containers[0]
    assert p50.get_label() == "p50"
    assert list(p50.lines[0].get_xdata()) == [0, 1] and list(p50.lines[0].get_ydata()) == [30.0, 20.0]
    assert [tick.get_text() for tick in axes.get_xticklabels()] == ["cold", "warm"]
    numeric_axis = scaling_curve([_point("10", 10.0, 5.0), _point("50", 50.0, 9.0)], "bootstrap.mode", "get").axes[0]
    assert list(numeric_axis.containers[0].lines[0].get_xdata()) == [10.0, 50.0]


@pytest.mark.slow
@needs_root
def test_a_real_sweep_writes_points_table_and_curves(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    done = run_lab("sweep", str(TINY), "--set", "peers=4,6", "--quick", "--out", str(out))
    sweep = json.loads((out / "sweep.json").read_text())
    assert [p["settings"] for p in sweep["points"]] == [{"peers": "4"}, {"peers": "6"}]
    assert done.returncode == exits.worst([p["exit_code"] for p in sweep["points"]]), done.stdout + done.stderr
    for point in sweep["points"]:
        manifest = json.loads((out / point["dir"] / "manifest.json").read_text())
        assert manifest["peers_ready"] == point["peers"] == int(point["settings"]["peers"])
        assert point["metrics"]["get"]["p50"] is not None
    assert (out / "plots" / "get.png").stat().st_size > 0 and "| peers=4 |" in (out / "sweep.md").read_text()
