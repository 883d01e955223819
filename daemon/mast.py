"""The one module that talks to MAST: astroquery's ``Observations``, pointed at ``mast.url``.

We use astroquery's asynchronous calls (which return the raw MAST responses, page by page)
rather than its table-building ones for two reasons: a paged answer can be checked for
completeness (astroquery silently stacks an empty page in the middle of an answer), and
pulling five fields out of the JSON is far cheaper than building astropy tables of every
column for a 150,000-exposure backfill.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import requests
from astroquery.mast import ObservationsClass
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

# astroquery logs at INFO to stdout through astropy's logger; our logs are the daemon's.
logging.getLogger("astroquery").setLevel(logging.WARNING)


class MastError(Exception):
    """MAST did not give a complete, well-formed answer; the message says what went wrong."""


@dataclass(frozen=True)
class Observation:
    """The fields of a MAST (CAOM) observation that discovery needs."""

    obsid: str
    obs_id: str
    release_mjd: float
    filters: str = ""  # CAOM's ``filters`` ("F160W", "G141"; ";"-separated when several)


@dataclass(frozen=True)
class Product:
    """The fields of a MAST data product that discovery needs."""

    filename: str
    obs_id: str
    obsid: str
    parent_obsid: str
    subgroup: str
    data_uri: str = ""  # "mast:HST/product/<file>": what MAST's path lookup is asked about
    filters: str = ""


class _TimeoutAdapter(HTTPAdapter):
    """Gives every request a timeout: astroquery's portal calls pass none, so a hung MAST
    would otherwise hang the poll forever."""

    def __init__(self, timeout: float, retries: Retry) -> None:
        super().__init__(max_retries=retries)
        self._timeout = timeout

    # HTTPAdapter.send's own signature (positional parameters and all).
    def send(self, request: requests.PreparedRequest, stream: bool = False,  # noqa: PLR0917
             timeout: float | tuple[float | None, float | None] | None = None,
             verify: bool | str = True, cert: str | tuple[str, str] | None = None,
             proxies: dict[str, str] | None = None) -> requests.Response:
        """HTTPAdapter.send, with this adapter's timeout when the caller gave none."""
        return super().send(request, stream=stream,
                            timeout=self._timeout if timeout is None else timeout,
                            verify=verify, cert=cert, proxies=proxies)


# Rows per page of a MAST answer. astroquery parses each page whole to check its status,
# and holds every page of an answer until the last arrives: small pages keep the daemon's
# memory flat (a 50,000-row product page parsed costs ~90 MB at once), at the price of a few
# more requests per call (docs/BENCHMARKS.md, "in flight").
PAGE_SIZE = 1000

# MAST's path lookup service (astroquery.mast.utils.get_cloud_paths): a GET with one ``uri``
# parameter per product, answered with {uri: {"status_code": 200, "path": "/hst/public/..."}}
# (``path`` null and 404 when MAST has none). astroquery sends 40 URIs a request, "to avoid
# 414 Client Error: Request-URI Too Large".
PATH_LOOKUP = "/api/v0.1/path_lookup/"
PATH_LOOKUP_BATCH = 40


