"""The run's Unix sockets: only their owner may connect, and what is not a message gets an error
line and the connection closed, never a crash of the server."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, cast

import pytest

from lab.peers.fleet import Fleet
from lab.shaping.links import Links
from lab.shaping.live import REQUEST_LIMIT, LiveLinks
from lab.sockets import owner_only_server
from nodes import wire
from nodes.protocol import Event

CONNECT_AS_NOBODY = """
import os, socket, sys
os.setgid(65534); os.setuid(65534)
try:
    socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).connect(sys.argv[1])
except PermissionError:
    print("refused")
else:
    print("connected")
"""


def connect_as_nobody(path: Path) -> str:
    done = subprocess.run([sys.executable, "-c", CONNECT_AS_NOBODY, str(path)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another user")
def test_only_the_owner_can_connect() -> None:
    async def scenario(directory: Path) -> tuple[int, str, str]:
        async def nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        path = directory / "control.sock"
        server = await owner_only_server(nothing, path, 1024)
        mode = stat.S_IMODE(path.stat().st_mode)
        refused = await asyncio.to_thread(connect_as_nobody, path)
        path.chmod(0o666)  # the same socket opened to all: the check above can fail
        opened = await asyncio.to_thread(connect_as_nobody, path)
        server.close()
        return mode, refused, opened

    with tempfile.TemporaryDirectory() as name:
        Path(name).chmod(0o755)  # the directory lets anyone through (pytest's own does not): the socket's mode must refuse
        mode, refused, opened = asyncio.run(scenario(Path(name)))
    assert (mode, refused, opened) == (0o600, "refused", "connected")


async def exchange(path: Path, payload: bytes) -> list[Any]:
    """Sends `payload`, returns the JSON lines the server answered before it closed."""
    reader, writer = await asyncio.open_unix_connection(str(path), limit=2 * wire.MAX_LINE)
    writer.write(payload)
    await writer.drain()
    lines = []
    while line := await asyncio.wait_for(reader.readline(), 10):
        lines.append(json.loads(line))
    writer.close()
    return lines


def test_the_control_socket_answers_what_is_not_a_message_and_keeps_serving(tmp_path: Path) -> None:
    events: list[Event] = []

    async def scenario() -> list[list[Any]]:
        fleet = Fleet("abcdef", tmp_path / "control.sock", tmp_path, events.append)
        await fleet.open()
        replies = []
        for payload in (b"not json\n", b"[1, 2]\n", b'{"kind": "hello"}\n', b'{"type": "hello"}\n',
                        b'{"type": "hello", "index": 7}\n', b'{"type": "hello", "index": "0"}\n',
                        b'{"type": "event", "op": "get", "peer": 0, "start_ns": 0, "end_ns": 1, "ok": true}\n',
                        b'{"type": "result", "id": 1}\n', b"{" + b" " * (wire.MAX_LINE + 10) + b"}\n"):
            replies.append(await exchange(tmp_path / "control.sock", payload))
        await fleet.stop()
        return replies

    replies = asyncio.run(scenario())
    assert all(len(r) == 1 and r[0]["type"] == "error" and "malformed control message" in r[0]["error"] for r in replies), replies
    assert "not a peer of this run" in replies[4][0]["error"]
    assert events == []  # an event from a connection that said no hello is not the run's


def test_the_netem_socket_answers_bad_and_oversized_requests(tmp_path: Path) -> None:
    async def scenario() -> list[list[Any]]:
        live = LiveLinks(cast(Links, None), lambda event: None, 0)  # no request below reaches the links
        path = tmp_path / "impairment.sock"
        await live.serve(path)
        replies = [await exchange(path, payload) for payload in
                   (b"not json\n", b'{"op": "fly"}\n', b'{"op": "set", "peers": "all"}\n', b"x" * (REQUEST_LIMIT + 1) + b"\n")]
        assert live.server is not None
        live.server.close()
        return replies

    bad, unknown, wrong, oversized = asyncio.run(scenario())
    assert bad[0]["ok"] is False and "bad request" in bad[0]["error"]
    assert unknown[0]["ok"] is False and "op 'fly': one of set, clear, show, verify" in unknown[0]["error"]
    assert wrong[0]["ok"] is False and "peers: a list of peer indexes" in wrong[0]["error"]
    assert oversized[0]["ok"] is False and f"longer than {REQUEST_LIMIT} bytes" in oversized[0]["error"]

