"""The agent's wire and names (lab/remote): damaged frames, a damaged ask, the machines' prefixes;
and one real agent process serving a probe and refusing what it cannot serve."""

from __future__ import annotations

import asyncio
import struct

import pytest

from conftest import TINY
from lab.machine import PeerLost
from lab.remote.frames import MAX_FRAME, BrokenFrame, decode, encode, read_frame
from lab.remote.machine import Agent, ChildChannel
from lab.runid import RunId
from lab.topology import load_topology


def _reader(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


def test_frames_round_trip_and_end_cleanly() -> None:
    async def read_all(data: bytes) -> list[object]:
        reader, got = _reader(data), []
        while (frame := await read_frame(reader)) is not None:
            got.append(decode(frame))
        return got

    assert asyncio.run(read_all(encode({"a": 1}) + encode([2, 3]))) == [{"a": 1}, [2, 3]]


@pytest.mark.parametrize("data", [encode("whole")[:-2], encode("x")[:2], struct.pack(">I", MAX_FRAME + 1) + b"x"])
def test_a_cut_or_oversized_frame_is_broken_not_data(data: bytes) -> None:
    async def read_one() -> bytes | None:
        return await read_frame(_reader(data))

    with pytest.raises(BrokenFrame):
        asyncio.run(read_one())


def test_a_frame_that_is_not_pickle_is_broken() -> None:
    with pytest.raises(BrokenFrame, match="undecodable"):
        decode(struct.pack(">I", 3) + b"abc")


def test_each_machine_of_a_run_has_its_own_prefix_the_same_on_every_ask() -> None:
    run = RunId.new()
    parts = [run.part(k) for k in range(5)]
    assert parts[0] == run and len({p.value for p in parts}) == 5
    assert [p.value for p in parts] == [run.part(k).value for k in range(5)]
    assert all(len(p.value) == 6 and int(p.value, 16) >= 0 for p in parts)


def test_a_real_agent_probes_ignores_a_damaged_ask_and_refuses_an_unknown_call() -> None:
    async def scenario() -> tuple[str, str]:
        channel = await ChildChannel.start()
        agent = Agent(channel)
        try:
            await channel.send(encode("not an ask"))  # ignored: the next ask is still answered
            probed = await agent.ask("probe", load_topology(TINY))
            with pytest.raises(RuntimeError, match="no call 'rm_rf'"):
                await agent.ask("rm_rf")
            return probed.mode, channel.name
        finally:
            await agent.close()

    mode, _ = asyncio.run(scenario())
    assert mode in ("netns", "loopback")


def test_an_agent_that_is_gone_fails_every_ask_with_peer_lost() -> None:
    async def scenario() -> None:
        channel = await ChildChannel.start()
        agent = Agent(channel)
        channel.process.kill()
        await channel.process.wait()
        with pytest.raises(PeerLost):
            await agent.ask("probe", load_topology(TINY))
        await agent.close()

    asyncio.run(scenario())
