"""The netem backend: kernel sch_netem under HTB on each peer's eth0, through pyroute2."""

from __future__ import annotations

from lab.netlink import NetlinkError, NetNS
from lab.network import PeerSlot
from lab.shaping import tc
from lab.shaping.backend import Backend, ShapingError
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
            assert slot.netns is not None
            try:
                with NetNS(slot.netns) as ns:
                    eth0 = ns.link_lookup(ifname="eth0")[0]
                    tc.remove_root(ns, eth0)
                    if plan.is_impaired:
                        tc.install_netem_tree(ns, eth0, plan, self.prefixes)
            except NetlinkError as exc:
                raise ShapingError(f"peer {slot.index}: tc refused {plan.describe()} ({exc})") from exc

    def kernel_state(self, slot: PeerSlot) -> list[str]:
        assert slot.netns is not None
        with NetNS(slot.netns) as ns:
            return tc.describe(ns, ns.link_lookup(ifname="eth0")[0])
