"""Dispatch: the in-flight bound, the events, and what happens when an executor fails."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from daemon.config import config_from_dict
from daemon.dispatch import dispatch, event_for, unsent
from daemon.executors import Submitted
from lambda_sep.contract import exposures
from state.store import DatasetRow, Discovered, StateStore


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    s = StateStore(tmp_path / "state.db")
    poll = s.begin_poll("poll", 60000.0)
    s.record_window(poll, 60100.0, [
        Discovered(f"iabc{i:05d}", f"hst/public/iabc/iabc{i:05d}/iabc{i:05d}_flt.fits",
                   60000.0 + i, f"IABC{i:05d}") for i in range(30)], observations=30,
        products=30)
    yield s
    s.close()


class Recorder:
    """Takes every event (or refuses the ones named), like an executor."""

    kind = "lambda"
    in_flight_cap = None

    def __init__(self, refuse: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.events: list[dict[str, Any]] = []
        self.refuse = refuse

    def submit(self, events: list[dict[str, Any]]) -> list[Submitted]:
        self.events += events
        return [Submitted(e["obs_id"], e["attempt"], None if e["obs_id"] in self.refuse
                          else f"req-{e['obs_id']}",
                          "throttled" if e["obs_id"] in self.refuse else None)
                for event in events for e in exposures(event)]


def test_dispatch_stops_at_the_in_flight_bound(store: StateStore) -> None:
    config = config_from_dict({"executor": {"kind": "lambda", "concurrency": 4,
                                            "max_in_flight": 12}})
    rec = Recorder()
    out = dispatch(store, rec, config, run_id="r", batch=5)  # type: ignore[arg-type]
    assert out.sent == 12 and store.count_in_flight() == 12 and len(rec.events) == 12
    assert dispatch(store, rec, config, run_id="r").sent == 0  # full: nothing more goes
    assert [e["obs_id"] for e in rec.events] == [f"iabc{i:05d}" for i in range(12)]
    assert store.get("iabc00000")["request_id"] == "req-iabc00000"


def test_the_event_is_the_design_contract(store: StateStore) -> None:
    config = config_from_dict({"archive": {"bucket": "stpubdata"},
                               "output": {"url": "s3://cats/mirror"},
                               "sep": {"thresh": 2.5}})
    (row,) = store.claim_new(1, executor="lambda", run_id="r")
    event = event_for(row, config)
    assert event == {"obs_id": "iabc00000",
                     "input": {"bucket": "stpubdata",
                               "key": "hst/public/iabc/iabc00000/iabc00000_flt.fits"},
                     "output": "s3://cats/mirror", "sep": config.sep, "attempt": 1}
    assert event["sep"]["thresh"] == 2.5


def test_refused_events_go_back_without_counting(store: StateStore) -> None:
    config = config_from_dict({"executor": {"kind": "lambda", "concurrency": 100}})
    rec = Recorder(refuse={"iabc00003"})
    out = dispatch(store, rec, config, run_id="r", batch=10)  # type: ignore[arg-type]
    assert out.returned == 1 and out.sent == 9  # it stops after a refusal
    row = store.get("iabc00003")
    assert row["state"] == "new" and row["attempts"] == 0 and row["error"] == "throttled"


def test_dispatch_gives_back_what_an_executor_failed_to_take(store: StateStore) -> None:
    """An executor that raises leaves nothing marked dispatched."""
    class Broken:
        kind = "lambda"
        in_flight_cap = None

        def submit(self, events: object) -> list[object]:
            raise ConnectionError("no route to Lambda")

    config = config_from_dict({"executor": {"kind": "lambda", "concurrency": 10}})
    with pytest.raises(ConnectionError):
        dispatch(store, Broken(), config, run_id="r")  # type: ignore[arg-type]
    assert store.counts()["new"] == 30 and store.count_in_flight() == 0
    assert store.get("iabc00000")["error"] == "not sent: ConnectionError: no route to Lambda"


def test_batches_carry_neighbours_and_come_back_whole(store: StateStore) -> None:
    config = config_from_dict({"executor": {"kind": "lambda", "concurrency": 3, "batch": 4,
                                            "max_in_flight": 0}})
    assert config.executor.in_flight_limit == 12  # concurrency x batch
    rec = Recorder()
    out = dispatch(store, rec, config, run_id="r", batch=10)  # type: ignore[arg-type]
    assert out.sent == 12 and store.count_in_flight() == 12
    # Claims of 10, then 2: events of 4, 4, 2 and 2 exposures, in obs_id order.
    assert [len(e["batch"]) for e in rec.events] == [4, 4, 2, 2]
    flat = [x for e in rec.events for x in exposures(e)]
    assert [x["obs_id"] for x in flat] == [f"iabc{i:05d}" for i in range(12)]
    assert flat[0] == event_for(DatasetRow("iabc00000", flat[0]["input"]["key"], "dispatched",
                                           1, 1, None), config)
    assert store.get("iabc00005")["request_id"] == "req-iabc00005"
    # At shutdown, a batch an executor never started goes back whole, uncounted.
    assert unsent(store, rec.events[:1], "stopped") == 4
    assert [store.get(f"iabc{i:05d}")["state"] for i in (0, 3, 4)] == ["new", "new",
                                                                        "dispatched"]
