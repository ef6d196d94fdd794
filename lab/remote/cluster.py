"""`--cluster ADDRESS`: the run's machines are agents on the machines of a Ray cluster.

The coordinator is Ray's driver. It places one long-lived agent actor per machine, pinned to its node
(NodeAffinitySchedulingStrategy, soft=False) and never restarted (max_restarts=0: a restarted
agent would hold none of the run's peers). The actor execs the machine-local code as a child
(`python -m lab.remote.agent`: a fork inside a Ray worker kills actors) and relays frames
(frames.py) both ways: asks as actor calls, the agent's stream as one streaming call whose
items are batches of whatever frames had arrived. If the actor, its node or its child dies,
that stream fails, the run's machine is gone (lab/remote/machine.py) and its peers are lost;
the child's stdin ends with its actor, and the child undoes its machine before it exits.

Every alive node with CPUs gets an agent; a run's host processes are placed over them in
proportion to their CPUs (lab/remote/spread.py), their hubs joined by VXLAN. Ray is imported
only here, so a run without --cluster never loads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from lab.errors import SetupError
from lab.machine import Job, Machine, Paths, PeerLost, Place, Probe, Share, Stream
from lab.manifest import ClockReadingRecord, ClusterNode, ClusterRecord
from lab.network.fabric import Underlay
from lab.remote import clocks
from lab.remote.machine import Agent, AgentMachine, ChildChannel, ClockOffset, ClockWatch, measure_offset
from lab.remote.messages import Setup
from lab.remote.spread import Machines, capacity, place
from lab.runid import RunId
from lab.topology import Topology
from nodes.protocol import Dilation

BATCH = 1000  # frames relayed in one item of the stream at most
REACH_S = 5.0  # how long the head has to accept a connection
# A Ray worker kills its children as it exits; the agent must outlive its worker long enough to
# undo its machine (its stdin ends with the worker), so that worker leaves them alone.
OUTLIVE_WORKER = {"RAY_kill_child_processes_on_worker_exit": "false"}

Echo = Callable[[str], None]


@ray.remote(num_cpus=0, max_restarts=0, max_task_retries=0)
class AgentActor:
    """The agent's relay on its node."""

    async def start(self) -> int:
        """Execs the agent; returns its pid."""
        self.channel = await ChildChannel.start()
        self.frames_in: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.reading = asyncio.create_task(self._read())
        return int(self.channel.process.pid)

    async def _read(self) -> None:
        try:
            async for frame in self.channel.frames():
                self.frames_in.put_nowait(frame)
        finally:
            self.frames_in.put_nowait(None)

    async def send(self, frame: bytes) -> None:
        await self.channel.send(frame)

    async def frames(self) -> AsyncIterator[list[bytes]]:
        """The agent's frames until it ends, in batches of what had arrived."""
        while (first := await self.frames_in.get()) is not None:
            batch = [first]
            while len(batch) < BATCH and not self.frames_in.empty():
                frame = self.frames_in.get_nowait()
                if frame is None:
                    yield batch
                    return
                batch.append(frame)
            yield batch

    async def stop(self) -> None:
        """Ends the agent's stdin and waits until it has undone its machine and exited."""
        await self.channel.close()


class RayChannel:
    """The coordinator's end of an AgentActor (lab/remote/machine.py Channel)."""

    def __init__(self, actor: Any, name: str) -> None:
        self.actor, self.name = actor, name

    async def send(self, frame: bytes) -> None:
        try:
            await self.actor.send.remote(frame)
        except ray.exceptions.RayError as exc:
            raise ConnectionError(_first_line(exc)) from None

    async def frames(self) -> AsyncIterator[bytes]:
        async for ref in self.actor.frames.remote():
            for frame in await ref:
                yield frame

    async def close(self) -> None:
        with contextlib.suppress(ray.exceptions.RayError):
            await self.actor.stop.remote()
        ray.kill(self.actor)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


@dataclass(frozen=True)
class Node:
    """A machine of the cluster with its agent."""

    info: dict[str, Any]  # as ray.nodes() gives it
    agent: Agent
    pid: int  # the agent's
    underlay: Underlay
    machine: str  # its name, as a topology's placement pins it (lab/remote/agent.py `name`)

    @property
    def cpus(self) -> float:
        return float(self.info["Resources"].get("CPU", 0))

    @property
    def memory(self) -> float:
        return float(self.info["Resources"].get("memory", 0))

    @property
    def name(self) -> str:
        return f"{self.machine} at {_name(self.info)}"


def _name(info: dict[str, Any]) -> str:
    return f"{info['NodeManagerAddress']} (node {info['NodeID'][:8]})"


