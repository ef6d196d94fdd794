"""A fork server for peers: import py-libp2p once, then fork a peer per request.

A fresh interpreter with py-libp2p costs ~0.5 s and ~59 MB USS; a child forked from a parent
that has already imported it (trio started only after the fork) costs ~19 MB USS, because the
imported code and data stay shared copy-on-write. The orchestrator writes one JSON request
per host process per line on stdin ({"peers", "control", "netns", "log"}); the server answers {"pid"}
and, when a child ends, {"exit": pid, "status": code} (negative code: killed by that signal).
It is single-threaded (children of a threaded process can inherit held locks): a select loop
over stdin and a SIGCHLD wakeup pipe.
"""

from __future__ import annotations

import gc
import json
import os
import select
import signal
import sys
import traceback
from typing import Any

from nodes import peer


def _child(request: dict[str, Any], wakeup: tuple[int, int]) -> None:
    """In the forked child: its own session and log, then the peer; never returns."""
    status = 0
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in wakeup:
            os.close(fd)
        os.setsid()  # a Ctrl-C in the terminal reaches the orchestrator, which stops peers in order
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        argv = ["--index", *map(str, request["peers"]), "--control", request["control"]]
        peer.main(argv + (["--netns", request["netns"]] if request.get("netns") else []))
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
        status = 1
    finally:
        sys.stderr.flush()
        os._exit(status)


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _reap() -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _say({"exit": pid, "status": os.waitstatus_to_exitcode(status)})


def main() -> None:
    peer.die_with_parent()  # the children die with this server (their parent), it with the orchestrator
    # Everything imported so far moves to a generation the cyclic GC never scans, so a child's
    # collections do not write to (and so copy) the pages it shares with this server.
    gc.collect()
    gc.freeze()
    wakeup = os.pipe()
    os.set_blocking(wakeup[1], False)
    signal.set_wakeup_fd(wakeup[1])
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so the wakeup fd gets the signal
    stdin = sys.stdin.fileno()
    buffered = b""
    while True:
        try:
            readable, _, _ = select.select([stdin, wakeup[0]], [], [])
        except InterruptedError:
            continue
        if wakeup[0] in readable:
            os.read(wakeup[0], 4096)
            _reap()
        if stdin in readable:
            chunk = os.read(stdin, 65536)
            if not chunk:  # the orchestrator closed our stdin: its peers are stopped
                return
            buffered += chunk
            while b"\n" in buffered:
                line, buffered = buffered.split(b"\n", 1)
                request = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    _child(request, wakeup)
                _say({"pid": pid})


if __name__ == "__main__":
    main()
