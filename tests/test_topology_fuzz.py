"""Topology input fuzzed: whatever a document holds, reading it ends in a topology or in one line
naming the field (TopologyError, exit 2), never in a traceback or a hang, and `lab run` builds
nothing for it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import DEFAULT, TINY
from lab.cli import main
from lab.errors import TopologyError
from lab.topology import load_topology, parse_topology

BASES = [yaml.safe_load(path.read_text()) for path in (TINY, DEFAULT)]


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a document a value sits at (and, per mapping, a key it does not have)."""
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        found.append((*prefix, "unknown_key"))
        for key, value in node.items():
            found += paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += paths(value, (*prefix, index))
    return found


PLACES = [(n, p) for n, base in enumerate(BASES) for p in paths(base)]
SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True)
           | st.sampled_from(["-5s", "1e400ms", "0", "-1", "200%", "1e12", "nan", "inf", "10 GiB", "ms", "", "0x10", ")",
                            "9**9**9s"])
           | st.text(max_size=12))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=12)


def replaced(base: Any, path: tuple[Any, ...], value: Any) -> Any:
    data = copy.deepcopy(base)
    node = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return data


@settings(max_examples=3000, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(place=st.sampled_from(PLACES), values=st.lists(VALUES, min_size=1, max_size=3))
def test_any_value_anywhere_is_a_topology_or_one_line_naming_its_field(place: tuple[int, tuple[Any, ...]],
                                                                         values: list[Any]) -> None:
    base, path = place
    data = BASES[base]
    for value in values:  # up to three places changed, the first chosen, the others beside it
        data = replaced(data, path, value)
        if isinstance(value, dict | list) and value:
            path = (*path, next(iter(value)) if isinstance(value, dict) else 0)
    try:
        topology = parse_topology(data, "fuzz.yaml")
    except TopologyError as exc:
        message = str(exc)
        assert message.startswith("fuzz.yaml: ") and "\n" not in message and len(message) < 600, message
        return
    assert 1 <= topology.peer_count <= 100_000  # what it accepts, a run can lay out
    assert len(topology.hosts()) >= 1 and len(topology.join_order()) == topology.peer_count


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefg", "bcdefgh", strict=True))
ONE = b"name: x\nseed: 1\ngroups: [{name: a, count: 2}]\n"
DAMAGED = {
    "deep.yaml": ("name: " + "[" * 50_000 + "]" * 50_000 + "\n").encode(),
    "bomb-groups.yaml": (BOMB + "name: x\nseed: 1\ngroups: [*h]\nworkload: [*h]\n").encode(),
    "bomb-everywhere.yaml": (BOMB + "name: *h\nseed: *h\ngroups: *h\nworkload: *h\nslas: *h\nnetwork: *h\n").encode(),
    "not-utf8.yaml": b"name: \xff\xfe\nseed: 1\n",
    "huge-count.yaml": b"name: x\nseed: 1\ngroups: [{name: a, count: 1000000000000}]\nworkload: [{phase: bootstrap}]\n",
    "huge-total.yaml": b"name: x\nseed: 1\ntotal: 99999999999\ngroups: [{name: a, percent: 100}]\n"
                       b"workload: [{phase: bootstrap}]\n",
    "negative.yaml": ONE + b"workload: [{phase: bootstrap}, {phase: idle, duration: -5s}]\n",
    "endless.yaml": ONE + b"workload: [{phase: bootstrap}, {phase: idle, duration: 1e300s}]\n",
    "power-tower.yaml": ONE + b"workload: [{phase: bootstrap}, {phase: idle, duration: 9**9**9 s}]\n",  # pint computes it
    "binary.yaml": bytes(range(256)),
    "empty.yaml": b"",
    "tabs.yaml": b"name: x\n\tseed: 1\n",
}


@pytest.mark.parametrize("name", sorted(DAMAGED))
def test_damaged_files_are_one_line_and_exit_2_with_nothing_built(name: str, tmp_path: Path) -> None:
    path, out = tmp_path / name, tmp_path / "out"
    path.write_bytes(DAMAGED[name])
    with pytest.raises(TopologyError):
        load_topology(path)
    result = CliRunner().invoke(main, ["run", str(path), "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and name in lines[0], result.output
    assert not out.exists()
