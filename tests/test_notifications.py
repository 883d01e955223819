"""The archive's own notifications, end to end: moto S3 publishes its event notifications
to a moto SNS topic (moto emulates the bucket -> topic notification configuration, the
s3:TestEvent included), an SQS queue subscribed to the topic (raw delivery off, so each
message is SNS's envelope around the S3 event), and the real daemon long-polling it.

Message parsing is tested on its own below, on the shapes the AWS documentation gives.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
from astropy.io import fits
from harness import Pipeline
from notify_socket import NotifySocket

from daemon.config import load_config
from daemon.notifications import MalformedMessage, ObjectEvent, parse
from state.store import StateStore

MASTMIRROR = str(Path(sys.executable).with_name("mastmirror"))


def _s3_event(key: str, *, bucket: str = "stpubdata", name: str = "ObjectCreated:Put",
              etag: str = "0123456789abcdef0123456789abcdef", size: int = 16496640
              ) -> dict[str, Any]:
    """An S3 event notification as the S3 User Guide ("Event message structure") shows it."""
    return {"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": "2024-11-06T14:07:13.000Z", "eventName": name,
        "userIdentity": {"principalId": "AWS:EXAMPLE"},
        "requestParameters": {"sourceIPAddress": "192.0.2.1"},
        "responseElements": {"x-amz-request-id": "EXAMPLE", "x-amz-id-2": "EXAMPLE"},
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "stpubdata-hst",
               "bucket": {"name": bucket, "ownerIdentity": {"principalId": "EXAMPLE"},
                          "arn": f"arn:aws:s3:::{bucket}"},
               "object": {"key": key, "size": size, "eTag": etag,
                          "sequencer": "0055AED6DCD90281E5"}}}]}


def _sns(message: str) -> str:
    """SNS's envelope as an SQS subscriber (raw message delivery off) receives it."""
    return json.dumps({
        "Type": "Notification", "MessageId": str(uuid.uuid4()),
        "TopicArn": "arn:aws:sns:us-east-1:879230861493:stpubdata",
        "Message": message, "Timestamp": "2024-11-06T14:07:13.901Z",
        "SignatureVersion": "1", "Signature": "EXAMPLE",
        "SigningCertURL": "https://sns.us-east-1.amazonaws.com/SimpleNotificationService.pem",
        "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe"})


def test_parse_takes_the_documented_shapes_and_refuses_the_rest() -> None:
    key = "hst/public/icxe/icxe15wwq/icxe15wwq_flt.fits"
    event = ObjectEvent("ObjectCreated:Put", "stpubdata", key,
                        "0123456789abcdef0123456789abcdef", 16496640)
    assert parse(_sns(json.dumps(_s3_event(key)))) == [event]
    assert parse(json.dumps(_s3_event(key))) == [event]  # raw message delivery on
    # Keys arrive URL-encoded ("red flower.jpg" -> "red+flower.jpg").
    (spaced,) = parse(_sns(json.dumps(_s3_event("a/red+flower%2B1.fits"))))
    assert spaced.key == "a/red flower+1.fits"
    test_event = {"Service": "Amazon S3", "Event": "s3:TestEvent",
                  "Time": "2024-11-06T14:07:13.000Z", "Bucket": "stpubdata"}
    assert parse(_sns(json.dumps(test_event))) == []
    assert parse(json.dumps({"Type": "SubscriptionConfirmation", "TopicArn": "arn:x"})) == []
    for body, why in [("not json {", "not JSON"), ("[1, 2]", "not a JSON object"),
                      (_sns("hello"), "SNS Message is not JSON"),
                      (json.dumps({"Type": "Notification"}), "without a Message"),
                      (_sns(json.dumps({"Records": []})), "no S3 event Records"),
                      (_sns(json.dumps({"Records": [{"eventName": "x"}]})), "without a usable")]:
        with pytest.raises(MalformedMessage, match=why):
            parse(body)


