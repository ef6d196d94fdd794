"""The netem backend: kernel sch_netem under HTB on each peer's eth0, through pyroute2."""

from __future__ import annotations

from lab.shaping.backend import Backend, Host
from lab.shaping.plan import LinkPlan


class NetemBackend(Backend):
    name = "netem"

    @staticmethod
    def unsupported(plan: LinkPlan) -> str | None:
        if plan.jitter_s and plan.distribution != "uniform":
            return "distribution: the netem backend has uniform jitter only (pyroute2 cannot load netem's distribution tables)"
        return None

    def apply(self, hosts: list[Host]) -> None:
        for host in hosts:
            self.replace_tree(host, self.prefixes, netem=True)