class MastClient:
    """Queries one MAST server for observations released in a window and their products."""

    def __init__(self, url: str, *, collection: str, instrument: str, timeout_s: float = 300.0,
                 batch: int = 2000, page_size: int = PAGE_SIZE, retries: int = 2,
                 intent: Sequence[str] = ()) -> None:
        """``intent``: MAST's ``intentType`` values to ask for ("science", "calibration");
        empty asks for every observation."""
        self.url = url.rstrip("/")
        self.collection = collection
        self.instrument = instrument
        self.intent = list(intent)
        self.batch = batch
        self._obs = ObservationsClass()
        portal = self._obs._portal_api_connection
        # astroquery bakes conf.server into class attributes at import time; instance
        # attributes take precedence, so each client can point at its own server.
        portal.MAST_REQUEST_URL = self.url + "/api/v0/invoke"
        portal.COLUMNS_CONFIG_URL = self.url + "/portal/Mashup/Mashup.asmx/columnsconfig"
        portal.MAST_DOWNLOAD_URL = self.url + "/api/v0.1/Download/file"
        portal.MAST_BUNDLE_URL = self.url + "/api/v0.1/Download/bundle"
        portal.TIMEOUT = timeout_s
        portal.PAGESIZE = page_size
        # Each client has its own column-config cache (astroquery's is a class attribute).
        portal._column_configs = {}
        retry = Retry(total=retries, connect=retries, read=0, status=retries,
                      backoff_factor=1.0, status_forcelist=(502, 503, 504),
                      allowed_methods=None, raise_on_status=False,
                      # A long Retry-After would stall the poll; the next poll retries anyway.
                      respect_retry_after_header=False)
        adapter = _TimeoutAdapter(timeout_s, retry)
        session = self._obs._session
        session.mount("http://", adapter)
        session.mount("https://", adapter)

    def close(self) -> None:
        """Release the HTTP connections."""
        self._obs._session.close()

    def observations(self, lo_mjd: float, hi_mjd: float) -> list[Observation]:
        """Every observation of the collection and instrument released in [lo, hi] (MJD),
        of the intents asked for."""
        return self._query({"t_obs_release": [lo_mjd, hi_mjd]})

    def observations_by_id(self, obs_ids: Sequence[str]) -> list[Observation]:
        """The observations of the collection and instrument with these obs_ids (MAST's,
        the archive folders), of the intents asked for, whatever their release date."""
        return self._query({"obs_id": list(obs_ids)})

    def _query(self, criteria: dict[str, Any]) -> list[Observation]:
        criteria = {"obs_collection": self.collection, "instrument_name": self.instrument,
                    **criteria}
        if self.intent:
            # Without it MAST answers calibration observations too (astroquery's remote
            # tests query intentType="calibration" and get only those).
            criteria["intentType"] = self.intent
        responses = self._call(lambda: self._obs.query_criteria_async(**criteria),
                               "observations")
        out = []
        for row in _rows(responses, "observations"):
            try:
                out.append(Observation(str(row["obsid"]), str(row["obs_id"]),
                                       float(row["t_obs_release"]),
                                       str(row.get("filters") or "")))
            except (KeyError, TypeError, ValueError) as exc:
                raise MastError(f"MAST observation row without a usable obsid, obs_id or "
                                f"t_obs_release ({exc!r}): {str(row)[:200]}") from None
        return out

    def products(self, obsids: Sequence[str]) -> Iterator[Product]:
        """The data products of the given observations, queried ``batch`` obsids at a time."""
        for start in range(0, len(obsids), self.batch):
            chunk = list(obsids[start:start + self.batch])
            responses = self._call(lambda c=chunk: self._obs.get_product_list_async(c),
                                   "products")
            for row in _rows(responses, "products"):
                yield Product(
                    filename=str(row.get("productFilename") or ""),
                    obs_id=str(row.get("obs_id") or ""),
                    obsid=str(row.get("obsID") or ""),
                    parent_obsid=str(row.get("parent_obsid") or row.get("obsID") or ""),
                    subgroup=str(row.get("productSubGroupDescription") or ""),
                    data_uri=str(row.get("dataURI") or ""),
                    filters=str(row.get("filters") or ""))

    def cloud_paths(self, uris: Sequence[str]) -> dict[str, str | None]:
        """Where MAST says each product lives in the cloud (``hst/public/...``, without the
        leading slash), or None where it knows no path; asked ``PATH_LOOKUP_BATCH`` at a
        time, as astroquery asks."""
        out: dict[str, str | None] = {}
        for start in range(0, len(uris), PATH_LOOKUP_BATCH):
            chunk = list(uris[start:start + PATH_LOOKUP_BATCH])
            response = self._call(lambda c=chunk: [self._lookup(c)], "path lookup")[0]
            try:
                body = response.json()
            except ValueError as exc:
                raise MastError(f"MAST path lookup answer is not valid JSON: "
                                f"{_short(exc)}") from None
            if not isinstance(body, dict):
                raise MastError("MAST path lookup answer is not a JSON object")
            for uri in chunk:
                entry = body.get(uri)
                if not isinstance(entry, dict):
                    raise MastError(f"MAST path lookup answer has no entry for {uri!r}")
                path = entry.get("path")
                out[uri] = path.lstrip("/") if isinstance(path, str) and path else None
        return out

    def _lookup(self, uris: list[str]) -> requests.Response:
        response = self._obs._session.get(self.url + PATH_LOOKUP,
                                          params={"uri": uris, "use_cloud_path": True})
        response.raise_for_status()
        return response

    def _call(self, fn: Any, what: str) -> list[requests.Response]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # NoResultsWarning etc.: empty is an answer
                return list(fn())
        except requests.JSONDecodeError as exc:  # before RequestException: it is both
            raise MastError(f"MAST {what} answer is not valid JSON: {_short(exc)}") from None
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            raise MastError(f"MAST {what} query failed: HTTP {status} from {self.url}") from None
        except requests.Timeout:
            raise MastError(f"MAST {what} query timed out ({self.url})") from None
        except requests.ConnectionError as exc:
            raise MastError(f"MAST {what} query could not connect to {self.url}: "
                            f"{_short(exc)}") from None
        except requests.RequestException as exc:
            raise MastError(f"MAST {what} query failed: {_short(exc)}") from None
        except json.JSONDecodeError as exc:
            raise MastError(f"MAST {what} answer is not valid JSON: {_short(exc)}") from None
        except TimeoutError as exc:
            raise MastError(f"MAST {what} query timed out: {exc}") from None
        except Exception as exc:  # astroquery raises assorted types on odd answers
            raise MastError(f"MAST {what} query failed: {type(exc).__name__}: "
                            f"{_short(exc)}") from None


