"""The results directory's contract: the names of its files and its typed manifest.

The orchestrator writes the manifest as a run goes (`ResultsDir`, lab/output/results.py);
analysis, the report, compare, sweep, the benchmarks and `lab clean` read it through
`read_manifest`, which checks every field and names the first wrong one. The manifest carries
its `schema`; a reader refuses a newer one and upgrades an older one in one place
(`_upgrade`), so the readers only ever see the current shape.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lab.errors import RecordsError
from nodes.protocol import Dilation

SCHEMA = 2

# The files of a results directory (README.md, Results directory).
MANIFEST = "manifest.json"
EVENTS = "events.jsonl"
RESOURCES = "resources.jsonl"
ROUTING = "routing.jsonl"  # each peer that ended the run: its routing table's peer ids
LOGS = "logs"
SUMMARY = "summary.json"
VERDICTS = "verdicts.json"
SAMPLES_CSV = "samples.csv"
SUMMARY_PROM = "summary.prom"
REPORT = "report.html"
PLOTS = "plots"
CONTROL_SOCKET = "control.sock"
IMPAIRMENT_SOCKET = "impairment.sock"
# The files of a repeat and of a sweep directory.
REPEAT = "repeat.json"
SWEEP = "sweep.json"
SWEEP_TABLE = "sweep.md"

Status = Literal["running", "complete", "interrupted", "failed", "killed"]


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Source(Record):
    commit: str | None
    dirty: bool | None


class SpeedProbe(Record):
    """A plain-Python loop timed five times: machines of one CPU name differ 2x."""

    probe: str
    best_ms: float
    median_ms: float


class Testbed(Record):
    """The machine a run measured on."""

    hostname: str
    kernel: str
    kernel_version: str
    arch: str
    cpu_model: str | None
    cpu_family_model_stepping: list[str | None]
    cpu_mhz: float | None
    python_speed: SpeedProbe
    cpus: int | None
    memory_total_bytes: int
    euid: int
    argv: list[str]


class ClockReadingRecord(Record):
    """A machine's monotonic clock minus the run's first machine's, within +-error_ns, read
    `at_s` after the first reading (four-timestamp probes, lab/remote/clocks.py)."""

    at_s: float
    offset_ns: int
    error_ns: int


class ClusterNode(Record):
    """A machine of a Ray cluster that held part of a run."""

    node_id: str
    machine: str = ""  # its name, as a topology's placement pins it (host name, or P2P_LAB_MACHINE)
    address: str
    cpus: float
    memory_bytes: int
    agent_pid: int  # the agent serving the run there (lab/remote/agent.py)
    hosts: list[int]  # the run's host processes placed there
    run_id: str | None = None  # the prefix of what the run built there (plab-<run_id>-*); None: nothing placed
    underlay: str | None = None  # its end of the VXLAN between the machines' hubs
    clock_offset_ns: int = 0  # its monotonic clock minus the coordinator's, before the run: its timeline's shift ...
    clock_error_ns: int = 0  # ... within this (Ray calls to the first machine, plus the probes below for the others)
    clock_readings: list[ClockReadingRecord] = Field(default_factory=list)  # against the first machine, before, during, after
    clock_drift_ppm: float | None = None  # its clock's rate against the first machine's, over the readings
    clock_wander_ns: int | None = None  # how far its timeline strayed from the first machine's over the run, at most
    testbed: Testbed | None = None  # the machine, measured there


class ClusterRecord(Record):
    """Where a `--cluster` run ran: the Ray cluster and the machines its hosts were placed on."""

    address: str
    ray_version: str
    nodes: list[ClusterNode]
    placement: str  # how the hosts were placed, and why
    clock_error_ns: int | None = None  # bound on a latency stamped on two machines' clocks; None: one machine ran the run


class Impairment(Record):
    """The links' backend, what the topology asked of them, and their measurement before the workload."""

    backend: str | None
    reason: str
    applied: bool = False
    groups: dict[str, str] = Field(default_factory=dict)  # group -> its link, described
    verification_status: Literal["passed", "failed", "unverified"] | None = None
    verification: list[dict[str, Any]] = Field(default_factory=list)  # each pair's report (lab/shaping/verify.py)


class PhaseRecord(Record):
    """One workload phase as the orchestrator ran it (machine time, the machine's CPU)."""

    phase: str
    calls: int = 0
    failed: int = 0
    seconds: float = 0.0
    cpu_busy: float = 0.0  # share of the machine's CPU time not idle during the phase
    lab_cpu: float = 0.0  # share of the machine's CPU the orchestrator (collector included) took
    ended_s: float = 0.0  # since the run's start, the machine's seconds


class LabErrorRecord(Record):
    """Something that went wrong for the lab, not inside an operation: a peer that did not
    start or was lost, a call that failed, a change of dilation a host did not take."""

    phase: str
    error: str
    peer: int | None = None
    op: str | None = None
    stderr_tail: str | None = None