def _queue(aws: str, bucket: str) -> tuple[str, Any]:
    """A topic the bucket notifies of every object created or removed, and a queue
    subscribed to it; returns the queue URL and an SQS client."""
    sns = boto3.client("sns", endpoint_url=aws, region_name="us-east-1")
    sqs = boto3.client("sqs", endpoint_url=aws, region_name="us-east-1")
    topic = sns.create_topic(Name=f"stpubdata-{uuid.uuid4().hex[:8]}")["TopicArn"]
    # A short visibility timeout: a message kept for later comes back within the test.
    url = sqs.create_queue(QueueName=f"mastmirror-{uuid.uuid4().hex[:8]}",
                           Attributes={"VisibilityTimeout": "3"})["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
    boto3.client("s3", endpoint_url=aws, region_name="us-east-1") \
        .put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={
            "TopicConfigurations": [{"TopicArn": topic,
                                     "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]}]})
    return url, (sqs, sns, topic)


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_the_daemon_acts_on_the_archive_notifications(pipeline: Pipeline, aws: str,
                                                      tmp_path: Path) -> None:
    p = pipeline
    url, (sqs, sns, topic) = _queue(aws, p.bucket)
    p.write_config(archive={"notifications": url},
                   schedule={"poll_minutes": 600.0, "refresh_per_hour": 0,
                             "dispatch_seconds": 0.2, "reconcile_seconds": 0.5})
    # The backfill (the queue holds S3's test event by now: dropped without ado).
    assert p.run_once().done == 6
    db = load_config(p.config_path).state_path

    def polls() -> int:
        with sqlite3.connect(db) as conn:
            return conn.execute("SELECT count(*) FROM polls WHERE finished_at IS NOT NULL"
                                ).fetchone()[0]

    def row(obs_id: str) -> dict[str, Any] | None:
        with StateStore(db, readonly=True) as s:
            return s.get(obs_id)

    log = tmp_path / "daemon.log"
    with NotifySocket.at_path() as notify, log.open("wb") as out:
        proc = subprocess.Popen([MASTMIRROR, "--config", str(p.config_path), "run"],
                                stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **notify.env()})
        try:
            notify.wait_for("READY", timeout=60)
            _wait(lambda: polls() == 2, 60, "the daemon's first poll")
            # Garbage straight into the queue, and garbage through the topic.
            sqs.send_message(QueueUrl=url, MessageBody="this is not a notification {")
            sns.publish(TopicArn=topic, Message="hello")
            # The archive reprocesses one exposure; another is released (MAST lists it, its
            # file lands in the bucket); a file lands that MAST does not list.
            changed = p.archive.exposures()[3]
            new_etag = p.reprocess([changed])[changed.dataset]
            (released,) = p.release(1)
            p.s3().put_object(Bucket=p.bucket, Key="hst/public/iabc/iabc9999q/iabc9999q_flt.fits",
                              Body=b"SIMPLE")
            _wait(lambda: (row(changed.dataset) or {}).get("generation") == 2
                  and row(changed.dataset)["state"] == "done", 120, "the re-catalogue")
            _wait(lambda: (row(released.dataset) or {}).get("state") == "done", 120,
                  "the new exposure's catalog")
            assert proc.poll() is None  # the garbage did not stop it

            def queue_empty() -> bool:
                attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
                    "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])
                return all(v == "0" for v in attrs["Attributes"].values())
            _wait(queue_empty, 30, "every message deleted")
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=60)
    assert code == 0, log.read_text()[-3000:]

    catalog = p.output_dir / changed.key.replace(".fits", "_sep.fits")
    assert fits.getheader(catalog, 1)["INETAG"] == new_etag
    assert polls() == 2  # no poll found the new exposure: the notification did
    with StateStore(db, readonly=True) as s:
        assert s.get("iabc9999q") is None  # MAST does not list it: not recorded
        assert s.counts()["done"] == 7 and s.counts()["total"] == 7
        assert s.get(released.dataset)["poll_id"] is None
        snap = s.snapshot()
    assert float(snap.freshness["notify_dropped"]) == 2
    assert float(snap.freshness["notify_changed"]) == 1
    assert float(snap.freshness["notify_recorded"]) == 1
    events = [json.loads(line) for line in log.read_text().splitlines()
              if line.startswith("{")]
    dropped = [e for e in events if e.get("event", "").startswith("notification dropped")]
    assert len(dropped) == 2
    assert any(e.get("event") == "recorded from an archive notification"
               and e.get("obs_id") == released.dataset for e in events)
