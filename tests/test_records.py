"""A results directory read into typed records (lab/analysis/records.py): a committed run keeps its
line files compressed, and reads the same."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

from conftest import event
from lab.analysis.figures import analyze
from lab.analysis.records import load

TOPOLOGY = {"name": "z", "seed": 1, "groups": [{"name": "a", "count": 2}], "workload": [{"phase": "bootstrap"}]}


def test_compressed_line_files_read_as_written(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "manifest.json").write_text(json.dumps({"status": "complete", "peers_ready": 2, "topology": TOPOLOGY}))
    lines = [json.dumps(event("get", ms, start_ns=i).record()) for i, ms in enumerate((10.0, 12.5, 30.0))]
    (plain / "events.jsonl").write_text("\n".join(lines) + "\n")
    packed = tmp_path / "packed"
    shutil.copytree(plain, packed)
    with (packed / "events.jsonl").open("rb") as source, gzip.open(packed / "events.jsonl.gz", "wb") as target:
        shutil.copyfileobj(source, target)
    (packed / "events.jsonl").unlink()
    assert load(packed).events == load(plain).events and len(load(plain).events) == 3
    assert analyze(load(packed)).summary["get"] == analyze(load(plain)).summary["get"]
