"""Every tc command the lab issues, in one place (as Mininet keeps its tc lines in TCIntf).

The netem backend builds, on each peer's eth0 (inside the peer's namespace):

    htb 1: (default class 1:10)
      class 1:1   rate R              the link's bandwidth (R = 10 Gbit/s when unlimited)
        class 1:10  -> netem 10:      to destinations with no region delay
        class 1:11  -> netem 11:      to region #1 (u32 filters on destination prefixes)
        ...

HTB carries the rate (pyroute2's netem `rate=` fails here with ERANGE/TypeError); netem
carries delay, jitter, loss, duplicate, reorder and corruption. The userspace backend uses
only a TBF for the rate.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from pyroute2.netlink.rtnl import TC_H_ROOT
from pyroute2.netlink.rtnl.tcmsg.common import tick_in_usec

from lab.network.netlink import NetNS
from lab.shaping.plan import UNLIMITED_BPS, LinkPlan

ETH_P_IP = 0x0800
DEFAULT_MINOR = 0x10
TBF_LATENCY_US = 50_000  # how long a packet may wait for tokens before TBF drops it
MTU = 1514


def handle(major: int, minor: int = 0) -> int:
    return (major << 16) | minor


def _rate(bps: float) -> str:
    return f"{int(bps)}bit"


def remove_root(ns: NetNS, index: int) -> None:
    """Removes whatever root qdisc the lab put on the interface. Without a kind pyroute2 sends
    no options (with "tbf" it insists on a rate), and the kernel matches handle and parent."""
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


def u32_destination_key(prefix: str) -> str:
    """u32 match on the IPv4 destination address (offset 16 of the IP header)."""
    network = ipaddress.IPv4Network(prefix)
    return f"0x{int(network.network_address):08x}/0x{int(network.netmask):08x}+16"


def install_netem_tree(ns: NetNS, index: int, plan: LinkPlan, prefixes: dict[str, list[str]]) -> None:
    rate = _rate(plan.rate_bps or UNLIMITED_BPS)
    ns.tc("add", "htb", index, handle(1), default=DEFAULT_MINOR)
    ns.tc("add-class", "htb", index, handle(1, 1), parent=handle(1), rate=rate, ceil=rate)
    regions = [region for region, extra in sorted(plan.to_region.items()) if extra]
    for minor, region in enumerate([None, *regions], DEFAULT_MINOR):
        ns.tc("add-class", "htb", index, handle(1, minor), parent=handle(1, 1), rate=rate, ceil=rate)
        ns.tc("add", "netem", index, handle(minor), parent=handle(1, minor), **netem_options(plan, region))
        for prefix in prefixes.get(region or "", []):
            ns.tc(
                "add-filter", "u32", index,
                parent=handle(1), prio=1, protocol=ETH_P_IP, target=handle(1, minor), keys=[u32_destination_key(prefix)],
            )


def install_tbf(ns: NetNS, index: int, rate_bps: float) -> None:
    burst = max(2 * MTU, int(rate_bps / 8 / 250))  # 4 ms of tokens, as tc's HZ-based default
    ns.tc("add", "tbf", index, handle(1), rate=_rate(rate_bps), burst=burst, latency=TBF_LATENCY_US)


def describe(ns: NetNS, index: int) -> list[str]:
    """What the kernel has on the interface now, one line per qdisc/class, read back from it."""
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
