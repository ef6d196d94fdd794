"""`--cluster ADDRESS`: the run's machine is an agent on a machine of a Ray cluster.

The coordinator is Ray's driver. It places one long-lived agent actor, pinned to its node
(NodeAffinitySchedulingStrategy, soft=False) and never restarted (max_restarts=0: a restarted
agent would hold none of the run's peers). The actor execs the machine-local code as a child
(`python -m lab.remote.agent`: a fork inside a Ray worker kills actors) and relays frames
(frames.py) both ways: asks as actor calls, the agent's stream as one streaming call whose
items are batches of whatever frames had arrived. If the actor, its node or its child dies,
that stream fails, the run's machine is gone (lab/remote/machine.py) and its peers are lost;
the child's stdin ends with its actor, and the child undoes its machine before it exits.

Placement today is one machine per run: the node with the most CPUs (then memory) takes every
host process. Ray is imported only here, so a run without --cluster never loads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from lab.errors import SetupError
from lab.machine import Machine, Paths, Place, Probe, Stream
from lab.manifest import ClusterNode, ClusterRecord
from lab.remote.machine import Agent, AgentPlace, ChildChannel
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


class ClusterPlace(AgentPlace):
    """Runs on one agent of a Ray cluster, recorded in the manifest as such."""

    def __init__(self, agent: Agent, address: str, node: dict[str, Any], agent_pid: int) -> None:
        super().__init__(agent)
        self.address, self.node, self.agent_pid = address, node, agent_pid

    def machine(self, run_id: RunId, topology: Topology, dilation: Dilation, probe: Probe, paths: Paths,
                stream: Stream) -> Machine:
        absolute = Paths(*(path.resolve() for path in (paths.results, paths.control, paths.impairment, paths.logs)))
        return super().machine(run_id, topology, dilation, probe, absolute, stream)

    def cluster(self, topology: Topology) -> ClusterRecord:
        resources = self.node["Resources"]
        node = ClusterNode(node_id=self.node["NodeID"], address=self.node["NodeManagerAddress"],
                           cpus=float(resources.get("CPU", 0)), memory_bytes=int(resources.get("memory", 0)),
                           agent_pid=self.agent_pid, hosts=list(range(len(topology.hosts()))))
        return ClusterRecord(address=self.address, ray_version=ray.__version__, nodes=[node],
                             placement="every host on the node with the most CPUs, then memory (one machine per run)")


def choose_node(nodes: list[dict[str, Any]]) -> dict[str, Any]:
    """The alive node with the most CPUs, then memory; ties go to the lowest node id (same cluster, same choice)."""
    alive = [n for n in nodes if n.get("Alive")]
    if not alive:
        raise SetupError("the Ray cluster has no alive node: see `ray status`")
    return min(alive, key=lambda n: (-float(n["Resources"].get("CPU", 0)), -float(n["Resources"].get("memory", 0)),
                                     n["NodeID"]))


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
    """Joins the Ray cluster at `address` as its driver, places the agent, and on the way out
    stops it (its machine undone first) and leaves the cluster."""
    _reachable(address)
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR, configure_logging=False)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise SetupError(f"--cluster {address}: cannot join the Ray cluster ({_first_line(exc)}); "
                         "start it with `ray start --head` (docs/cluster.md)") from None
    try:
        node = choose_node(ray.nodes())
        actor = AgentActor.options(  # type: ignore[attr-defined]
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False),
            runtime_env={"env_vars": OUTLIVE_WORKER}).remote()
        try:
            pid = await actor.start.remote()
        except ray.exceptions.RayError as exc:
            raise SetupError(f"--cluster {address}: the agent did not start on {node['NodeManagerAddress']}: "
                             f"{_first_line(exc)}") from None
        name = f"the agent on {node['NodeManagerAddress']} (node {node['NodeID'][:8]})"
        echo(f"[cluster] Ray {ray.__version__} at {address}: {name}, pid {pid}")
        agent = Agent(RayChannel(actor, name))
        try:
            yield ClusterPlace(agent, address, node, pid)
        finally:
            await agent.close()
    finally:
        ray.shutdown()
