from pathlib import Path

import pytest

from lab.errors import TopologyError
from lab.topology import load_topology, parse_topology

ROOT = Path(__file__).resolve().parent.parent


def base(**changes: object) -> dict:
    data = {"name": "t", "seed": 1, "groups": [{"name": "a", "count": 3}], "workload": [{"phase": "bootstrap"}]}
    data.update(changes)
    return data


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"groups": [{"name": "a", "count": 3}, {"name": "b", "count": 0}]}, "groups[1].count: must be >= 1"),
        ({"groups": [{"name": "a"}]}, "groups[0]: give exactly one of count or percent"),
        ({"groups": [{"name": "a", "percent": 50}]}, "total: required when a group gives percent"),
        ({"workload": [{"phase": "bootstrap"}, {"phase": "lookup"}]}, "workload[1].phase: lookup needs an earlier publish phase"),
        ({"workload": [{"phase": "publish"}]}, "workload[0].phase: the first phase must be bootstrap"),
        ({"workload": [{"phase": "bootstrap"}, {"phase": "lokup"}]}, "workload[1]: phase must be one of"),
        ({"workload": [{"phase": "bootstrap", "timeout": "5 parsecs"}]}, "workload[0].timeout"),
        ({"groups": [{"name": "a", "count": 3, "link": {"loss": "150%"}}]}, "groups[0].link.loss: must be between 0% and 100%"),
        ({"bootstrap": {"peers": 4}}, "bootstrap.peers: 4 exceeds the 3 peers"),
        ({"slas": [{"metric": "nope", "stat": "p95", "op": "<", "threshold": "1s"}]}, "slas[0].metric: unknown metric 'nope'"),
        (
            {"slas": [{"metric": "get", "stat": "p95", "op": "<", "threshold": "5MiB"}]},
            "slas[0].threshold: '5MiB' cannot be expressed in millisecond",
        ),
        ({"colour": "blue"}, "colour: unknown field"),
        ({"seed": -1}, "seed: must be >= 0"),
        ({"network": {"peers_per_host": 0}}, "network.peers_per_host: must be >= 1"),
        ({"libp2p": {"dht": {"join": "walk"}}}, "libp2p.dht.join"),
        (
            {"workload": [{"phase": "bootstrap"}, {"phase": "publish", "settle": "-1s"}]},
            "workload[1].settle: must be between 0 and 86400s (a day)",
        ),
    ],
)
def test_errors_name_the_field(changes: dict, message: str) -> None:
    with pytest.raises(TopologyError) as caught:
        parse_topology(base(**changes), "t.yaml")
    text = str(caught.value)
    assert text.startswith("t.yaml: ")
    assert message in text
    assert "\n" not in text


def test_percent_groups_add_up_to_total() -> None:
    topology = parse_topology(
        base(total=10, groups=[{"name": "a", "percent": 33.3}, {"name": "b", "percent": 33.3}, {"name": "c", "percent": 33.4}])
    )
    assert topology.group_sizes() == [3, 3, 4]
    assert [g.name for g in topology.peer_groups()].count("c") == 4


def test_same_seed_same_random_streams() -> None:
    one, two = parse_topology(base()), parse_topology(base())
    assert one.rng("publish").random() == two.rng("publish").random()
    assert one.rng("publish").random() != one.rng("lookup").random()


def test_quick_shrinks_the_workload_only() -> None:
    topology = load_topology(ROOT / "topologies" / "10-peers.yaml").quick()
    assert topology.peer_count == 10
    publish = next(p for p in topology.workload if p.phase == "publish")
    assert publish.packages <= 5
    levels = next(p for p in topology.workload if p.phase == "concurrent_search").levels
    assert max(levels) <= 10


@pytest.mark.parametrize("name", ["10-peers.yaml", "100-peers.yaml", "1000-peers.yaml"])
def test_shipped_topologies_load(name: str) -> None:
    topology = load_topology(ROOT / "topologies" / name)
    assert topology.peer_count == int(name.split("-")[0])
    assert sum(map(len, topology.hosts())) == topology.peer_count


def test_join_order_takes_one_peer_from_each_host_in_turn() -> None:
    hosted = parse_topology(
        {
            "name": "t",
            "seed": 1,
            "groups": [{"name": "a", "count": 5}, {"name": "b", "count": 2}],
            "network": {"peer_hosting": "fork", "peers_per_host": 2},
            "workload": [{"phase": "bootstrap"}],
        }
    )
    assert hosted.hosts() == [[0, 1], [2, 3], [4], [5], [6]]  # the last peer alone: the deployed peer
    assert hosted.join_order() == [0, 2, 4, 5, 6, 1, 3]
    assert hosted.deployed_peer == 6
    single = parse_topology({**hosted.model_dump(mode="json"), "network": {"peers_per_host": 1}})
    assert single.join_order() == list(range(7))


def test_the_1000_peer_topology_fits_its_seeds_under_the_librarys_inbound_cap() -> None:
    """py-libp2p takes at most max_connections - 50 (its min_connections) and max_inbound inbound
    connections; the joiners' dials to the seeds must leave room for lookups (with 8 seeds, 381
    joins failed)."""
    topology = load_topology(ROOT / "topologies" / "1000-peers.yaml")
    joiners = topology.peer_count - topology.bootstrap.peers
    per_seed = joiners * topology.bootstrap.dials / topology.bootstrap.peers
    connections = topology.libp2p.connections
    assert per_seed < min(connections.max_connections - 50, connections.max_inbound) / 2


def test_unreadable_and_non_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="cannot read"):
        load_topology(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(TopologyError, match="must be a mapping"):
        load_topology(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    with pytest.raises(TopologyError, match="not valid YAML"):
        load_topology(tmp_path / "bad.yaml")


def test_hosts_hold_consecutive_peers_of_one_group() -> None:
    groups = [{"name": "a", "count": 5}, {"name": "b", "count": 4}]
    topology = parse_topology(base(groups=groups, network={"peers_per_host": 3}))
    assert topology.hosts() == [[0, 1, 2], [3, 4], [5, 6, 7], [8]]  # a host never spans groups a and b
    shared = parse_topology(base(groups=groups, network={"peers_per_host": 3, "deployed_peer": False}))
    assert shared.hosts() == [[0, 1, 2], [3, 4], [5, 6, 7], [8]] and shared.deployed_peer is None
    assert parse_topology(base(groups=[{"name": "a", "count": 6}], network={"peers_per_host": 3})).hosts() == [
        [0, 1, 2], [3, 4], [5]]
    assert parse_topology(base(groups=groups)).hosts() == [[i] for i in range(9)]  # default: a host per peer
