"""Fault injection: each fault gives astroquery the error real MAST trouble would give."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests
from astroquery.exceptions import InvalidQueryError, RemoteServiceError
from astroquery.mast import ObservationsClass
from astroquery.mast.discovery_portal import PortalAPI
from requests.adapters import HTTPAdapter

from standin.archive import Archive
from standin.mast import FAULT_KINDS, MastStandin

WFC3IR = {"obs_collection": "HST", "instrument_name": "WFC3/IR"}
WINDOW = [55000.0, 58000.0]


def _query(obs: ObservationsClass) -> Any:
    return obs.query_criteria(**WFC3IR, t_obs_release=WINDOW)


@pytest.fixture
def warm(standin: MastStandin, obs: ObservationsClass) -> ObservationsClass:
    """astroquery with its columns configs cached, so faults hit the data request."""
    obs.query_criteria_count(**WFC3IR, t_obs_release=[55000, 55001])
    standin.reset_log()
    return obs


@pytest.mark.parametrize(
    ("kind", "error", "match"),
    [
        ("http_500", requests.HTTPError, "500 Server Error"),
        ("http_503", requests.HTTPError, "503 Server Error"),
        ("truncated", requests.exceptions.JSONDecodeError, r"Unterminated|Expecting"),
        ("malformed", requests.exceptions.JSONDecodeError, "Expecting ':' delimiter"),
        ("html", requests.exceptions.JSONDecodeError, "Expecting value"),
        ("disconnect", requests.exceptions.ChunkedEncodingError, "IncompleteRead"),
        ("error_status", RemoteServiceError, "fault injected"),
    ],
)
def test_fault_raises_what_astroquery_raises_for_real_mast_trouble(
    standin: MastStandin, warm: ObservationsClass, kind: str, error: type, match: str
) -> None:
    standin.faults.arm(kind)
    with pytest.raises(error, match=match):
        _query(warm)
    # One-shot: the next query is whole again.
    assert len(_query(warm)) == len(standin.archive.observation_ids(*WINDOW))
    faulted = [r for r in standin.log if r.fault]
    assert [r.fault for r in faulted] == [kind]


def test_http_503_sends_retry_after(standin: MastStandin, warm: ObservationsClass) -> None:
    standin.faults.arm("http_503")
    with pytest.raises(requests.HTTPError) as info:
        _query(warm)
    assert info.value.response.status_code == 503
    assert info.value.response.headers["Retry-After"] == "1"


def test_hang_longer_than_astroquery_timeout(
    standin: MastStandin, warm: ObservationsClass
) -> None:
    # astroquery passes no socket timeout to requests; its own TIMEOUT is checked when
    # an answer arrives, against the start of the (whole, all-pages) request.
    warm._portal_api_connection.TIMEOUT = 0.5
    standin.faults.arm("hang", seconds=1.0)
    t0 = time.perf_counter()
    with pytest.raises(TimeoutError, match=r"Timeout limit of 0\.5 exceeded"):
        _query(warm)
    assert 0.9 < time.perf_counter() - t0 < 5


class _TimeoutAdapter(HTTPAdapter):
    """Impose a socket timeout: astroquery sends timeout=None, which would wait forever."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.timeout = timeout

    def send(self, request: Any, **kw: Any) -> Any:  # type: ignore[override]
        if kw.get("timeout") is None:
            kw["timeout"] = self.timeout
        return super().send(request, **kw)


def test_hang_against_a_session_socket_timeout(
    standin: MastStandin, warm: ObservationsClass
) -> None:
    warm._portal_api_connection._session.mount("http://", _TimeoutAdapter(0.5))
    standin.faults.arm("hang", seconds=3.0)
    t0 = time.perf_counter()
    with pytest.raises(requests.exceptions.ReadTimeout):
        _query(warm)
    assert time.perf_counter() - t0 < 2.5
    # The server is fine afterwards (the hung handler is still sleeping meanwhile).
    assert len(_query(warm)) == len(standin.archive.observation_ids(*WINDOW))


def test_empty_page_in_the_middle_loses_rows_silently(
    standin: MastStandin, warm: ObservationsClass
) -> None:
    warm._portal_api_connection.PAGESIZE = 50
    expected = standin.archive.observation_ids(*WINDOW)
    assert len(expected) > 150  # at least 4 pages
    standin.faults.arm("empty_page", page=2)
    tab = _query(warm)
    # astroquery does not look at rows/rowsFiltered: the table is short by one page,
    # without an error. A caller can notice with query_criteria_count.
    assert len(tab) == len(expected) - 50
    assert set(tab["obs_id"]) == set(expected) - set(expected[50:100])
    assert warm.query_criteria_count(**WFC3IR, t_obs_release=WINDOW) == len(expected)
    (faulted,) = [r for r in standin.log if r.fault]
    assert (faulted.page, faulted.rows, faulted.rows_filtered) == (2, 0, len(expected))


def test_executing_fault_is_polled_through(standin: MastStandin, warm: ObservationsClass) -> None:
    standin.faults.arm("executing", times=3)
    assert len(_query(warm)) == len(standin.archive.observation_ids(*WINDOW))
    statuses = [r.mast_status for r in standin.log if r.service == "Mast.Caom.Filtered"]
    assert statuses[-4:] == ["EXECUTING"] * 3 + ["COMPLETE"]


