"""Raw throughput of real astroquery against the MAST stand-in (in a separate process).

Starts ``python -m standin.mast`` as a child process, then in this process, for
each ``--mode``:

1. pulls every observation (``obs_collection="HST", instrument_name="WFC3/IR",
   t_obs_release=[lo, hi]``) in windows of ``--window-days``;
2. asks for their product lists in batches (``--batches 500,1000,5000``) and keeps the
   FLT rows;

``tables`` mode uses ``query_criteria`` / ``get_product_list`` / ``filter_products``
(astropy tables); ``async`` mode uses ``query_criteria_async`` /
``get_product_list_async`` and one ``Response.json()`` per page, as ``daemon/mast.py``
does. Each line says where the time went: HTTP round trips (with the stand-in's own
handler time), ``Response.json()`` (astroquery's ``_request`` parses every page once
to read its status; ``_parse_result`` or the caller parses it again), astropy table
building (``_json_to_table``) and ``vstack``. ``--raw`` also times the same product
requests with plain ``requests`` and no parsing.

    .venv/bin/python benchmarks/bench_mast_standin.py --exposures 150000 \
        --batches 500,1000,5000 --raw
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import requests
from astroquery.mast import ObservationsClass, discovery_portal

ROOT = Path(__file__).resolve().parents[1]


class Timers:
    """Accumulate wall time spent in a few astroquery/requests internals."""

    def __init__(self) -> None:
        self.t: dict[str, float] = defaultdict(float)
        self.n: dict[str, int] = defaultdict(int)

    @contextmanager
    def patched(self) -> Iterator[Timers]:
        """Wrap ``PortalAPI._request``, ``Response.json``, ``_json_to_table``, ``vstack``."""
        originals = {
            "json": requests.Response.json,
            "table": discovery_portal._json_to_table,
            "vstack": discovery_portal.vstack,
            "request": discovery_portal.PortalAPI._request,
        }
        inside = {"request": False}

        def wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
            def inner(*a: Any, **k: Any) -> Any:
                if name == "request":
                    inside["request"] = True
                t0 = time.perf_counter()
                try:
                    return fn(*a, **k)
                finally:
                    dt = time.perf_counter() - t0
                    if name == "request":
                        inside["request"] = False
                    elif name == "json" and inside["request"]:
                        # _request parses each answer to read status and paging.
                        self.t["json_in_request"] += dt
                    self.t[name] += dt
                    self.n[name] += 1
            return inner

        requests.Response.json = wrap("json", originals["json"])  # type: ignore[method-assign]
        discovery_portal._json_to_table = wrap("table", originals["table"])
        discovery_portal.vstack = wrap("vstack", originals["vstack"])
        discovery_portal.PortalAPI._request = wrap("request", originals["request"])
        try:
            yield self
        finally:
            requests.Response.json = originals["json"]  # type: ignore[method-assign]
            discovery_portal._json_to_table = originals["table"]
            discovery_portal.vstack = originals["vstack"]
            discovery_portal.PortalAPI._request = originals["request"]

    def reset(self) -> None:
        """Start counting from zero."""
        self.t.clear()
        self.n.clear()


def point(obs: ObservationsClass, url: str) -> None:
    """Point one Observations instance at the stand-in."""
    c = obs._portal_api_connection
    c.MAST_REQUEST_URL = url + "/api/v0/invoke"
    c.COLUMNS_CONFIG_URL = url + "/portal/Mashup/Mashup.asmx/columnsconfig"
    c.MAST_DOWNLOAD_URL = url + "/api/v0.1/Download/file"
    c.MAST_BUNDLE_URL = url + "/api/v0.1/Download/bundle"


def control(url: str, method: str, path: str) -> Any:
    """Call the stand-in's control API."""
    req = urllib.request.Request(url + path, method=method)
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def breakdown(timers: Timers, wall: float, server_s: float) -> str:
    """One line: where the wall time went."""
    # HTTP round trips (server work + transfer + requests overhead): _request minus the
    # json() it does itself to read status and paging.
    http = timers.t["request"] - timers.t["json_in_request"]
    return (f"wall {wall:6.2f}s | HTTP {http:5.2f}s (server handler {server_s:5.2f}s) | "
            f"Response.json {timers.t['json']:5.2f}s ({timers.n['json']} calls) | "
            f"_json_to_table {timers.t['table']:5.2f}s | "
            f"vstack {timers.t['vstack']:5.2f}s")


def raw_fetch(url: str, obsids: list[str], batch: int) -> tuple[float, int]:
    """Products of ``obsids`` fetched with plain requests (no parsing): server + transfer."""
    session = requests.Session()
    t = time.perf_counter()
    size = 0
    for i in range(0, len(obsids), batch):
        page = 1
        while True:
            req = {"service": "Mast.Caom.Products",
                   "params": {"obsid": ",".join(obsids[i:i + batch])},
                   "format": "json", "pagesize": 50000, "page": page}
            r = session.post(url + "/api/v0/invoke", data={"request": json.dumps(req)})
            r.raise_for_status()
            size += len(r.content)
            # Read paging from the tail of the body without parsing all of it.
            tail = r.content[r.content.rfind(b'"paging":') + 9:-1]
            if json.loads(tail)["pagesFiltered"] <= page:
                break
            page += 1
    return time.perf_counter() - t, size


