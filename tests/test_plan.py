"""Link plans from the topology: impairment fields named when wrong, region latency per destination, region prefixes."""

from __future__ import annotations

import pytest

from lab.errors import TopologyError
from lab.quantities import bits_per_second
from lab.shaping import plan as plans
from lab.shaping.links import peer_plans
from lab.topology import parse_topology

BASE = {"name": "t", "seed": 1, "workload": [{"phase": "bootstrap"}]}


def topology(**fields: object):
    return parse_topology({**BASE, **fields})


def test_tc_rate_spellings_mean_what_tc_means() -> None:
    assert bits_per_second("10mbit") == 10e6  # pint alone would read millibit
    assert bits_per_second("10Mbit/s") == 10e6
    assert bits_per_second("2gbit") == 2e9


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"groups": [{"name": "a", "count": 2, "region": "x"}]}, "groups[0].region: no regions are defined"),
        ({"regions": {"latency": {"x": {"x": "1ms"}}}, "groups": [{"name": "a", "count": 2}]},
         "groups[0].region: must be one of"),
        ({"regions": {"latency": {"x": {"x": "1ms", "y": "2ms"}, "y": {"y": "1ms"}}}, "groups": [{"name": "a", "count": 2}]},
         "regions.latency.y: needs exactly the regions"),
        ({"groups": [{"name": "a", "count": 2, "link": {"reorder": "5%"}}]}, "groups[0].link.reorder: needs delay"),
        ({"groups": [{"name": "a", "count": 2, "link": {"delay": "1ms", "jitter": "5ms"}}]}, "groups[0].link.jitter:"),
        ({"groups": [{"name": "a", "count": 2, "link": {"rate": "fast"}}]}, "groups[0].link.rate:"),
    ],
)
def test_bad_impairment_fields_are_named(fields: dict, message: str) -> None:
    with pytest.raises(TopologyError, match=message.replace("[", r"\[").replace("]", r"\]")):
        topology(**fields)


def test_impair_phase_must_name_known_groups() -> None:
    with pytest.raises(TopologyError, match=r"workload\[1\].groups: unknown groups \['z'\]"):
        topology(groups=[{"name": "a", "count": 2}],
                 workload=[{"phase": "bootstrap"}, {"phase": "impair", "groups": ["z"], "link": {"loss": "1%"}}])


def test_plans_add_region_latency_per_destination_and_prefixes_cover_each_region() -> None:
    t = topology(
        regions={"latency": {"eu": {"eu": "5ms", "us": "40ms"}, "us": {"eu": "40ms", "us": "5ms"}}},
        groups=[{"name": "a", "count": 3, "region": "eu", "link": {"delay": "10ms"}}, {"name": "b", "count": 2, "region": "us"}],
    )
    by_peer = peer_plans(t)
    assert by_peer[0].delay_to("us") == pytest.approx(0.050) and by_peer[0].delay_to("eu") == pytest.approx(0.015)
    assert by_peer[4].delay_to("eu") == pytest.approx(0.040) and by_peer[4].is_impaired
    ips = [f"198.18.0.{i}" for i in range(2, 7)]
    assert plans.prefixes_by_region(ips, t.peer_regions()) == {
        "eu": ["198.18.0.2/31", "198.18.0.4/32"],
        "us": ["198.18.0.5/32", "198.18.0.6/32"],
    }
    assert t.is_impaired and not topology(groups=[{"name": "a", "count": 2}]).is_impaired
