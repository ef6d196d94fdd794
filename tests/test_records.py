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


def test_routing_tables_apart_from_the_manifest(tmp_path: Path) -> None:
    """Each peer's routing table is a line of routing.jsonl; a damaged line is skipped and named,
    and a schema-1 manifest (whose peers' `final` held the table itself) still reads."""
    run = tmp_path / "run"
    run.mkdir()
    peer = {"index": 0, "group": "a", "peer_id": "a", "ip": "198.18.0.2", "netns": None, "pid": None, "lost": None,
            "final": {"routing_table": 2, "routing_peers": ["b", "c"]}}
    (run / "manifest.json").write_text(json.dumps({"schema": 1, "status": "complete", "peers_ready": 2,
                                                   "topology": TOPOLOGY, "peers": [peer, dict(peer, index=1, peer_id="b")]}))
    (run / "events.jsonl").write_text(json.dumps(event("get", 10.0).record()) + "\n")
    (run / "routing.jsonl").write_text('{"index": 0, "routing_peers": ["b", "c"]}\n{"index": 1, "routing_peers": [7]}\n')
    records = load(run)
    assert records.routing == {0: ["b", "c"]}
    assert records.manifest.peers[0].final == {"routing_table": 2}
    assert any("routing.jsonl: skipped 1 damaged lines: 2" in line for line in records.skipped)
    staleness = analyze(records).staleness
    assert staleness is not None and (staleness.entries, staleness.stale, staleness.tables, staleness.up) == (2, 0, 1, 2)