def _rows(responses: list[requests.Response], what: str) -> Iterator[dict[str, Any]]:
    """The data rows of a paged MAST answer, page by page, then a check that the answer was
    complete and well formed (so a caller that keeps the rows until the end never keeps
    those of a broken answer).

    Consumes ``responses``: each page's body is let go once parsed, and its rows once the
    caller has taken them."""
    expected: int | None = None
    received = 0
    responses.reverse()
    while responses:
        resp = responses.pop()
        try:
            # Only the keys read below and by the callers are kept, object by object as the
            # parser makes them: a page of 50,000 product rows of ~30 columns would otherwise
            # be ~100 MB of dicts at once.
            body = json.loads(resp.content, object_pairs_hook=_kept)
        except ValueError as exc:
            raise MastError(f"MAST {what} answer is not valid JSON: {_short(exc)}") from None
        if not isinstance(body, dict):
            raise MastError(f"MAST {what} answer is not a JSON object")
        status = body.get("status")
        if status != "COMPLETE":
            raise MastError(f"MAST {what} answer has status {status!r}: "
                            f"{body.get('msg') or 'no message'}")
        data = body.get("data")
        if not isinstance(data, list) or not isinstance(body.get("fields"), list):
            raise MastError(f"MAST {what} answer lacks its 'data' or 'fields' list")
        paging = body.get("paging") or {}
        if "rowsFiltered" in paging:
            expected = int(paging["rowsFiltered"])
        if not all(isinstance(row, dict) for row in data):
            raise MastError(f"MAST {what} answer has a row that is not an object")
        received += len(data)
        yield from data
    if expected is not None and received != expected:
        raise MastError(f"MAST {what} answer is incomplete: {received} rows received, "
                        f"{expected} announced (an empty or short page)")


# The keys of MAST's answer envelope, its paging, and the row columns this module reads.
_KEPT = frozenset({"status", "msg", "data", "fields", "paging", "rowsFiltered",
                   "obsid", "obs_id", "t_obs_release", "filters",
                   "productFilename", "obsID", "parent_obsid", "productSubGroupDescription",
                   "dataURI"})


def _kept(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    return {k: v for k, v in pairs if k in _KEPT}


def _short(exc: BaseException, limit: int = 200) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."
