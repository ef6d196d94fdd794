"""A partition in the kernel: the hub's `raw` table drops packets between two sides.

Every packet between peers crosses the hub (fabric.py; those of a shared host's peers too), so
one table there cuts any set of peers from any other, hosts shared or not, before routing and
before the links' own rules (the filter table, lab/shaping/userspace.py), which never touch it:

    PREROUTING -> PLAB-CUT: -s 198.18.0.9/32 -j PLAB-CUT-OUT   (one rule per peer of the side)
                  PLAB-CUT-OUT: -d 198.18.0.12/32 -j DROP      (one rule per peer of the rest)

and, both ways, the same from the rest to the side (PLAB-CUT-IN). Healing restores an empty table. Packets a
link already holds (the delay line) are in flight and arrive, as on a real network.
"""

from __future__ import annotations

from collections.abc import Iterable

CHAIN = "PLAB-CUT"


def _one_way(name: str, senders: Iterable[str], receivers: Iterable[str]) -> list[str]:
    return [f":{name} - [0:0]", *(f"-A {CHAIN} -s {ip}/32 -j {name}" for ip in senders),
            *(f"-A {name} -d {ip}/32 -j DROP" for ip in receivers)]


def raw_table(side: list[str], rest: list[str], both_ways: bool) -> str:
    """The hub's whole raw table (iptables-restore input) for a cut between `side` and `rest`
    (peer addresses); an empty one heals."""
    lines = ["*raw", ":PREROUTING ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
    if side and rest:
        lines += [f":{CHAIN} - [0:0]", f"-A PREROUTING -j {CHAIN}", *_one_way(f"{CHAIN}-OUT", side, rest)]
        if both_ways:
            lines += _one_way(f"{CHAIN}-IN", rest, side)
    return "\n".join([*lines, "COMMIT", ""])
