"""Pure logic of impairment: topology fields, plans, tc and iptables texts, verification rules."""

from __future__ import annotations

import pytest

from lab.quantities import bits_per_second
from lab.shaping import plan as plans
from lab.shaping.tc import netem_options, u32_destination_key
from lab.shaping.userspace import hub_rules, port_rules
from lab.shaping.verify import _delay_checks, _loss_check, sample_pairs
from lab.topology import TopologyError, parse_topology

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
    peer_plans = plans.plans_for(t)
    assert peer_plans[0].delay_to("us") == pytest.approx(0.050) and peer_plans[0].delay_to("eu") == pytest.approx(0.015)
    assert peer_plans[4].delay_to("eu") == pytest.approx(0.040) and peer_plans[4].is_impaired
    ips = [f"198.18.0.{i}" for i in range(2, 7)]
    assert plans.prefixes_by_region(ips, plans.regions_of(t)) == {
        "eu": ["198.18.0.2/31", "198.18.0.4/32"],
        "us": ["198.18.0.5/32", "198.18.0.6/32"],
    }
    assert t.is_impaired and not topology(groups=[{"name": "a", "count": 2}]).is_impaired


def test_tc_and_iptables_texts() -> None:
    plan = plans.LinkPlan(delay_s=0.02, jitter_s=0.002, loss=0.05, reorder=0.1, to_region={"us": 0.04})
    assert netem_options(plan, "us") == {"delay": 60000, "jitter": 2000, "loss": 5.0, "duplicate": 0.0, "limit": 1000,
                                         "prob_reorder": 10.0}
    assert u32_destination_key("198.18.0.4/31") == "0xc6120004/0xfffffffe+16"
    rules = hub_rules({"h0001": port_rules("h0001", plan), "h0002": port_rules("h0002", plans.LinkPlan(rate_bps=1e6))})
    assert "-A PLAB -i h0001 -m statistic --mode random --probability 0.050000 -j DROP" in rules
    assert "-A PLAB -i h0001 -j NFQUEUE --queue-num 0" in rules and "h0002" not in rules  # rate alone is TBF on eth0


def test_verification_rules() -> None:
    plan = plans.LinkPlan(delay_s=0.1, loss=0.05)
    assert [c.passed for c in _delay_checks(plan, None, [0.104] * 3)] == [True]  # 5% of 100 ms
    assert [c.passed for c in _delay_checks(plan, None, [0.106] * 3)] == [False]
    assert [c.passed for c in _delay_checks(plans.LinkPlan(delay_s=0.01), None, [0.0109])] == [True]  # 1 ms floor
    assert _loss_check(plan, 400, 380).passed and not _loss_check(plan, 400, 400).passed
    assert not _loss_check(plans.LinkPlan(), 400, 399).passed  # no loss configured: one lost packet is a failure
    # 34 of 400 lost at 5%: outside one check's 99% interval (10..32), inside ten checks' (7..36, Bonferroni)
    assert not _loss_check(plan, 400, 366).passed and _loss_check(plan, 400, 366, pairs=10).passed


def test_sample_pairs_cover_every_ordered_pair_of_groups() -> None:
    assert sample_pairs(["a", "a", "b", "b"]) == [(0, 1), (0, 3), (2, 1), (2, 3)]
    assert sample_pairs(["a", "b"]) == [(0, 1), (1, 0)]  # a one-peer group has no pair within itself
