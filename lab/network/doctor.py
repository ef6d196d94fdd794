"""What this machine supports, found by trying it in a throwaway namespace, never by guessing."""

from __future__ import annotations

import errno
import os
import resource
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from lab.network.netlink import NetlinkError, NetNS, netns
from lab.runid import RunId


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@contextmanager
def throwaway_namespace() -> Iterator[str]:
    name = f"{RunId.new().prefix}-probe"
    netns.create(name)
    try:
        yield name
    finally:
        netns.remove(name)


def netns_problem() -> str | None:
    """None if peers can live in namespaces here, else why not."""
    if os.geteuid() != 0:
        return "not running as root"
    try:
        with throwaway_namespace() as name, NetNS(name) as ns:
            ns.link("add", ifname="probe0", kind="veth", peer={"ifname": "probe1"})
    except Exception as exc:
        return f"cannot create namespaces and veth pairs ({type(exc).__name__}: {exc})"
    return None


def _qdisc(kind: str, **options: object) -> Callable[[], str]:
    def probe() -> str:
        with throwaway_namespace() as name, NetNS(name) as ns:
            ns.link("add", ifname="probe0", kind="veth", peer={"ifname": "probe1"})
            index = ns.link_lookup(ifname="probe0")[0]
            try:
                ns.tc("add", kind, index, "1:", **options)
            except NetlinkError as exc:
                if exc.code == errno.ENOENT:
                    raise RuntimeError(f"this kernel has no sch_{kind} (qdisc kind unknown)") from None
                raise
        return f"tc qdisc {kind} can be added"

    return probe


def _iptables(*match: str) -> Callable[[], str]:
    def probe() -> str:
        if shutil.which("iptables") is None:
            raise RuntimeError("iptables is not installed (apt-get install iptables)")
        with throwaway_namespace() as name:
            command = ["ip", "netns", "exec", name, "iptables", "-A", "OUTPUT", *match]
            done = subprocess.run(command, capture_output=True, text=True, timeout=20)
            if done.returncode != 0:
                raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "iptables failed")
        return "rule accepted"

    return probe


def _open_files() -> str:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:
        raise RuntimeError(f"soft limit {soft} (hard {hard}); raise with `ulimit -n {min(hard, 65536)}`")
    return f"soft {soft}, hard {hard}"


def _root() -> str:
    if os.geteuid() != 0:
        raise RuntimeError(f"euid {os.geteuid()}: namespaces and impairment need root")
    return "euid 0"


def _netns() -> str:
    problem = netns_problem()
    if problem:
        raise RuntimeError(problem)
    return "namespace and veth pair created and removed"


def _bridge() -> str:
    with throwaway_namespace() as name, NetNS(name) as ns:
        ns.link("add", ifname="probebr", kind="bridge")
    return "bridge created (not needed: the fabric is a routed hub)"


PROBES: dict[str, Callable[[], str]] = {
    "root": _root,
    "netns+veth": _netns,
    "bridge": _bridge,
    "sch_netem": _qdisc("netem", delay=1000),
    "htb": _qdisc("htb", default=0x10),
    "iptables statistic": _iptables("-m", "statistic", "--mode", "random", "--probability", "0.5", "-j", "DROP"),
    "nfqueue": _iptables("-j", "NFQUEUE", "--queue-num", "0", "--queue-bypass"),
    "open files": _open_files,
}


def check(name: str) -> Check:
    """Runs one probe; a failure's detail is the first line of its reason."""
    try:
        return Check(name, True, PROBES[name]())
    except Exception as exc:
        return Check(name, False, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def problem(name: str) -> str | None:
    """None if the named probe passes on this machine, else its one-line reason."""
    result = check(name)
    return None if result.ok else result.detail


def run_checks() -> list[Check]:
    return [check(name) for name in PROBES]