class ClusterPlace(Place):
    """Runs over the machines of a Ray cluster, each holding whole host processes in proportion
    to its CPUs (lab/remote/spread.py); a run that fits one machine's share stays on it alone."""

    def __init__(self, address: str, nodes: list[Node]) -> None:
        self.address, self.nodes = address, nodes
        self.probes: list[Probe] = []
        self.clocks: list[ClockOffset] = []  # each machine's against the driver's, measured before each run
        self.watch: ClockWatch | None = None  # the run's machines' clocks against its first's, when it has several

    async def probe(self, topology: Topology) -> Probe:
        try:
            self.probes = list(await asyncio.gather(*(node.agent.ask("probe", topology) for node in self.nodes)))
            self.clocks = list(await asyncio.gather(*(measure_offset(node.agent) for node in self.nodes)))
        except PeerLost as exc:
            raise SetupError(f"cannot probe the cluster's machines: {exc}") from None
        parts = self._parts(topology)
        self.watch = None
        if len(parts) > 1:
            for node, probed in zip(self.nodes, self.probes, strict=True):
                if probed.mode != "netns":
                    raise SetupError(f"a run over several machines needs network namespaces on each, but {node.name} "
                                     f"has none ({probed.mode_reason})")
            await self._read_clocks([k for k, _ in parts])
        return self.probes[parts[0][0]]

    async def _read_clocks(self, used: list[int]) -> None:
        """The first machine's clock against the driver's is Ray's reading (+-1 ms); each other
        machine's is the first's plus its four-timestamp reading against it (+-tens of us): so
        two machines' timelines agree far better than either agrees with the driver's."""
        first, *others = used
        reference = self.nodes[first]
        self.watch = ClockWatch(reference.agent, reference.underlay,
                                [(self.nodes[k].name, self.nodes[k].agent, self.nodes[k].underlay) for k in others])
        try:
            await self.watch.start()
        except PeerLost as exc:
            raise SetupError(f"cannot read the cluster's clocks: {exc}") from None
        base = self.clocks[first]
        for k, readings in zip(others, self.watch.readings, strict=True):
            self.clocks[k] = ClockOffset(base.offset_ns + readings[0].offset_ns, base.error_ns + readings[0].error_ns)

    def _parts(self, topology: Topology) -> list[tuple[int, list[int]]]:
        """The run's parts, numbered in order: (the node holding it, its hosts), for every node given hosts."""
        hosts = topology.hosts()
        shares = capacity([node.cpus for node in self.nodes], [node.memory for node in self.nodes])
        placed = place(hosts, shares, self._pins(topology, hosts))
        return [(k, held) for k, held in enumerate(placed) if held]

    def _pins(self, topology: Topology, hosts: list[list[int]]) -> dict[int, int]:
        """Host -> node, for the hosts of the groups the topology's placement pins."""
        if not topology.placement:
            return {}
        machines = [node.machine for node in self.nodes]
        groups = topology.peer_groups()
        pins: dict[int, int] = {}
        for host, peers in enumerate(hosts):
            machine = topology.placement.get(groups[peers[0]].name)
            if machine is None:
                continue
            if machines.count(machine) != 1:
                named = "no machine" if not machines.count(machine) else f"{machines.count(machine)} machines"
                raise SetupError(f"placement: {groups[peers[0]].name} is pinned to {machine}, which names {named} of the "
                                 f"cluster (its machines: {', '.join(machines)}; set P2P_LAB_MACHINE to tell them apart)")
            pins[host] = machines.index(machine)
        return pins

    def machine(self, run_id: RunId, topology: Topology, dilation: Dilation, probe: Probe, paths: Paths,
                stream: Stream) -> Machine:
        hosts = topology.hosts()
        used = self._parts(topology)
        results = paths.results.resolve()
        if len(used) == 1:
            (k, _), = used
            whole = Paths(results, paths.control.resolve(), paths.impairment.resolve(), paths.logs.resolve())
            return AgentMachine(self.nodes[k].agent, Setup(run_id, topology, dilation, self.probes[k], whole), stream,
                                self.clocks[k].offset_ns)
        parts: list[AgentMachine] = []
        for number, (k, held) in enumerate(used):
            node = self.nodes[k]
            own = Paths(results, results / f"m{number}-{paths.control.name}", results / f"m{number}-{paths.impairment.name}",
                        paths.logs.resolve())
            share = Share(number, frozenset(held), node.underlay)
            parts.append(AgentMachine(node.agent, Setup(run_id.part(number), topology, dilation, self.probes[k], own, share),
                                      stream, self.clocks[k].offset_ns))
        return Machines(parts, [[p for h in held for p in hosts[h]] for _, held in used],
                        [self.nodes[k].underlay.ip for k, _ in used], topology, dilation, paths.impairment.resolve(),
                        self.watch)

    def cluster(self, topology: Topology, run_id: RunId) -> ClusterRecord:
        """The cluster and the run's machines on it, with their clocks' readings so far."""
        used = self._parts(topology)
        parts = {k: (number, held) for number, (k, held) in enumerate(used)}
        read = dict(zip([k for k, _ in used[1:]], self.watch.readings, strict=True)) if self.watch else {}
        wander = {k: clocks.wander_ns(readings) for k, readings in read.items()}
        start = min((r[0].at_ns for r in read.values() if r), default=0)
        nodes = [ClusterNode(node_id=n.info["NodeID"], machine=n.machine, address=n.info["NodeManagerAddress"], cpus=n.cpus,
                             memory_bytes=int(n.info["Resources"].get("memory", 0)), agent_pid=n.pid,
                             hosts=parts[k][1] if k in parts else [],
                             run_id=run_id.part(parts[k][0]).value if k in parts else None,
                             underlay=n.underlay.ip, clock_offset_ns=clock.offset_ns, clock_error_ns=clock.error_ns,
                             clock_readings=[ClockReadingRecord(at_s=(r.at_ns - start) / 1e9, offset_ns=r.offset_ns,
                                                                error_ns=r.error_ns) for r in read.get(k, [])],
                             clock_drift_ppm=clocks.drift_ppm(read[k]) if k in read else None,
                             clock_wander_ns=wander.get(k),
                             testbed=probed.testbed)
                 for k, (n, probed, clock) in enumerate(zip(self.nodes, self.probes, self.clocks, strict=True))]
        error = clocks.timeline_error_ns(list(wander.values())) if self.watch else None
        pins = f"; {', '.join(f'{g} pinned to {m}' for g, m in topology.placement.items())}" if topology.placement else ""
        return ClusterRecord(address=self.address, ray_version=ray.__version__, nodes=nodes, clock_error_ns=error,
                             placement="consecutive host processes, peers in proportion to the smaller of each machine's "
                                       f"shares of the CPUs and of the memory{pins}")

    async def each_machine(self, job: Job) -> list[tuple[str, list[str]]]:
        """Each agent does `job` on its machine, one machine after the other; the doctor adds the
        clock's offset to the driver's."""
        try:
            answers: list[list[str]] = [await node.agent.ask(job) for node in self.nodes]
            if job == "doctor":
                clocks = await asyncio.gather(*(measure_offset(node.agent) for node in self.nodes))
                answers = [[*lines, f"clock offset to the driver: {clock.offset_ns / 1e6:+.3f} ms "
                            f"+- {clock.error_ns / 1e6:.3f} ms (over Ray calls)"]
                           for lines, clock in zip(answers, clocks, strict=True)]
        except PeerLost as exc:
            raise SetupError(f"cannot ask the cluster's machines: {exc}") from None
        return [(node.name, lines) for node, lines in zip(self.nodes, answers, strict=True)]


