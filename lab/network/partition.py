"""A partition in the kernel: the hub's `raw` table drops packets between two sides, and every
packet from or to a silenced peer (a pause of one peer of a shared host: docs/faults.md).

Every packet between peers crosses the hub (fabric.py; those of a shared host's peers too), so
one table there cuts any set of peers from any other, hosts shared or not, before routing and
before the links' own rules (the filter table, lab/shaping/userspace.py), which never touch it:

    PREROUTING -> PLAB-CUT: -s 198.18.0.9/32 -j PLAB-CUT-OUT   (one rule per peer of the side)
                  PLAB-CUT-OUT: -d 198.18.0.12/32 -j DROP      (one rule per peer of the rest)
                  -s 198.18.0.20/32 -j DROP, -d 198.18.0.20/32 -j DROP   (a silenced peer)

and, both ways, the same from the rest to the side (PLAB-CUT-IN). Healing restores an empty table. Packets a
link already holds (the delay line) are in flight and arrive, as on a real network.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

CHAIN = "PLAB-CUT"


@dataclass(frozen=True)
class Drops:
    """What the hub drops: packets from `side` to `rest` (and back, `both_ways`), and every
    packet from or to a `silent` peer (addresses)."""

    side: tuple[str, ...] = ()
    rest: tuple[str, ...] = ()
    both_ways: bool = True
    silent: tuple[str, ...] = ()


def _one_way(name: str, senders: Iterable[str], receivers: Iterable[str]) -> list[str]:
    return [f":{name} - [0:0]", *(f"-A {CHAIN} -s {ip}/32 -j {name}" for ip in senders),
            *(f"-A {name} -d {ip}/32 -j DROP" for ip in receivers)]


def raw_table(drops: Drops) -> str:
    """The hub's whole raw table (iptables-restore input) for `drops`; Drops() heals."""
    lines = ["*raw", ":PREROUTING ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
    cut = bool(drops.side and drops.rest)
    if cut or drops.silent:
        lines += [f":{CHAIN} - [0:0]", f"-A PREROUTING -j {CHAIN}"]
        lines += [f"-A {CHAIN} -{way} {ip}/32 -j DROP" for ip in drops.silent for way in "sd"]
    if cut:
        lines += _one_way(f"{CHAIN}-OUT", drops.side, drops.rest)
        if drops.both_ways:
            lines += _one_way(f"{CHAIN}-IN", drops.rest, drops.side)
    return "\n".join([*lines, "COMMIT", ""])
