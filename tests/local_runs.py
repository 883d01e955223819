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

from lambda_sep.contract import exposures


def run(event: Mapping[str, Any], request_id: str) -> dict[str, Any]:
    """Behave as the obs_id asks (each exposure's, for a batch); return what the handler
    returns on success."""
    results = []
    for item in exposures(dict(event)):
        obs_id = item["obs_id"]
        if obs_id.endswith("hang"):
            time.sleep(3600)
        if obs_id.endswith("die"):
            os.kill(os.getpid(), signal.SIGKILL)
        results.append({"obs_id": obs_id, "status": "ok", "request_id": request_id,
                        "pid": os.getpid()})
    return {"batch": len(results), "results": results} if "batch" in event else results[0]