def test_fault_matching_by_service_times_and_until_disarmed(
    standin: MastStandin, warm: ObservationsClass
) -> None:
    tab = _query(warm)
    obsids = list(tab["obsid"][:20])
    standin.faults.arm("http_500", service="Mast.Caom.Products", times=2)
    assert len(_query(warm)) == len(tab)  # other services unaffected
    for _ in range(2):
        with pytest.raises(requests.HTTPError):
            warm.get_product_list(obsids)
    assert len(warm.get_product_list(obsids)) > 0

    fault = standin.faults.arm("error_status", times=None)
    for _ in range(3):
        with pytest.raises(RemoteServiceError):
            _query(warm)
    assert fault.fired == 3
    standin.faults.disarm(fault)
    assert len(_query(warm)) == len(tab)


def test_fault_on_one_page_only(standin: MastStandin, warm: ObservationsClass) -> None:
    warm._portal_api_connection.PAGESIZE = 100
    standin.faults.arm("http_503", page=3, times=None)
    with pytest.raises(requests.HTTPError):
        _query(warm)
    pages = [r.page for r in standin.log if r.service == "Mast.Caom.Filtered"]
    assert pages == [1, 2, 3]


def test_columnsconfig_fault(
    standin: MastStandin, obs: ObservationsClass, monkeypatch: pytest.MonkeyPatch
) -> None:
    # astroquery caches columns configs on the class: start this test with none.
    monkeypatch.setattr(PortalAPI, "_column_configs", {})
    standin.faults.arm("http_503", endpoint="columnsconfig")
    with pytest.raises(requests.HTTPError):
        _query(obs)
    assert len(_query(obs)) == len(standin.archive.observation_ids(*WINDOW))
    assert [r.endpoint for r in standin.log if r.fault] == ["columnsconfig"]


def test_columnsconfig_error_is_an_empty_config(
    standin: MastStandin, obs: ObservationsClass, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(PortalAPI, "_column_configs", {})
    standin.faults.arm("error_status", endpoint="columnsconfig")
    with pytest.raises(InvalidQueryError, match="does not exist"):
        _query(obs)


def test_unknown_fault_kind_is_refused(standin: MastStandin) -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        standin.faults.arm("gremlins")
    assert set(FAULT_KINDS) >= {"http_500", "http_503", "hang", "truncated", "malformed",
                                "empty_page", "error_status"}


def test_stop_does_not_wait_for_a_hung_handler(
    make_standin: Callable[..., MastStandin],
    astroquery_for: Callable[[MastStandin], ObservationsClass],
) -> None:
    st = make_standin(Archive(100, seed=1))
    obs = astroquery_for(st)
    obs.query_criteria_count(**WFC3IR, t_obs_release=[55000, 55001])
    fault = st.faults.arm("hang", seconds=60)
    caught: list[BaseException] = []

    def client() -> None:
        try:
            _query(obs)
        except BaseException as exc:
            caught.append(exc)

    t = threading.Thread(target=client)
    t.start()
    deadline = time.monotonic() + 10
    while not fault.fired and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fault.fired == 1
    t0 = time.perf_counter()
    st.stop()
    t.join(timeout=10)
    assert time.perf_counter() - t0 < 5
    assert not t.is_alive()


def test_planted_names_reach_astroquery_verbatim(
    make_standin: Callable[..., MastStandin],
    astroquery_for: Callable[[MastStandin], ObservationsClass],
) -> None:
    a = Archive(100, seed=3)
    planted = [a.plant_bad(k, at_mjd=62000.0) for k in ("dotdot", "absolute", "unicode",
                                                         "long", "nul")]
    obs = astroquery_for(make_standin(a))
    tab = obs.query_criteria(**WFC3IR, t_obs_release=[62000, 62000])
    assert sorted(tab["obs_id"]) == sorted(p.obs_id for p in planted)
    flt = obs.filter_products(obs.get_product_list(tab), productSubGroupDescription="FLT")
    assert sorted(flt["productFilename"]) == sorted(p.flt_filename for p in planted)
    assert any(name.startswith("../") for name in flt["productFilename"])
    assert any(name.startswith("/") for name in flt["productFilename"])
    # And the wire format is valid JSON for every one of them (NUL included).
    (resp,) = obs._portal_api_connection.service_request_async(
        "Mast.Caom.Products", {"obsid": ",".join(p.obsid for p in planted)})
    names = {r["productFilename"] for r in json.loads(resp.content)["data"]}
    assert "icxe\x0015wwq_flt.fits" in names


def test_mast_down_then_back_on_the_same_url(
    standin: MastStandin, warm: ObservationsClass
) -> None:
    url = standin.url
    standin.stop()
    with pytest.raises(requests.exceptions.ConnectionError):
        _query(warm)
    standin.start()
    assert standin.url == url
    assert len(_query(warm)) == len(standin.archive.observation_ids(*WINDOW))


def test_stand_in_bugs_surface_as_http_500(
    standin: MastStandin, warm: ObservationsClass, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(standin.archive, "select_observations", broken)
    with pytest.raises(requests.HTTPError, match="500"):
        _query(warm)
    assert len(standin.errors) == 1 and "RuntimeError: bug" in standin.errors[0]
    standin.errors.clear()  # expected here; the fixture fails a test that leaves errors
