"""A stand-in for the handler that a local pool worker runs, with runs that go wrong on purpose.

Module level, so a spawned worker can import it by name. The obs_id says what the run does:
one ending in ``hang`` never returns (a stuck image), one ending in ``die`` kills its own
worker (the out-of-memory killer, an operator's kill -9); any other returns at once.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Mapping
from typing import Any


def run(event: Mapping[str, Any], request_id: str) -> dict[str, Any]:
    """Behave as the obs_id asks; return what the handler returns on success."""
    obs_id = event["obs_id"]
    if obs_id.endswith("hang"):
        time.sleep(3600)
    if obs_id.endswith("die"):
        os.kill(os.getpid(), signal.SIGKILL)
    return {"obs_id": obs_id, "status": "ok", "request_id": request_id, "pid": os.getpid()}
