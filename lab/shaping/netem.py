"""The netem backend: kernel sch_netem under HTB on each peer's eth0, through pyroute2."""

from __future__ import annotations

from functools import partial

from lab.network.fabric import PeerSlot
from lab.shaping import tc
from lab.shaping.backend import Backend
from lab.shaping.plan import LinkPlan


class NetemBackend(Backend):
    name = "netem"

    @staticmethod
    def unsupported(plan: LinkPlan) -> str | None:
        if plan.jitter_s and plan.distribution != "uniform":
            return "distribution: the netem backend has uniform jitter only (pyroute2 cannot load netem's distribution tables)"
        return None

    def apply(self, changes: list[tuple[PeerSlot, LinkPlan]]) -> None:
        for slot, plan in changes:
            install = partial(tc.install_netem_tree, plan=plan, prefixes=self.prefixes) if plan.is_impaired else None
            self.replace_root(slot, install, plan.describe())
