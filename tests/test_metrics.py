"""The Prometheus endpoint: scraped with a real HTTP client, parsed with prometheus_client's
own parser, after a real cycle of the daemon; the spend estimate and the error counters."""

from __future__ import annotations

import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from harness import Pipeline
from prometheus_client.parser import text_string_to_metric_families
from s3_fault_proxy import S3FaultProxy

from daemon.config import ConfigError, config_from_dict, load_config
from daemon.discovery import PollOutcome
from daemon.dispatch import LAMBDA_REQUESTS
from daemon.metrics import Metrics, mast_error_kind
from daemon.prices import LAMBDA_GB_S, LAMBDA_REQUEST, S3_PUT
from daemon.reconcile import LAMBDA_RUN_MS, OUTPUT_PUTS
from daemon.refresh import RefreshOutcome
from daemon.service import Service
from lambda_sep.storage import S3_CONFIG, StorageError, open_store
from state.store import StateStore


def _scrape(address: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the endpoint, keyed by name and sorted labels."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_the_endpoint_after_a_cycle(pipeline: Pipeline) -> None:
    p = pipeline
    p.write_config(metrics={"listen": "127.0.0.1:0"})
    n = len(p.archive.exposures())
    service = Service(load_config(p.config_path), config_path=p.config_path)
    service.open()
    try:
        assert service.metrics is not None
        address = service.metrics._server.server_address  # type: ignore[union-attr]
        summary = service.run_once()
        assert summary.done == n
        got = _scrape(f"{address[0]}:{address[1]}")
    finally:
        service.close()
    assert got[("mastmirror_datasets", (("state", "done"),))] == n
    for state in ("new", "waiting", "dispatched", "failed", "skipped"):
        assert got[("mastmirror_datasets", (("state", state),))] == 0
    assert got[("mastmirror_in_flight", ())] == 0
    assert got[("mastmirror_oldest_in_flight_age_seconds", ())] == 0
    assert got[("mastmirror_dispatched_datasets_total", ())] == n
    assert got[("mastmirror_invocations_total", ())] == n
    assert got[("mastmirror_reconciled_total", (("outcome", "done"),))] == n
    assert got[("mastmirror_reconcile_passes_total", ())] >= 1
    assert got[("mastmirror_polls_total", (("ok", "true"),))] == 1
    assert got[("mastmirror_last_poll_ok", ())] == 1
    assert got[("mastmirror_last_poll_new", ())] == n
    assert 0 <= got[("mastmirror_last_poll_age_seconds", ())] < 120
    # The local pool and a directory output cost nothing.
    assert got[("mastmirror_estimated_spend_usd", (("service", "lambda"),))] == 0
    assert got[("mastmirror_estimated_spend_usd", (("service", "s3"),))] == 0


def _metrics(tmp_path: Path, **sections: dict[str, Any]) -> tuple[Metrics, StateStore, str]:
    store = StateStore(tmp_path / "state.db")
    metrics = Metrics(store, config_from_dict(sections))
    return metrics, store, metrics.serve("127.0.0.1:0")


def test_spend_and_errors(tmp_path: Path) -> None:
    metrics, store, address = _metrics(tmp_path, **{"lambda": {"memory_mb": 2048,
                                                               "architecture": "arm64"}})
    try:
        # 300 s of catalogs made on Lambda, 1,000 invocations, 1,200 results written to S3.
        store.set_meta({}, add={LAMBDA_RUN_MS: 300_000, LAMBDA_REQUESTS: 1000,
                                OUTPUT_PUTS: 1200})
        metrics.polled(PollOutcome(1, "poll", ok=False,
                                   error="MAST observations query timed out (http://x)"))
        metrics.polled(PollOutcome(2, "poll", ok=True))
        metrics.refreshed(RefreshOutcome(unknown={"icxe15wwq": "SlowDown",
                                                  "icxe15wxq": "HEAD and LIST both refused"}))
        got = _scrape(address)
    finally:
        metrics.close()
        store.close()
    assert got[("mastmirror_estimated_spend_usd", (("service", "lambda"),))] == pytest.approx(
        300 * 2.0 * LAMBDA_GB_S["arm64"] + 1000 * LAMBDA_REQUEST)
    assert got[("mastmirror_estimated_spend_usd", (("service", "s3"),))] == pytest.approx(
        1200 * S3_PUT)
    assert got[("mastmirror_errors_total", (("kind", "timeout"), ("system", "mast")))] == 1
    assert got[("mastmirror_polls_total", (("ok", "false"),))] == 1
    assert got[("mastmirror_errors_total", (("kind", "refresh_unchecked"),
                                            ("system", "s3")))] == 2
    assert got[("mastmirror_last_poll_age_seconds", ())] != got[(
        "mastmirror_last_poll_age_seconds", ())]  # NaN: no poll in this database


def test_mast_error_kinds() -> None:
    assert mast_error_kind("MAST products query failed: HTTP 503 from https://x") == "http"
    assert mast_error_kind("MAST observations query could not connect to x: refused") == \
        "connection"
    assert mast_error_kind("MAST products answer is incomplete: 3 rows received") == "answer"
    assert mast_error_kind("something else") == "other"


def test_s3_retries_are_counted_by_code(tmp_path: Path, aws: str) -> None:
    metrics, store, address = _metrics(tmp_path)
    bucket = f"out-{uuid.uuid4().hex[:8]}"
    import boto3

    boto3.client("s3").create_bucket(Bucket=bucket)
    try:
        with S3FaultProxy(aws, rate=1.0, kinds=("slowdown",), methods=("GET",)) as proxy:
            client = boto3.session.Session().client("s3", endpoint_url=proxy.url,
                                                    config=S3_CONFIG)
            metrics.s3_retries(client)
            with pytest.raises(StorageError):
                open_store(f"s3://{bucket}", client=client).get("k")
            got = _scrape(address)
    finally:
        metrics.close()
        store.close()
    # Every attempt answered SlowDown (five: botocore's standard mode as storage sets it).
    assert got[("mastmirror_errors_total", (("kind", "SlowDown"), ("system", "s3")))] == 5


def test_listen_is_checked(tmp_path: Path) -> None:
    for bad in ("9464", "localhost:99999", "a b:1"):
        path = tmp_path / "c.toml"
        path.write_text(f'[metrics]\nlisten = "{bad}"\n')
        with pytest.raises(ConfigError, match=r"\[metrics\] listen"):
            load_config(path)
