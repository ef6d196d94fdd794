"""The userspace backend, for kernels without sch_netem: loss in the kernel (iptables
`statistic`), rate in the kernel (HTB), and delay, jitter, reorder, corruption and the
region matrix in a delay line that holds packets from an NFQUEUE (lab/shaping/delayer.py).

Rate is the peer's access link (an HTB class for its source address on its host's eth0,
lab/shaping/tc.py). Loss and delay happen in the network: where the peer's packets enter the
hub, in its FORWARD chain: a chain per host port, a rule per peer by source address:

    FORWARD -> PLAB -> -i h0007 -> PLAB-h0007: -s 198.18.0.9 -m statistic ... DROP
                                               -s 198.18.0.9 NFQUEUE (to the delay line)
In the peer's own OUTPUT chain a DROP fails the sender's send() with EPERM, so TCP would
learn of each loss at once, and a held packet stays charged to the sender's socket buffer;
no real network does either.

What it cannot do: duplicate packets (a verdict passes one packet, not two) and correlated
loss (the statistic match draws each packet independently); asking for either is an error.
The queue has no bypass: if the delay line dies, the peers' packets stop, loudly, rather
than flowing unimpaired.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from lab.errors import ShapingError
from lab.network.fabric import PeerSlot
from lab.network.netlink import inside, run_in
from lab.runid import ENV_VAR, RunId
from lab.shaping.backend import Backend, Counters, Host
from lab.shaping.delayer import QUEUE_NUM
from lab.shaping.plan import LinkPlan

CHAIN = "PLAB"
START_TIMEOUT_S = 30.0


def needs_delay_line(plan: LinkPlan) -> bool:
    return bool(plan.delay_s or plan.jitter_s or plan.reorder or plan.corrupt or any(plan.to_region.values()))


def peer_rules(port: str, ip: str, plan: LinkPlan) -> list[str]:
    """One peer's rules in its host port's chain."""
    rules = []
    if plan.loss:
        rules.append(f"-A {CHAIN}-{port} -s {ip} -m statistic --mode random --probability {plan.loss:.6f} -j DROP")
    if needs_delay_line(plan):
        rules.append(f"-A {CHAIN}-{port} -s {ip} -j NFQUEUE --queue-num {QUEUE_NUM}")
    return rules


def hub_rules(rules_by_port: dict[str, list[str]]) -> str:
    """The hub's whole filter table (iptables-restore replaces it atomically): a chain per
    host port with rules, so a packet meets its own host's rules, not every peer's."""
    ports = sorted(port for port, rules in rules_by_port.items() if rules)
    lines = ["*filter", ":FORWARD ACCEPT [0:0]", f":{CHAIN} - [0:0]", *(f":{CHAIN}-{port} - [0:0]" for port in ports),
             f"-A FORWARD -j {CHAIN}", *(f"-A {CHAIN} -i {port} -j {CHAIN}-{port}" for port in ports)]
    lines += [rule for port in ports for rule in rules_by_port[port]]
    return "\n".join([*lines, "COMMIT", ""])


def _queue_drops(netns: str) -> int:
    """Packets the kernel dropped from our netfilter queue, full or unanswered (nfnetlink_queue's
    queue_dropped and user_dropped), in the hub's namespace."""
    with inside(netns), open("/proc/thread-self/net/netfilter/nfnetlink_queue") as table:
        rows = [line.split() for line in table]
    return sum(int(row[5]) + int(row[6]) for row in rows if row and int(row[0]) == QUEUE_NUM)


def _in_netns(netns: str, command: list[str], stdin: str | None = None) -> str:
    return run_in(netns, command, stdin, ShapingError)


class DelayLine:
    """The delayer process and a connection to its control socket."""

    def __init__(self, run: str, seed: int) -> None:
        self.directory = tempfile.mkdtemp(prefix=f"{RunId(run).prefix}-delayer-")
        control = os.path.join(self.directory, "control.sock")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "lab.shaping.delayer", "--control", control, "--seed", str(seed)],
            stdout=subprocess.PIPE,
            env={**os.environ, ENV_VAR: run},
            text=True,
        )
        assert self.process.stdout is not None
        hello = self.process.stdout.readline()
        if not hello:
            raise ShapingError(f"delay line exited at start (status {self.process.wait()}); see its stderr above")
        self.priority = json.loads(hello)["priority"]
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.socket.settimeout(START_TIMEOUT_S)
        self.socket.connect(control)
        self.reader = self.socket.makefile("r")

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        self.socket.sendall(json.dumps(message).encode() + b"\n")
        line = self.reader.readline()
        if not line:
            raise ShapingError(f"delay line died (status {self.process.poll()})")
        reply: dict[str, Any] = json.loads(line)
        if not reply.get("ok"):
            raise ShapingError(f"delay line refused: {reply.get('error')}")
        return reply

    def close(self) -> None:
        self.socket.close()
        self.process.terminate()
        self.process.wait(timeout=10)
        for leftover in Path(self.directory).iterdir():
            leftover.unlink()
        os.rmdir(self.directory)


