"""Fault phases: the partition's rules, the figures from known events, and every fault on real
peers (shared hosts, a delay line, the kernel's cut) in one run."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from lab import runid
from lab.analysis.faults import Staleness, fault_figures, split, staleness
from lab.analysis.guard import phase_lags
from lab.analysis.records import read_jsonl
from lab.errors import TopologyError
from lab.events import FAULT, PEER_DOWN, PHASE
from lab.manifest import PeerRecord
from lab.network.partition import Drops, raw_table
from lab.topology import parse_topology
from nodes.protocol import Event, Op
from tests.conftest import ROOT, event, leftovers, needs_root
from tests.test_run import start_run, wait_for_line

FAULTS = ROOT / "tests" / "topologies" / "faults.yaml"
S = 1_000_000_000


def test_a_cut_drops_between_the_sides_only_and_healing_empties_the_table() -> None:
    both = raw_table(Drops(("198.18.0.2", "198.18.0.3"), ("198.18.0.4",), both_ways=True)).splitlines()
    assert "-A PLAB-CUT -s 198.18.0.2/32 -j PLAB-CUT-OUT" in both and "-A PLAB-CUT-OUT -d 198.18.0.4/32 -j DROP" in both
    assert "-A PLAB-CUT -s 198.18.0.4/32 -j PLAB-CUT-IN" in both and "-A PLAB-CUT-IN -d 198.18.0.3/32 -j DROP" in both
    assert not any("-d 198.18.0.3/32" in rule for rule in both if rule.startswith("-A PLAB-CUT-OUT"))  # a side keeps its own
    outbound = raw_table(Drops(("198.18.0.2",), ("198.18.0.4",), both_ways=False))
    assert "PLAB-CUT-IN" not in outbound
    assert "PLAB-CUT" not in raw_table(Drops())


def test_a_silenced_peer_is_cut_from_everyone_beside_a_cut() -> None:
    rules = raw_table(Drops(("198.18.0.2",), ("198.18.0.4",), both_ways=False, silent=("198.18.0.9",))).splitlines()
    assert {"-A PLAB-CUT -s 198.18.0.9/32 -j DROP", "-A PLAB-CUT -d 198.18.0.9/32 -j DROP"} <= set(rules)
    assert "-A PLAB-CUT-OUT -d 198.18.0.4/32 -j DROP" in rules
    alone = raw_table(Drops(silent=("198.18.0.9",))).splitlines()
    assert "-A PREROUTING -j PLAB-CUT" in alone and not any("PLAB-CUT-OUT" in rule for rule in alone)


def test_stale_entries_count_the_identities_new_peers_replaced() -> None:
    """Peer 1 came back as a new peer (id b -> c), peer 2 with its identity, peer 3 is down:
    entries for a and d are live, b and e are stale."""
    def record(index: int, peer_id: str, lost: str | None) -> PeerRecord:
        return PeerRecord(index=index, group="g", peer_id=peer_id, ip=f"198.18.0.{index + 1}", netns=None, pid=None,
                          lost=lost, final=None)

    peers = [record(0, "a", None), record(1, "c", None), record(2, "d", None), record(3, "e", "crashed")]
    routing = {0: ["c", "d", "b", "e"], 1: ["a", "b"], 2: ["a"], 3: ["a"]}  # a lost peer's table is not counted
    downs = [Event(PEER_DOWN, 1, 0, S, True, details={"peer_id": "b", "returned_as": "c"}),
             Event(PEER_DOWN, 2, 0, S, True, details={"peer_id": "d", "returned_as": "d"}),
             Event(PEER_DOWN, 3, 0, S, True, details={"back": False})]
    assert staleness(peers, routing, downs) == Staleness(entries=7, stale=3, tables=3, up=3)
    assert staleness(peers, {}, downs) is None


def _topology(**partition: object) -> dict[str, object]:
    return {"name": "t", "seed": 1, "groups": [{"name": "a", "count": 2}, {"name": "b", "count": 2}],
            "workload": [{"phase": "bootstrap"}, {"phase": "publish"}, {"phase": "partition", **partition}]}


@pytest.mark.parametrize("partition, field", [
    ({}, "workload[2]"),  # all peers on one side: nothing cut
    ({"groups": ["a", "b"]}, "workload[2]"),
    ({"groups": ["c"]}, "workload[2].groups"),
    ({"groups": ["a"], "peers": 1, "share": "50%"}, "workload[2]"),
    ({"groups": ["a"], "duration": "-1s"}, "duration"),
    ({"groups": ["a"], "load": {"window": "0s"}}, "window"),
    ({"peers": [0, 9]}, "workload[2].peers: no peer 9"),
    ({"peers": [0, 1, 2, 3]}, "workload[2]: a partition hits some peers"),  # every peer listed: nothing cut
    ({"peers": [0], "groups": ["a"]}, "peers: a list of peers names them all"),
])
def test_a_fault_that_hits_nobody_or_everybody_is_refused_naming_the_field(partition: dict[str, object], field: str) -> None:
    with pytest.raises(TopologyError, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse_topology(_topology(**partition))


def test_churn_needs_a_rate() -> None:
    data = _topology(groups=["a"])
    data["workload"][2] = {"phase": "churn", "rate": "0%"}  # type: ignore[index]
    with pytest.raises(TopologyError, match="rate"):
        parse_topology(data)


def test_figures_from_known_events() -> None:
    """A partition phase from 0 to 30 s, its fault from 10 to 20 s: 10 gets before (all
    succeed), 10 during (4 succeed), 10 after (all succeed, the first window after the fault
    back to the share before); one message each stretch, to 3 of 3 peers, 1 of 3 (one delivery
    after the load's timeout does not count), 3 of 3."""
    topology = parse_topology(_topology(groups=["a"], before="10s", duration="10s", after="10s",
                                        load={"window": "5s", "timeout": "4s"}))
    events = [Event(PHASE, None, 0, 30 * S, True, details={"phase": "partition", "number": 3, "cpu_busy": 0.1}),
              Event(FAULT, None, 10 * S, 20 * S, True, details={"fault": "partition", "peers": [0, 1]})]
    for second in range(30):
        ok = not 10 <= second < 20 or second % 5 < 2
        events.append(event(Op.GET, 100, ok, peer=2, start_ns=second * S))
    for number, (sent, receivers) in enumerate([(2, [1, 2, 3]), (12, [1]), (24, [1, 2, 3])]):
        message = f"m{number}"
        events.append(event(Op.GOSSIP_PUBLISH, 1, peer=0, start_ns=sent * S, msg=message))
        events += [event(Op.GOSSIP_DELIVERY, 50, peer=r, start_ns=sent * S, msg=message) for r in receivers]
    events.append(event(Op.GOSSIP_DELIVERY, 50, peer=2, start_ns=12 * S + 5 * S, msg="m1"))  # too late
    rest, faulted = split(events)
    assert not any(e.op == Op.GET for e in rest) and len([e for e in faulted if e.op == Op.GET]) == 30
    (figures,) = fault_figures(topology, phase_lags(events), faulted, events, ready=4)
    assert [w.availability for w in figures.windows[:6]] == [1.0, 1.0, 0.4, 0.4, 1.0, 1.0]
    assert [w.delivery_ratio for w in figures.windows[:6]] == [1.0, None, pytest.approx(1 / 3), None, 1.0, None]
    before, during, after = (figures.stretches[name] for name in ("before", "during", "after"))
    assert (before.gets.n, before.gets.success_ratio) == (10, 1.0)
    assert (during.gets.n, during.gets.successes) == (10, 4)
    assert after.gets.success_ratio == 1.0
    assert (before.delivery_ratio, during.delivery_ratio, after.delivery_ratio) == (1.0, pytest.approx(1 / 3), 1.0)
    assert figures.availability_recovery_s == pytest.approx(5.0)  # the window 20-25 s is back
    assert figures.gossip_recovery_s == pytest.approx(4.05)  # m2's last delivery, 24.05 s
    assert figures.peers_hit == 2


def _raw_rules(run: str) -> list[str]:
    hub = runid.RunId(run).hub_netns
    done = subprocess.run(["ip", "netns", "exec", hub, "iptables", "-t", "raw", "-S"], capture_output=True, text=True,
                          check=True)
    return [rule for rule in done.stdout.splitlines() if "DROP" in rule]


@needs_root
def test_every_fault_on_real_peers(tmp_path: Path) -> None:
    """Partition, crash, pause and churn on shared hosts: the cut is in the kernel while it
    lasts, no neighbour of a crashed peer dies, a pause longer than the hang limit is not a
    hang, a paused peer of a shared host is silent while its neighbour runs on, crashed peers
    return with their identity and churn's as new peers, and the report shows each fault."""
    out = tmp_path / "results"
    process, run = start_run(out, FAULTS)
    wait_for_line(process, "[partition] 3 peers cut off")
    cut = _raw_rules(run)
    wait_for_line(process, "[partition] healed")
    healed = _raw_rules(run)
    wait_for_line(process, "[pause]")
    silent = _raw_rules(run)
    rest, _ = process.communicate(timeout=600)
    assert process.returncode == 0, rest
    assert len(cut) == 4 + 3, cut  # a DROP per receiver each way: the rest (west and lone), then east
    assert healed == []
    summary = json.loads((out / "summary.json").read_text())
    verdicts = {v["metric"]: v for v in json.loads((out / "verdicts.json").read_text())["verdicts"]}
    assert verdicts["peers_lost"]["status"] == "pass"  # crashed and paused peers are not lost; no neighbour died
    faults = {f["phase"]: f for f in summary["faults"]}
    assert list(faults) == ["partition", "crash", "pause", "churn"]
    partition = faults["partition"]["stretches"]
    assert partition["during"]["gets"]["success_ratio"] < partition["before"]["gets"]["success_ratio"]
    assert partition["during"]["delivery_ratio"] < 1.0 == partition["after"]["delivery_ratio"]
    assert faults["partition"]["availability_recovery_s"] is not None
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    downs = [e for e in events if e["op"] == "peer_down"]
    crashed = [e for e in downs if e["fault"] == "crash"]
    churned = [e for e in downs if e["fault"] == "churn"]
    assert crashed and all(e["back"] and e["returned_as"] == e["peer_id"] for e in crashed)
    assert churned and all(e["back"] and e["returned_as"] != e["peer_id"] for e in churned)  # new peers
    assert faults["churn"]["rejoins"]["successes"] == faults["churn"]["peers_hit"] >= 1
    (pause,) = [e for e in events if e["op"] == "fault" and e["fault"] == "pause"]
    frozen = set(pause["peers"])
    assert frozen and not [e for e in events if e["peer"] in frozen and e["op"] != "loop_lag"
                           and pause["start_ns"] + S < e["start_ns"] and e["end_ns"] < pause["end_ns"] - S]  # silent
    # (a second at each end: the fault's window is stamped just before the freeze and just after the thaw, when a
    # thawed process delivers what its kernel held; a silenced peer's host runs on and may carry the process's loop lag)
    by = {e["peer"]: e["by"] for e in downs if e["how"] == "pause"}
    assert by == {3: "network", 5: "process"}
    assert sorted(silent) == ["-A PLAB-CUT -d 198.18.0.5/32 -j DROP", "-A PLAB-CUT -s 198.18.0.5/32 -j DROP"]  # peer 3's
    assert [e for e in events if e["peer"] == 4 and pause["start_ns"] < e["start_ns"] < pause["end_ns"]]  # 4 ran on
    assert not any(e["phase"] == "run" for e in summary["errors"]["lab"])
    stale = summary["routing_staleness"]  # every peer up gave its table, kept in routing.jsonl, not the manifest
    assert stale["tables"] == stale["up"] == len(read_jsonl(out / "routing.jsonl")) and stale["entries"] > 0
    assert all((out / "plots" / f"fault_{f['number']}_{f['phase']}.png").exists() for f in summary["faults"])
    assert leftovers(run) == []
