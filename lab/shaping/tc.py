"""Every tc command the lab issues, in one place (as Mininet keeps its tc lines in TCIntf).

Each host's eth0 (inside the host's namespace) carries the packets of all its peers
(`network.peers_per_host`), so its tree shapes each peer by its source address:

    htb 1: (default class 1:2)
      class 1:1   rate 10 Gbit/s
        class 1:2                 what no peer of the plan sent: unshaped
        class 1:K00  rate R       peer #K's access link (K = 1 + its place on the host)
          class 1:K10  -> netem K10:   to destinations with no region delay
          class 1:K11  -> netem K11:   to region #1
          ...
      u32 filters at 1: source = peer #K (prio 2) -> 1:K10;
                        source = peer #K and destination in region #j (prio 1) -> 1:K1j

HTB carries the rate (pyroute2's netem `rate=` fails here with ERANGE/TypeError); netem
carries delay, jitter, loss, duplicate, reorder and corruption. The userspace backend uses
the same tree without netem leaves: only the rate (its loss and delay happen in the hub).
Peers whose plan does nothing get no class. A peer's class is its plan; a change to one peer
rebuilds its host's tree, so its host neighbours' queued packets are dropped once.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from pyroute2.netlink.rtnl import TC_H_ROOT
from pyroute2.netlink.rtnl.tcmsg.common import tick_in_usec

from lab.network.netlink import IPRoute
from lab.shaping.plan import UNLIMITED_BPS, LinkPlan

ETH_P_IP = 0x0800
UNSHAPED_MINOR = 0x2
DEFAULT_MINOR = 0x10  # of a peer's classes: to destinations with no region delay


def handle(major: int, minor: int = 0) -> int:
    return (major << 16) | minor


def _rate(bps: float) -> str:
    return f"{int(bps)}bit"


def remove_root(ns: IPRoute, index: int) -> None:
    """Removes whatever root qdisc the lab put on the interface. Without a kind pyroute2 sends
    no options, and the kernel matches handle and parent."""
    for qdisc in ns.get_qdiscs(index=index):
        if qdisc["parent"] == TC_H_ROOT and qdisc.get_attr("TCA_KIND") in ("htb", "tbf", "netem"):
            ns.tc("del", index=index, handle=qdisc["handle"], parent=TC_H_ROOT)


def netem_options(plan: LinkPlan, region: str | None) -> dict[str, Any]:
    """pyroute2's netem keywords: times in microseconds, shares in percent."""
    options: dict[str, Any] = {
        "delay": round(plan.delay_to(region) * 1e6),
        "jitter": round(plan.jitter_s * 1e6),
        "loss": plan.loss * 100,
        "duplicate": plan.duplicate * 100,
        "limit": plan.limit,
    }
    if plan.loss_correlation:
        options["loss_corr"] = plan.loss_correlation * 100
    if plan.reorder:
        options["prob_reorder"] = plan.reorder * 100
    if plan.corrupt:
        options["prob_corrupt"] = plan.corrupt * 100
    return options


def _u32_key(prefix: str, offset: int) -> str:
    network = ipaddress.IPv4Network(prefix)
    return f"0x{int(network.network_address):08x}/0x{int(network.netmask):08x}+{offset}"


def u32_source_key(ip: str) -> str:
    """u32 match on the IPv4 source address (offset 12 of the IP header)."""
    return _u32_key(f"{ip}/32", 12)


def u32_destination_key(prefix: str) -> str:
    """u32 match on the IPv4 destination address (offset 16 of the IP header)."""
    return _u32_key(prefix, 16)


def install_host_tree(ns: IPRoute, index: int, peers: list[tuple[str, LinkPlan]], prefixes: dict[str, list[str]],
                      netem: bool) -> None:
    """The tree of the docstring for `peers` ((source address, plan) of each peer on the host);
    without `netem`, rate classes only."""
    top = _rate(UNLIMITED_BPS)
    ns.tc("add", "htb", index, handle(1), default=UNSHAPED_MINOR)
    ns.tc("add-class", "htb", index, handle(1, 1), parent=handle(1), rate=top, ceil=top)
    ns.tc("add-class", "htb", index, handle(1, UNSHAPED_MINOR), parent=handle(1, 1), rate=top, ceil=top)
    for place, (ip, plan) in enumerate(peers, 1):
        rate = _rate(plan.rate_bps or UNLIMITED_BPS)
        link = place << 8
        ns.tc("add-class", "htb", index, handle(1, link), parent=handle(1, 1), rate=rate, ceil=rate)
        regions = [region for region, extra in sorted(plan.to_region.items()) if extra] if netem else []
        for minor, region in enumerate([None, *regions], link | DEFAULT_MINOR):
            ns.tc("add-class", "htb", index, handle(1, minor), parent=handle(1, link), rate=rate, ceil=rate)
            if netem:
                ns.tc("add", "netem", index, handle(minor), parent=handle(1, minor), **netem_options(plan, region))
            keys = [u32_source_key(ip)]
            for prefix in prefixes.get(region or "", []) if region else [None]:
                ns.tc("add-filter", "u32", index, parent=handle(1), prio=2 if prefix is None else 1, protocol=ETH_P_IP,
                      target=handle(1, minor), keys=keys + ([u32_destination_key(prefix)] if prefix else []))


def netem_drops(ns: IPRoute, index: int) -> int:
    """Packets the interface's netem qdiscs dropped (their configured loss and their full queues)."""
    return sum(int((q.get_attr("TCA_STATS") or {}).get("drop", 0)) for q in ns.get_qdiscs(index=index)
               if q.get_attr("TCA_KIND") == "netem")


def describe(ns: IPRoute, index: int) -> list[str]:
    """What the kernel has on the interface now, one line per qdisc, read back from it."""
    lines = []
    for qdisc in ns.get_qdiscs(index=index):
        kind = qdisc.get_attr("TCA_KIND")
        if kind == "noqueue":
            continue
        options = qdisc.get_attr("TCA_OPTIONS")
        detail = ""
        if kind == "netem" and options is not None:
            delay_ms, jitter_ms = (options[key] / tick_in_usec / 1000 for key in ("delay", "jitter"))
            loss = options["loss"] / (2**32 - 1)
            detail = f" delay {delay_ms:g}ms jitter {jitter_ms:g}ms loss {loss:.2%} limit {options['limit']}"
        lines.append(f"qdisc {kind} {qdisc['handle'] >> 16:x}: parent {qdisc['parent']:#x}{detail}")
    return lines
