"""``LambdaExecutor``: asynchronous invocations against moto's Lambda and against the Lambda
stand-in with faults (throttling, 5xx, dropped connections), counted at the server."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from lambda_helpers import FUNCTION, tiny_bundle

from daemon.config import config_from_dict
from daemon.dispatch import dispatch
from daemon.executors import Executor, Submitted
from daemon.lambda_deploy import FunctionSpec, deploy
from daemon.lambda_invoke import LambdaExecutor
from daemon.service import make_executor
from standin.awslambda import LambdaStandIn
from state.store import Discovered, StateStore


def _events(n: int, prefix: str = "i") -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        obs = f"{prefix}{i:0{9 - len(prefix)}d}"
        out.append({"obs_id": obs, "input": {"bucket": "stpubdata",
                    "key": f"hst/public/{obs[:4]}/{obs}/{obs}_flt.fits"},
                    "output": "s3://mirror-out/catalogs", "sep": {}, "attempt": 1})
    return out


def _accepted(standin: LambdaStandIn, events: list[dict[str, Any]]) -> list[int]:
    by_obs = standin.stats()["accepted_by_obs"]
    return [by_obs.get(e["obs_id"], 0) for e in events]


# -- moto ----------------------------------------------------------------------------------

def test_event_invocations_on_moto_return_request_ids(moto_lambda: str, role_arn: str,
                                                      tmp_path: Path) -> None:
    name = f"sep-{uuid.uuid4().hex[:8]}"
    deploy(FunctionSpec(name=name, runtime="python3.12", architecture="x86_64",
                        memory_mb=1024, timeout_seconds=60, role_arn=role_arn,
                        environment={}, async_retries=0, max_event_age_seconds=21600,
                        log_retention_days=30), tiny_bundle(tmp_path / "b.zip"))
    executor: Executor = LambdaExecutor(name, concurrency=4, retry_mode="standard")
    events = _events(6)
    got = executor.submit(events)
    assert [(s.obs_id, s.dispatch, s.error) for s in got] == [
        (e["obs_id"], 1, None) for e in events]
    ids = [s.request_id for s in got]
    assert all(ids) and len(set(ids)) == len(ids)
    assert executor.drain_lost() == [] and executor.close() == []
    assert executor.submit(events[:1])[0].error == "the Lambda executor is closed"


# -- the stand-in, with faults ---------------------------------------------------------------

def test_client_is_shared_and_sized(standin: LambdaStandIn) -> None:
    ex = LambdaExecutor(FUNCTION, concurrency=12, retry_mode="adaptive", max_attempts=4)
    cfg = ex.client.meta.config
    assert cfg.retries == {"mode": "adaptive", "total_max_attempts": 4}
    assert cfg.max_pool_connections == 12
    assert ex.client.meta.endpoint_url == standin.url  # from AWS_ENDPOINT_URL_LAMBDA only
    got = ex.submit(_events(40))
    assert all(s.error is None for s in got)
    assert standin.stats()["accepted"] == 40
    ex.close()


@pytest.mark.parametrize("fault", ["throttle", "500", "502", "503", "drop"])
def test_transient_faults_are_retried_and_nothing_is_lost(standin: LambdaStandIn,
                                                          fault: str) -> None:
    events = _events(24)
    standin.arm(fault, times=12)  # the first 12 requests fail, whichever events they carry
    ex = LambdaExecutor(FUNCTION, concurrency=8, retry_mode="standard", max_attempts=6)
    got = ex.submit(events)
    ex.close()
    assert [s.error for s in got] == [None] * len(events)
    stats = standin.stats()
    assert stats["faults"] == {fault: 12}
    assert stats["received"] == len(events) + 12  # each refused request, one more request
    # Every event reached the function exactly once: none lost, none twice.
    assert _accepted(standin, events) == [1] * len(events)


def test_dropped_answers_mean_at_least_once(standin: LambdaStandIn) -> None:
    events = _events(10)
    standin.arm("drop-accepted", times=3)  # accepted, then the connection drops unanswered
    ex = LambdaExecutor(FUNCTION, concurrency=4, retry_mode="standard", max_attempts=3)
    got = ex.submit(events)
    ex.close()
    assert all(s.error is None for s in got)
    counts = _accepted(standin, events)
    # No event is lost; each lost answer made one more delivery (of the same event, or of
    # its retry if that answer was lost too). The output key is deterministic, so a second
    # run rewrites the same catalog.
    assert min(counts) == 1
    assert sum(counts) == len(events) + 3
    assert 1 <= sum(1 for c in counts if c > 1) <= 3
    assert standin.stats()["faults"] == {"drop-accepted": 3}


def test_adaptive_mode_backs_off_and_delivers(standin: LambdaStandIn) -> None:
    # Few throttles: after a burst, adaptive mode's rate limiter drops to about 0.5 calls/s
    # and takes seconds to recover (why "standard" is the default).
    events = _events(12)
    standin.arm("throttle", times=2)
    ex = LambdaExecutor(FUNCTION, concurrency=4, retry_mode="adaptive", max_attempts=5)
    got = ex.submit(events)
    ex.close()
    assert all(s.error is None for s in got)
    assert _accepted(standin, events) == [1] * len(events)


def test_undeliverable_event_comes_back_as_an_error(standin: LambdaStandIn) -> None:
    events = _events(8)
    blocked = events[3]["obs_id"]
    standin.arm("throttle", times=None, obs_id=blocked)  # always throttled
    ex = LambdaExecutor(FUNCTION, concurrency=4, retry_mode="standard", max_attempts=2)
    got = ex.submit(events)
    ex.close()
    bad = [s for s in got if s.error is not None]
    assert [s.obs_id for s in bad] == [blocked]
    assert bad[0].request_id is None
    assert "TooManyRequestsException" in bad[0].error and "after 2 attempt(s)" in bad[0].error
    assert standin.stats()["faults"] == {"throttle": 2}  # max_attempts, no more
    counts = _accepted(standin, events)
    assert counts[3] == 0 and counts[:3] + counts[4:] == [1] * 7


def test_unknown_function_is_refused_without_retries(standin: LambdaStandIn) -> None:
    ex = LambdaExecutor(f"{FUNCTION}-missing", concurrency=2, retry_mode="standard")
    (refused,) = ex.submit(_events(1))
    ex.close()
    assert refused.request_id is None
    assert "ResourceNotFoundException (HTTP 404)" in (refused.error or "")
    assert "after 1 attempt(s)" in (refused.error or "")
    assert standin.stats()["received"] == 1


def test_unreachable_endpoint(standin_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # A port nobody listens on (bound, then closed): refused connections, retried, reported.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", f"http://127.0.0.1:{port}")
    ex = LambdaExecutor(FUNCTION, concurrency=2, retry_mode="standard", max_attempts=2)
    (got,) = ex.submit(_events(1))
    ex.close()
    assert got.request_id is None and (got.error or "").startswith("Lambda not reached:")


def test_sender_processes_deliver_in_order(standin: LambdaStandIn) -> None:
    events = _events(50)
    standin.arm("503", times=5)
    ex = LambdaExecutor(FUNCTION, concurrency=8, processes=2, retry_mode="standard")
    try:
        with pytest.raises(AttributeError):
            _ = ex.client  # each sender process has its own
        got = ex.submit(events)
        assert [s.obs_id for s in got] == [e["obs_id"] for e in events]
        assert all(s.error is None and s.request_id for s in got)
        assert len({s.request_id for s in got}) == len(events)
        assert _accepted(standin, events) == [1] * len(events)
        assert ex.submit([]) == []
    finally:
        assert ex.close() == []
    assert ex.submit(events[:1])[0].error == "the Lambda executor is closed"


# -- through dispatch ----------------------------------------------------------------------

def test_dispatch_records_request_ids_and_unclaims_the_undeliverable(
        standin: LambdaStandIn, tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    found = [Discovered(e["obs_id"], e["input"]["key"], 60000.0 + i, str(i))
             for i, e in enumerate(_events(12))]
    poll = store.begin_poll("backfill", 59000.0)
    store.record_window(poll, 61000.0, found, observations=12, products=12)
    blocked = found[5].obs_id
    standin.arm("throttle", times=None, obs_id=blocked)
    config = config_from_dict({
        "executor": {"kind": "lambda", "function": FUNCTION, "concurrency": 100},
        "lambda": {"invoke_threads": 4, "invoke_processes": 1,
                   "invoke_retry_mode": "standard", "invoke_max_attempts": 2},
        "output": {"url": "s3://mirror-out/catalogs"}, "state": {"path": str(store.path)}})
    executor = make_executor(config)
    assert isinstance(executor, LambdaExecutor)
    try:
        out = dispatch(store, executor, config, run_id="t")
    finally:
        executor.close()
    assert (out.sent, out.returned, out.in_flight) == (11, 1, 11)
    back = store.get(blocked)
    assert back is not None and back["state"] == "new" and back["attempts"] == 0
    assert "TooManyRequestsException" in back["error"]
    for f in found:
        if f.obs_id != blocked:
            row = store.get(f.obs_id)
            assert row is not None and row["state"] == "dispatched" and row["request_id"]
    store.close()


def test_submit_is_concurrent(standin: LambdaStandIn) -> None:
    # 64 events, each answered after a 50 ms delay at the stand-in's side would take 3.2 s
    # one at a time; with 16 threads they overlap.
    delay = 0.05
    original = standin.handle_invoke

    def slow(req: Any, name: str, qualifier: str | None, body: bytes) -> None:
        time.sleep(delay)
        original(req, name, qualifier, body)

    standin.handle_invoke = slow  # type: ignore[method-assign]
    ex = LambdaExecutor(FUNCTION, concurrency=16, retry_mode="standard")
    events = _events(64)
    t0 = time.perf_counter()
    got = ex.submit(events)
    elapsed = time.perf_counter() - t0
    ex.close()
    assert all(isinstance(s, Submitted) and s.error is None for s in got)
    assert elapsed < len(events) * delay / 4
