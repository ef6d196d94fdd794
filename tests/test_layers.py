"""The lab's modules in layers: every module imports on its own in a fresh interpreter (no
import cycle that only works in one order), no module cycle at all, and no arrow from a lower
floor up: the topology schema knows no stage, the stages (network, shaping, peers, workload)
name their events without importing analysis, and the peers' side never imports the lab."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGES = ("lab", "nodes")
STAGES = ("lab.network", "lab.shaping", "lab.peers", "lab.workload")
BOTTOM = ("lab.errors", "lab.exits", "lab.events", "lab.metric_names", "lab.quantities", "lab.runid", "nodes.protocol",
          "nodes.wire")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            found[name] = path
    return found


def imports() -> dict[str, set[str]]:
    """Each module's imports of other project modules (the module itself when a name is one)."""
    known = modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    found.add(full if full in known else node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        graph[name] = {m for m in found if m in known and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, path = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_no_module_cycle() -> None:
    assert cycles(imports()) == []


def test_no_arrow_from_a_lower_floor_up() -> None:
    graph = imports()
    assert graph["lab.topology"] <= {"lab.errors", "lab.metric_names", "lab.quantities"}, graph["lab.topology"]
    for name in BOTTOM:
        assert graph[name] <= set(BOTTOM), f"{name} imports {graph[name] - set(BOTTOM)}"
    assert not graph["lab.shaping.plan"], "LinkPlan stays free of project imports"
    for name, imported in graph.items():
        if name.startswith(STAGES):
            upward = {m for m in imported if m.startswith(("lab.analysis", "lab.output", "lab.orchestrator", "lab.cli"))}
            assert not upward, f"{name} imports {upward}"
        if name.startswith("nodes"):
            assert not {m for m in imported if m.startswith("lab")}, f"{name} imports the lab"


@pytest.mark.parametrize("module", sorted(m for m in modules() if not m.endswith("__main__")))
def test_every_module_imports_first_in_a_fresh_interpreter(module: str) -> None:
    done = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_checks_above_can_fail() -> None:
    """The cycle finder finds a cycle where there is one (the checks are not vacuous)."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert subprocess.run([sys.executable, "-c", "import lab.no_such_module"], capture_output=True).returncode != 0