def pull_observations(obs: ObservationsClass, first: float, last: float, days: float,
                      mode: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Every observation, window by window: (obsids, calib_levels, windows)."""
    obsids: list[np.ndarray] = []
    levels: list[np.ndarray] = []
    lo, windows = first - 1, 0
    while lo <= last:
        crit = {"obs_collection": "HST", "instrument_name": "WFC3/IR",
                "t_obs_release": [lo, lo + days]}
        if mode == "tables":
            tab = obs.query_criteria(**crit)
            obsids.append(np.asarray(tab["obsid"]))
            levels.append(np.asarray(tab["calib_level"]))
        else:  # the raw pages, as daemon/mast.py reads them
            rows = [r for resp in obs.query_criteria_async(**crit) for r in resp.json()["data"]]
            obsids.append(np.array([r["obsid"] for r in rows], dtype=str))
            levels.append(np.array([r["calib_level"] for r in rows], dtype=int))
        windows += 1
        lo += days
    return np.concatenate(obsids), np.concatenate(levels), windows


def pull_products(obs: ObservationsClass, obsids: np.ndarray, batch: int, mode: str
                  ) -> tuple[int, set[str], float]:
    """Product lists in batches: (rows, unique FLT file names, seconds in filtering)."""
    n_prod, flt_names, filter_s = 0, set(), 0.0
    for i in range(0, len(obsids), batch):
        chunk = list(obsids[i:i + batch])
        if mode == "tables":
            prods = obs.get_product_list(chunk)
            n_prod += len(prods)
            tf = time.perf_counter()
            flt = obs.filter_products(prods, productSubGroupDescription="FLT")
            flt_names.update(flt["productFilename"].tolist())
        else:
            rows = [r for resp in obs.get_product_list_async(chunk)
                    for r in resp.json()["data"]]
            n_prod += len(rows)
            tf = time.perf_counter()
            flt_names.update(r["productFilename"] for r in rows
                             if r["productSubGroupDescription"] == "FLT")
        filter_s += time.perf_counter() - tf
    return n_prod, flt_names, filter_s


def main() -> int:
    """Run the benchmark and print the figures."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--exposures", type=int, default=150_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--window-days", type=float, default=30.0)
    p.add_argument("--batches", default="500,1000,5000")
    p.add_argument("--pagesize", type=int, default=None, help="override astroquery's 50000")
    p.add_argument("--products-of", choices=("all", "exposures"), default="all",
                   help="ask products of every observation, or of exposures only "
                        "(calib_level 2: members and singletons)")
    p.add_argument("--mode", choices=("tables", "async", "both"), default="both",
                   help="tables: query_criteria/get_product_list/filter_products (astropy "
                        "tables); async: the *_async calls and one Response.json() per page, "
                        "as daemon/mast.py does")
    p.add_argument("--raw", action="store_true",
                   help="also time the product requests with plain requests, no parsing")
    p.add_argument("--no-gc", action="store_true",
                   help="freeze and disable the cyclic GC while pulling")
    args = p.parse_args()
    if args.no_gc:
        gc.freeze()
        gc.disable()

    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "standin.mast", "--exposures", str(args.exposures),
         "--seed", str(args.seed), "--port", "0"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        url = proc.stdout.readline().strip()
        info = proc.stderr.readline().strip()
        print(f"stand-in at {url} ready after {time.perf_counter() - t0:.2f}s ({info})")
        stats = control(url, "GET", "/standin/stats")
        first, last = 55000.0, stats["last_release"]

        obs = ObservationsClass()
        point(obs, url)
        if args.pagesize:
            obs._portal_api_connection.PAGESIZE = args.pagesize
        timers = Timers()
        modes = ["tables", "async"] if args.mode == "both" else [args.mode]
        with timers.patched():
            # Warm up (columns configs are cached per process, as in the daemon).
            obs.query_criteria_count(obs_collection="HST", instrument_name="WFC3/IR",
                                     t_obs_release=[first, first + 1])
            for mode in modes:
                print(f"\n=== mode {mode} ===")
                control(url, "DELETE", "/standin/log")
                timers.reset()
                t = time.perf_counter()
                obsids, levels, windows = pull_observations(obs, first, last,
                                                            args.window_days, mode)
                wall = time.perf_counter() - t
                stats = control(url, "GET", "/standin/stats")
                print(f"observations: {len(obsids)} rows in {windows} windows of "
                      f"{args.window_days:g} d, {stats['requests']} requests, "
                      f"{stats['bytes'] / 1e6:.0f} MB")
                print("  " + breakdown(timers, wall, stats["server_seconds"]))
                # Release windows are inclusive at both ends: drop boundary repeats.
                obsids, first_idx = np.unique(obsids, return_index=True)
                if args.products_of == "exposures":
                    obsids = obsids[levels[first_idx] == 2]
                print(f"  asking products of {args.products_of}: {len(obsids)} observations")

                for batch in [int(b) for b in args.batches.split(",")]:
                    control(url, "DELETE", "/standin/log")
                    timers.reset()
                    t = time.perf_counter()
                    n_prod, flt_names, filter_s = pull_products(obs, obsids, batch, mode)
                    wall = time.perf_counter() - t
                    stats = control(url, "GET", "/standin/stats")
                    print(f"products, batches of {batch}: {n_prod} rows, {len(flt_names)} "
                          f"unique FLT, {stats['requests']} requests, "
                          f"{stats['bytes'] / 1e6:.0f} MB")
                    print("  " + breakdown(timers, wall, stats["server_seconds"])
                          + f" | FLT filtering {filter_s:5.2f}s")
                    if args.raw:
                        raw_s, raw_bytes = raw_fetch(url, [str(o) for o in obsids], batch)
                        print(f"  same requests with plain requests, no parsing: {raw_s:5.2f}s"
                              f" ({raw_bytes / 1e6 / raw_s:.0f} MB/s)")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
