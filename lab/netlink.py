"""pyroute2, configured once for use inside the orchestrator's asyncio process.

pyroute2 runs some namespace work in forked helper processes and stops them with SIGTERM.
A forked helper inherits asyncio's signal wakeup fd, so without this setting its SIGTERM
reaches the orchestrator's event loop as if the orchestrator itself had been terminated.
"""

import pyroute2.config

pyroute2.config.disable_mp_signal = True

from pyroute2 import NetlinkError, NetNS, netns  # noqa: E402  (after the setting above)

__all__ = ["NetNS", "NetlinkError", "netns"]