class UserspaceBackend(Backend):
    name = "userspace"

    def __init__(self, prefixes: dict[str, list[str]], run: str, seed: int, hub_netns: str) -> None:
        super().__init__(prefixes)
        self.run, self.seed, self.hub_netns = run, seed, hub_netns
        self.delay_line: DelayLine | None = None
        self.rules_by_port: dict[str, list[str]] = {}
        self.rules = ""  # the hub's filter table as last restored

    @staticmethod
    def unsupported(plan: LinkPlan) -> str | None:
        if plan.duplicate:
            return "duplicate: the userspace backend cannot duplicate packets; it needs the netem backend (kernel sch_netem)"
        if plan.loss_correlation:
            return "loss_correlation: the userspace backend draws loss per packet; correlated loss needs the netem backend"
        return None

    def _region_of_ip(self) -> dict[str, str]:
        return {
            str(ip): region
            for region, prefixes in self.prefixes.items()
            for prefix in prefixes
            for ip in ipaddress.IPv4Network(prefix)
        }

    def apply(self, hosts: list[Host]) -> None:
        changes = [change for host in hosts for change in host]
        if any(needs_delay_line(plan) for _, plan in changes) and self.delay_line is None:
            self.delay_line = DelayLine(self.run, self.seed)
            self.delay_line.request({"op": "configure", "netns": self.hub_netns, "peers": [], "regions": self._region_of_ip()})
        if self.delay_line is not None:  # plans in the delay line before any rule sends packets to it
            peers = [{"index": s.index, "ip": s.ip, "plan": p.as_dict()} for s, p in changes]
            self.delay_line.request({"op": "configure", "peers": peers})
        for host in hosts:
            port = host[0][0].hub_port
            self.rules_by_port[port] = [rule for slot, plan in host for rule in peer_rules(port, slot.ip, plan)]
        rules = hub_rules(self.rules_by_port)
        if rules != self.rules:  # the same (a switch of dilation): its counters keep counting
            _in_netns(self.hub_netns, ["iptables-restore"], rules)
            self.rules = rules
        for host in hosts:
            self.replace_tree(host, netem=False)

    def kernel_state(self, slot: PeerSlot) -> list[str]:
        lines = super().kernel_state(slot)
        chain = f"{CHAIN}-{slot.hub_port}"
        if not self.rules_by_port.get(slot.hub_port):
            return lines
        hub = _in_netns(self.hub_netns, ["iptables", "-S", chain]).splitlines()
        return lines + [f"hub: iptables {rule}" for rule in hub if rule.startswith(f"-A {chain} -s {slot.ip}/32 ")]

    def helper_pids(self) -> dict[str, int]:
        return {"delay_line": self.delay_line.process.pid} if self.delay_line else {}

    def delay_line_stats(self) -> dict[str, Any] | None:
        return self.delay_line.request({"op": "stats"}) if self.delay_line else None

    def retime(self, ratio: float) -> int:
        return int(self.delay_line.request({"op": "retime", "ratio": ratio})["retimed"]) if self.delay_line else 0

    def counters(self) -> Counters:
        """Configured loss (the hub's statistic rules), a link's full queue (the delay line's
        `limit`), the kernel's netfilter queue overflowing (the delay line fell behind), and the
        delay line's lateness."""
        drops: Counter[str] = Counter()
        if self.rules_by_port:
            saved = _in_netns(self.hub_netns, ["iptables-save", "-c", "-t", "filter"])
            drops["loss"] = sum(int(m.group(1)) for m in re.finditer(r"^\[(\d+):\d+\] -A \S+ .* -j DROP$", saved, re.M))
        stats = self.delay_line_stats()
        if stats is None:
            return Counters(drops)
        drops["limit"] = sum(peer["dropped_limit"] for peer in stats["peers"].values())
        drops["queue"] = _queue_drops(self.hub_netns)
        late = stats["lateness_s"]
        return Counters(drops, stats["released"], (late["p50"], late["p99"], late["max"]))

    def close(self) -> None:
        if self.delay_line is not None:
            self.delay_line.close()
            self.delay_line = None
