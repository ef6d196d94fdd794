"""Control-plane framing shared by the orchestrator and the peers: one JSON object per line.

Kept free of libp2p and trio imports so the orchestrator can use it cheaply.
"""

import json
from typing import Any

Message = dict[str, Any]

# Limit of one control message; package lists of large runs stay far below it.
MAX_LINE = 16 * 1024 * 1024


def encode(message: Message) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> Message:
    message = json.loads(line)
    if not isinstance(message, dict) or "type" not in message:
        raise ValueError(f"control message without a type: {line[:200]!r}")
    return message