def alive_nodes(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The alive nodes with CPUs, in the order of their ids (same cluster, same placement)."""
    alive = sorted((n for n in nodes if n.get("Alive") and float(n["Resources"].get("CPU", 0)) > 0),
                   key=lambda n: str(n["NodeID"]))
    if not alive:
        raise SetupError("the Ray cluster has no alive node with CPUs: see `ray status`")
    return alive


async def _agent(info: dict[str, Any], address: str, agents: AsyncExitStack) -> Node:
    """The node's agent, started and pinned there; stopped (its machine undone first) on the way out."""
    actor = AgentActor.options(  # type: ignore[attr-defined]
        scheduling_strategy=NodeAffinitySchedulingStrategy(info["NodeID"], soft=False),
        runtime_env={"env_vars": OUTLIVE_WORKER}).remote()
    try:
        pid = await actor.start.remote()
    except ray.exceptions.RayError as exc:
        raise SetupError(f"--cluster {address}: the agent did not start on {info['NodeManagerAddress']}: "
                         f"{_first_line(exc)}") from None
    agent = Agent(RayChannel(actor, f"the agent on {_name(info)}"))
    agents.push_async_callback(agent.close)
    underlay: Underlay = await agent.ask("underlay", info["NodeManagerAddress"])
    return Node(info, agent, pid, underlay, await agent.ask("name"))


def _reachable(address: str) -> None:
    """Ray waits minutes for a head that is not there; a head that does not answer is refused at once."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        if address != "auto":
            raise SetupError(f"--cluster {address}: give the Ray head as host:port (ray start --head prints it) or auto")
        return
    try:
        socket.create_connection((host, int(port)), timeout=REACH_S).close()
    except OSError as exc:
        raise SetupError(f"--cluster {address}: no Ray head answers there ({exc.strerror or exc}); "
                         "start it with `ray start --head` (docs/cluster.md)") from None


@contextlib.asynccontextmanager
async def connect(address: str, echo: Echo) -> AsyncIterator[Place]:
    """Joins the Ray cluster at `address` as its driver, starts an agent on every alive node,
    and on the way out stops them (each undoes its machine first) and leaves the cluster."""
    _reachable(address)
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR, configure_logging=False)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise SetupError(f"--cluster {address}: cannot join the Ray cluster ({_first_line(exc)}); "
                         "start it with `ray start --head` (docs/cluster.md)") from None
    try:
        async with AsyncExitStack() as agents:
            nodes = [await _agent(info, address, agents) for info in alive_nodes(ray.nodes())]
            for node in nodes:
                echo(f"[cluster] Ray {ray.__version__} at {address}: agent on {node.name}, pid {node.pid}, "
                     f"{node.cpus:g} CPUs, VXLAN end {node.underlay.ip}")
            yield ClusterPlace(address, nodes)
    finally:
        ray.shutdown()
