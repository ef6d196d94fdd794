"""The kernel's texts for a plan: netem options and u32 keys (tc.py), the hub's iptables rules (userspace.py)."""

from __future__ import annotations

from lab.shaping import plan as plans
from lab.shaping.tc import netem_options, u32_destination_key, u32_source_key
from lab.shaping.userspace import hub_rules, peer_rules


def test_tc_and_iptables_texts() -> None:
    plan = plans.LinkPlan(delay_s=0.02, jitter_s=0.002, loss=0.05, reorder=0.1, to_region={"us": 0.04})
    assert netem_options(plan, "us") == {"delay": 60000, "jitter": 2000, "loss": 5.0, "duplicate": 0.0, "limit": 1000,
                                         "prob_reorder": 10.0}
    assert u32_destination_key("198.18.0.4/31") == "0xc6120004/0xfffffffe+16"
    assert u32_source_key("198.18.0.9") == "0xc6120009/0xffffffff+12"
    rate_only = plans.LinkPlan(rate_bps=1e6)
    rules = hub_rules({"h0001": peer_rules("h0001", "198.18.0.2", plan) + peer_rules("h0001", "198.18.0.3", rate_only),
                       "h0002": peer_rules("h0002", "198.18.0.4", rate_only)})
    assert "-A PLAB -i h0001 -j PLAB-h0001" in rules
    assert "-A PLAB-h0001 -s 198.18.0.2 -m statistic --mode random --probability 0.050000 -j DROP" in rules
    assert "-A PLAB-h0001 -s 198.18.0.2 -j NFQUEUE --queue-num 0" in rules
    assert "198.18.0.3" not in rules and "h0002" not in rules  # rate alone is an HTB class on the host's eth0