class PeerRecord(Record):
    index: int
    group: str
    peer_id: str
    ip: str
    netns: str | None
    pid: int | None
    lost: str | None
    final: dict[str, int] | None  # what it held at shutdown: routing table size, connections, mesh (the ids: ROUTING)


class CollectorRecord(Record):
    sweeps: int
    seconds: float


class LabCost(Record):
    cpu_seconds: float
    max_rss_mib: float


class Manifest(Record):
    """What a run was, where and how it ran, and how it ended. Every field has a default, so a
    directory written by hand or cut short still reads; a field that is there must be right."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_version: int = Field(default=SCHEMA, alias="schema")
    status: Status = "running"
    partial: bool = True
    run_id: str = ""
    topology_name: str = ""
    seed: int | None = None
    mode: str = ""
    mode_reason: str = ""
    started_utc: str | None = None
    ended_utc: str | None = None
    duration_s: float | None = None
    clock: str = ""
    time_dilation: Dilation = Field(default_factory=Dilation)
    versions: dict[str, str | None] = Field(default_factory=dict)
    source: Source = Field(default_factory=lambda: Source(commit=None, dirty=None))
    machine: Testbed | None = None  # where the peers ran
    cluster: ClusterRecord | None = None  # with --cluster: the Ray cluster and each machine's part
    topology: dict[str, Any] | None = None  # as parsed (lab/topology.py); `topology_source` as written
    topology_source: str = ""
    impairment: Impairment = Field(default_factory=lambda: Impairment(backend=None, reason=""))
    peers_ready: int = 0
    peers_ready_s: float | None = None
    peers_lost: int = 0
    peers: list[PeerRecord] = Field(default_factory=list)
    phases: list[PhaseRecord] = Field(default_factory=list)
    collector: CollectorRecord | None = None
    lab_processes: dict[str, LabCost] = Field(default_factory=dict)
    lab_errors: list[LabErrorRecord] = Field(default_factory=list)

    def record(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


def stored(run_dir: Path, name: str) -> Path | None:
    """Where a line file of the directory is: as written, or compressed (`events.jsonl.gz`, the
    form a committed run keeps), or None."""
    return next((path for path in (run_dir / name, run_dir / f"{name}.gz") if path.is_file()), None)


def _upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """An older manifest in the current shape. Schema 0 (no `schema` field): the time dilation
    was {factor, reason, segments}, the verification's outcome also a `verified` flag. Schema 1:
    a peer's `final` also held its routing table's peer ids, dropped here (such a run's
    routing staleness is not shown again)."""
    schema = data.get("schema", 0)
    data = dict(data, schema=SCHEMA)
    dilation = data.get("time_dilation")
    if schema < 1 and isinstance(dilation, dict) and "factor" in dilation:
        data["time_dilation"] = {"network": dilation["factor"], "reason": dilation.get("reason", ""),
                                 "segments": dilation.get("segments", []), "phases": []}
    impairment = data.get("impairment")
    if schema < 1 and isinstance(impairment, dict):
        data["impairment"] = {k: v for k, v in impairment.items() if k != "verified"}
    if schema < 2 and isinstance(data.get("peers"), list):
        data["peers"] = [dict(p, final={k: v for k, v in p["final"].items() if not isinstance(v, list)})
                         if isinstance(p, dict) and isinstance(p.get("final"), dict) else p for p in data["peers"]]
    return data


def _field_path(loc: tuple[int | str, ...]) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")


def parse_manifest(data: object, where: str) -> Manifest:
    """A manifest from its JSON form; RecordsError names the first wrong field."""
    if not isinstance(data, dict):
        raise RecordsError(f"{where}: not a JSON object; the run's manifest is damaged")
    schema = data.get("schema", 0)
    if not isinstance(schema, int) or schema > SCHEMA:
        raise RecordsError(f"{where}: schema {schema!r} is newer than this lab reads ({SCHEMA}); upgrade p2p-lab")
    try:
        return Manifest.model_validate(_upgrade(data))
    except ValidationError as exc:
        first = exc.errors()[0]
        field = _field_path(first["loc"]) or "manifest"
        raise RecordsError(f"{where}: {field}: {first['msg']}; the manifest is damaged") from None


def read_manifest(run_dir: Path) -> Manifest:
    """RUN_DIR's manifest; RecordsError names the file and what is wrong with it."""
    path = run_dir / MANIFEST
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise RecordsError(f"{path}: cannot read ({exc.strerror}); is {run_dir} a results directory?") from None
    except ValueError as exc:
        raise RecordsError(f"{path}: not JSON ({exc}); the run's manifest is damaged") from None
    return parse_manifest(data, str(path))
