"""The archive's own notifications: an SQS queue subscribed to the archive bucket's SNS topic.

The only module that talks to SQS. The AWS open-data registry lists an SNS topic of new data
for the HST public dataset; an SQS queue of the operator's, subscribed to it, receives each
S3 event notification (``{"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket":
{"name"}, "object": {"key", "size", "eTag"}}}]}``, the key URL-encoded) wrapped in SNS's
envelope (``{"Type": "Notification", "Message": "<the S3 event as a JSON string>", ...}``;
raw message delivery off). docs/FRESHNESS.md gives the sources and the set-up.

Each message is acted on, and deleted only once its effect is committed:

* a key of a catalogued (done) exposure: its input is HEADed and recorded exactly as a
  refresh would (another ETag: re-catalogued as the next generation; gone: withdrawn). The
  HEAD, not the message, decides, so a late, repeated or out-of-order message changes nothing;
* a key of an exposure being catalogued (new or dispatched): the message is left in the queue
  and comes back after the queue's visibility timeout, when the dataset has settled;
* a key not seen yet: MAST is asked about the dataset (the same selection a poll makes); a
  public exposure it lists with that file is recorded as new (the discovery cursor does not
  move); while MAST does not answer, the message stays in the queue;
* anything else (other files, other buckets, S3's test event) is dropped, and a message that
  is not a notification at all is logged and dropped: it never stops the daemon.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import unquote_plus, urlsplit

import boto3
import structlog
from botocore.config import Config as BotoConfig

from daemon.archive import ArchiveBucket
from daemon.config import Config
from daemon.discovery import confirm
from daemon.mast import MastClient, MastError
from daemon.outputs import OutputStore
from daemon.refresh import check
from lambda_sep.contract import key_dataset
from state.store import Catalogued, StateStore

log = structlog.get_logger("mastmirror.notifications")

#: SQS's longest long poll (ReceiveMessage WaitTimeSeconds, 0-20).
LONG_POLL_S = 20
#: A message kept for a dataset still being catalogued is dropped after this many receives.
MAX_RECEIVES = 20
_SQS_HOST_RE = re.compile(r"^sqs\.([a-z0-9-]+)\.amazonaws\.com$"
                          r"|^([a-z0-9-]+)\.queue\.amazonaws\.com$")


class MalformedMessage(ValueError):
    """A queue message that is not an S3 event notification; the text says what is wrong."""


@dataclass(frozen=True)
class ObjectEvent:
    """One record of an S3 event notification."""

    name: str  # "ObjectCreated:Put", "ObjectRemoved:Delete", ...
    bucket: str
    key: str  # URL-decoded
    etag: str | None = None
    size: int | None = None


class Message(NamedTuple):
    """One SQS message: its id, the receipt handle that deletes it, its body, and how many
    times SQS has handed it out (ApproximateReceiveCount)."""

    id: str
    receipt: str
    body: str
    receives: int = 1


def parse(body: str) -> list[ObjectEvent]:
    """The S3 events in a queue message: an SNS notification wrapping an S3 event (raw
    delivery off), or the S3 event itself (raw delivery on). S3's test event and SNS's
    subscription messages hold none. Raises MalformedMessage for anything else."""
    try:
        doc = json.loads(body)
    except (TypeError, ValueError):
        raise MalformedMessage("not JSON") from None
    if not isinstance(doc, dict):
        raise MalformedMessage("not a JSON object")
    kind = doc.get("Type")
    if kind in ("SubscriptionConfirmation", "UnsubscribeConfirmation"):
        log.warning("SNS subscription message: confirm the queue's subscription to the topic "
                    "(see docs/FRESHNESS.md)", type=kind, topic=doc.get("TopicArn"))
        return []
    if kind == "Notification":
        inner = doc.get("Message")
        if not isinstance(inner, str):
            raise MalformedMessage("SNS notification without a Message string")
        try:
            doc = json.loads(inner)
        except ValueError:
            raise MalformedMessage("the SNS Message is not JSON") from None
        if not isinstance(doc, dict):
            raise MalformedMessage("the SNS Message is not a JSON object")
    if doc.get("Event") == "s3:TestEvent":
        return []
    records = doc.get("Records")
    if not isinstance(records, list) or not records:
        raise MalformedMessage("no S3 event Records")
    return [_record(r) for r in records]


def _record(record: Any) -> ObjectEvent:
    try:
        s3 = record["s3"]
        name, bucket, obj = record["eventName"], s3["bucket"]["name"], s3["object"]
        key = obj["key"]
        if not all(isinstance(v, str) for v in (name, bucket, key)):
            raise TypeError("eventName, bucket name and key must be strings")
        size = obj.get("size")
        etag = obj.get("eTag")
        return ObjectEvent(name, bucket, unquote_plus(key),
                           str(etag).strip('"') if etag else None,
                           int(size) if size is not None else None)
    except (KeyError, TypeError, ValueError) as exc:
        raise MalformedMessage(f"an S3 event record without a usable eventName, bucket or "
                               f"object key: {exc!r}") from None


class Queue:
    """An SQS queue, by URL, with the standard AWS credentials (the queue is the operator's)."""

    def __init__(self, url: str, *, client: Any = None) -> None:
        self.url = url
        self._client = client or _client(url)

    def receive(self, *, wait_s: int = LONG_POLL_S, max_messages: int = 10) -> list[Message]:
        """Up to ``max_messages`` messages, waiting up to ``wait_s`` for the first."""
        resp = self._client.receive_message(
            QueueUrl=self.url, MaxNumberOfMessages=max_messages, WaitTimeSeconds=wait_s,
            MessageSystemAttributeNames=["ApproximateReceiveCount"])
        return [Message(m["MessageId"], m["ReceiptHandle"], m.get("Body", ""),
                        int(m.get("Attributes", {}).get("ApproximateReceiveCount", 1)))
                for m in resp.get("Messages", ())]

    def delete(self, messages: Sequence[Message]) -> None:
        """Delete handled messages (ten per request, SQS's batch limit). A delete that fails
        is logged: the message comes back, and acting on it again changes nothing."""
        for start in range(0, len(messages), 10):
            batch = messages[start:start + 10]
            resp = self._client.delete_message_batch(QueueUrl=self.url, Entries=[
                {"Id": str(i), "ReceiptHandle": m.receipt} for i, m in enumerate(batch)])
            for failed in resp.get("Failed", ()):
                log.warning("notification not deleted; it will be handled again",
                            message_id=batch[int(failed["Id"])].id, reason=failed.get("Message"))


def _client(url: str) -> Any:
    """An SQS client for the queue's region (from its URL, else the AWS configuration)."""
    match = _SQS_HOST_RE.match(urlsplit(url).hostname or "")
    session = boto3.session.Session()
    region = next((g for g in match.groups() if g), None) if match else None
    return session.client("sqs", region_name=region or session.region_name or "us-east-1",
                          config=BotoConfig(retries={"mode": "standard", "total_max_attempts": 5},
                                            connect_timeout=5, read_timeout=LONG_POLL_S + 10))


@dataclass
class NotifyOutcome:
    """What one batch of messages did."""

    received: int = 0
    deleted: int = 0
    kept: int = 0
    dropped: int = 0  # malformed
    ignored: int = 0  # events about nothing mastmirror catalogues
    changed: list[str] = field(default_factory=list)
    withdrawn: list[str] = field(default_factory=list)
    recorded: list[str] = field(default_factory=list)  # new exposures MAST confirmed


class Listener:
    """Receives notifications and acts on them (see the module)."""

    def __init__(self, queue: Queue, store: StateStore, archive: ArchiveBucket, *,
                 mast: MastClient, config: Config, outputs: OutputStore | None = None) -> None:
        self.queue = queue
        self.store = store
        self.archive = archive
        self.mast = mast
        self.config = config
        self.outputs = outputs
        self._suffix = f"_{config.mast.product.lower()}.fits"

    def receive(self, *, wait_s: int = LONG_POLL_S) -> list[Message]:
        """One (long) poll of the queue."""
        return self.queue.receive(wait_s=wait_s)

    def handle(self, messages: Sequence[Message], *, now: float | None = None) -> NotifyOutcome:
        """Act on ``messages``, commit, then delete those that are settled."""
        out = NotifyOutcome(received=len(messages))
        events: dict[str, list[tuple[str, ObjectEvent]]] = {}  # message id -> (obs_id, event)
        for m in messages:
            try:
                found = parse(m.body)
            except MalformedMessage as exc:
                log.warning("notification dropped: not an S3 event notification",
                            message_id=m.id, reason=str(exc), body=m.body[:200])
                out.dropped += 1
                events[m.id] = []
                continue
            events[m.id] = [(obs_id, e) for e in found
                            if (obs_id := self._dataset(e)) is not None]
            out.ignored += len(found) - len(events[m.id])
        wanted = {obs_id for pairs in events.values() for obs_id, _ in pairs}
        known = self.store.known(wanted)
        settled = self._settle(events, known, out, now)
        done = [m for m in messages if settled.get(m.id, True)]
        keep = [m for m in messages if not settled.get(m.id, True)]
        for m in keep:
            if m.receives >= MAX_RECEIVES:
                log.warning("notification dropped after being kept too long",
                            message_id=m.id, receives=m.receives)
                done.append(m)
        out.kept = len(messages) - len(done)
        self.store.set_meta({"notify_at": repr(time.time() if now is None else now)}, add={
            "notify_received": out.received, "notify_dropped": out.dropped,
            "notify_ignored": out.ignored, "notify_recorded": len(out.recorded)})
        if done:
            self.queue.delete(done)
        out.deleted = len(done)
        return out

    def _dataset(self, event: ObjectEvent) -> str | None:
        """The dataset an event's key is the catalogued file of, if it is one."""
        if event.bucket != self.config.archive.bucket or not (
                event.name.startswith("ObjectCreated:") or event.name.startswith("ObjectRemoved:")):
            return None
        try:
            dataset = key_dataset(event.key)  # the archive's layout, as the contract has it
        except ValueError:
            return None
        return dataset if event.key.endswith(self._suffix) else None

    def _settle(self, events: dict[str, list[tuple[str, ObjectEvent]]],
                known: dict[str, Catalogued], out: NotifyOutcome,
                now: float | None) -> dict[str, bool]:
        """Commit the effects; which messages are settled (may be deleted)."""
        to_check: dict[str, Catalogued] = {}
        unseen: dict[str, str] = {}  # obs_id -> key
        waiting: set[str] = set()
        for pairs in events.values():
            for obs_id, e in pairs:
                row = known.get(obs_id)
                if row is None:
                    if e.name.startswith("ObjectCreated:"):
                        unseen[obs_id] = e.key
                    else:
                        out.ignored += 1
                elif row.input_key != e.key:
                    out.ignored += 1  # another file of a dataset mastmirror knows
                elif row.state == "done":
                    to_check[obs_id] = row
                elif row.state in ("new", "dispatched"):
                    waiting.add(obs_id)  # being catalogued: look again once it settles
                    log.info("notification kept until the dataset settles", obs_id=obs_id,
                             state=row.state)
                else:
                    out.ignored += 1
                    log.info("notification about a dataset that is not catalogued",
                             obs_id=obs_id, state=row.state, event=e.name)
        if to_check:
            found = check(self.store, self.archive, list(to_check.values()),
                          outputs=self.outputs, source="notify", now=now)
            out.changed, out.withdrawn = found.changed, found.withdrawn
            waiting.update(found.unknown)  # not checked: the message comes back
        unanswered = self._record(unseen, out, now)
        waiting.update(unanswered)
        return {mid: not any(obs_id in waiting for obs_id, _ in pairs)
                for mid, pairs in events.items()}

    def _record(self, unseen: dict[str, str], out: NotifyOutcome,
                now: float | None) -> set[str]:
        """Confirm unseen datasets with MAST and record those it lists with that file;
        returns the ones to ask about again (MAST did not answer)."""
        if not unseen:
            return set()
        try:
            listed = confirm(self.mast, self.config.mast, unseen, now=now)
        except MastError as exc:
            for obs_id in unseen:
                log.warning("notification kept: MAST did not confirm the new key",
                            obs_id=obs_id, error=str(exc))
            return set(unseen)
        matching = [d for d in listed if unseen.get(d.obs_id) == d.input_key]
        out.recorded = self.store.record_found(matching, now=now)
        for obs_id in out.recorded:
            log.info("recorded from an archive notification", obs_id=obs_id,
                     key=unseen[obs_id])
        for obs_id in sorted(set(unseen) - {d.obs_id for d in matching}):
            out.ignored += 1
            log.info("notification about a key MAST does not list as a public exposure",
                     obs_id=obs_id, key=unseen[obs_id])
        return set()
