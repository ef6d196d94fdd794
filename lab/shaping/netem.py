"""The netem backend: kernel sch_netem under HTB on each peer's eth0, through pyroute2."""

from __future__ import annotations

from collections import Counter

from lab.network.netlink import in_namespace
from lab.shaping import tc
from lab.shaping.backend import Backend, Counters, Host
from lab.shaping.plan import LinkPlan


class NetemBackend(Backend):
    name = "netem"

    def __init__(self, prefixes: dict[str, list[str]]) -> None:
        super().__init__(prefixes)
        self.namespaces: set[str] = set()  # the hosts it shaped

    @staticmethod
    def unsupported(plan: LinkPlan) -> str | None:
        if plan.jitter_s and plan.distribution != "uniform":
            return "distribution: the netem backend has uniform jitter only (pyroute2 cannot load netem's distribution tables)"
        return None

    def apply(self, hosts: list[Host]) -> None:
        for host in hosts:
            self.replace_tree(host, netem=True)
            self.namespaces.add(host[0][0].netns or "")

    def counters(self) -> Counters:
        """netem counts its losses and its full queues as one figure per qdisc."""
        drops = 0
        for name in sorted(self.namespaces - {""}):
            with in_namespace(name) as ns:
                drops += tc.netem_drops(ns, ns.link_lookup(ifname="eth0")[0])
        return Counters(Counter({"netem (loss and full queue)": drops}))
