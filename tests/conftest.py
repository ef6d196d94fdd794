"""Shared helpers: run the real `lab` command and look for anything a run left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from lab import runid
from lab.errors import CgroupError
from lab.network.netlink import netns
from lab.peers.cgroup import cpu_root
from nodes.protocol import Event

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "topologies" / "tiny.yaml"
DEFAULT = ROOT / "topologies" / "10-peers.yaml"
LAB = [sys.executable, "-m", "lab"]

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")


def has_cpu_controller() -> bool:
    try:
        cpu_root()
    except CgroupError:
        return False
    return True


needs_cpu_controller = pytest.mark.skipif(not has_cpu_controller(), reason="no cgroup cpu controller")


def event(op: str, ms: float, ok: bool = True, peer: int | None = 0, start_ns: int = 0, **fields: object) -> Event:
    """A hand-made event as peers report them: `ms` long, started at `start_ns`."""
    return Event.of({"op": op, "peer": peer, "start_ns": start_ns, "end_ns": start_ns + int(ms * 1e6), "ok": ok,
                     "error": None if ok else "x", **fields})


@contextmanager
def chromium() -> Iterator[Any]:
    """Debian's headless chromium (installed by install.sh --test) driven by selenium."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        yield browser
    finally:
        browser.quit()


def strict_json_loads(text: str) -> Any:
    """JSON as jq and browsers read it: NaN and Infinity are an error, not a number."""
    def refuse(constant: str) -> None:
        raise ValueError(f"not strict JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


def lab_command(*args: str) -> list[str]:
    return [*LAB, *args]


def run_lab(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(lab_command(*args), capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def write_topology(path: Path, base: Path = TINY, **changes: object) -> Path:
    data = yaml.safe_load(base.read_text())
    data.update(changes)
    path.write_text(yaml.safe_dump(data))
    return path


def leftovers(run: str) -> list[str]:
    """Namespaces and processes of one run still present."""
    found = [name for name in netns.listnetns() if runid.run_of_name(name) == run]
    for process in psutil.process_iter(["pid"]):
        try:
            if process.environ().get(runid.ENV_VAR) == run:
                found.append(f"pid {process.pid}")
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    if (runid.state_dir() / f"{run}.json").exists():
        found.append("state file")
    found += [str(d) for d in Path(tempfile.gettempdir()).glob(f"{runid.RunId(run).prefix}-delayer-*")]
    return found
