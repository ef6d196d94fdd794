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

from lab.errors import SetupError
from lab.network.netlink import NetlinkError, in_namespace, netns
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
        with throwaway_namespace() as name, in_namespace(name) as ns:
            ns.link("add", ifname="probe0", kind="veth", peer={"ifname": "probe1"})
    except Exception as exc:
        return f"cannot create namespaces and veth pairs ({type(exc).__name__}: {exc})"
    return None


def choose_mode(requested: str) -> tuple[str, str]:
    """(mode, why): netns where the kernel and privileges allow it, else loopback."""
    problem = netns_problem()
    if requested == "loopback":
        return "loopback", "requested by the topology"
    if problem is None:
        return "netns", "root and network namespaces available"
    if requested == "netns":
        raise SetupError(f"network.mode is netns but {problem}; run as root or set network.mode: auto")
    return "loopback", f"falling back to loopback (127.0.0.0/8): {problem}"


def _qdisc(kind: str, **options: object) -> Callable[[], str]:
    def probe() -> str:
        with throwaway_namespace() as name, in_namespace(name) as ns:
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
    with throwaway_namespace() as name, in_namespace(name) as ns:
        ns.link("add", ifname="probebr", kind="bridge")
    return "bridge created (not needed: the fabric is a routed hub)"


def chrony_state(tracking: str) -> str:
    """`chronyc -n tracking`'s answer, judged: how far the clock is from NTP time when chrony has
    synchronised it; RuntimeError naming the leap status when it has not."""
    fields = dict(line.split(":", 1) for line in tracking.splitlines() if ":" in line)
    fields = {name.strip(): value.strip() for name, value in fields.items()}
    leap = fields.get("Leap status")
    if leap is None:
        raise RuntimeError("chronyc tracking gave no leap status")
    if leap != "Normal":
        raise RuntimeError(f"chrony has not synchronised this clock (leap status: {leap})")
    return f"synchronised, {fields.get('System time', 'system time unknown')}"


def _chrony() -> str:
    if shutil.which("chronyc") is None:
        raise RuntimeError("chrony is not installed (apt-get install chrony): a run over several machines needs "
                           "synchronised clocks (docs/cluster.md)")
    done = subprocess.run(["chronyc", "-n", "tracking"], capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        raise RuntimeError(f"chronyd does not answer ({(done.stderr or done.stdout).strip() or done.returncode})")
    return chrony_state(done.stdout)


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


CLUSTER_PROBES: dict[str, Callable[[], str]] = {"clock (chrony)": _chrony}  # what a run over machines also needs


def check(name: str) -> Check:
    """Runs one probe; a failure's detail is the first line of its reason."""
    try:
        return Check(name, True, (PROBES | CLUSTER_PROBES)[name]())
    except Exception as exc:
        return Check(name, False, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def problem(name: str) -> str | None:
    """None if the named probe passes on this machine, else its one-line reason."""
    result = check(name)
    return None if result.ok else result.detail


def run_checks(cluster: bool = False) -> list[Check]:
    """Every probe; `cluster`: those a machine of a run over several machines needs too."""
    return [check(name) for name in (PROBES | CLUSTER_PROBES if cluster else PROBES)]
