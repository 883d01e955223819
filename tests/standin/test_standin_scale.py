"""Scale: a full discovery pass over 20,000 exposures through real astroquery stays fast."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest
from astroquery.mast import ObservationsClass

from lambda_sep.contract import archive_key
from standin.archive import Archive
from standin.mast import MastStandin

N = 20_000


@pytest.mark.slow
def test_backfill_of_20k_exposures_in_monthly_windows(
    make_standin: Callable[..., MastStandin],
    astroquery_for: Callable[[MastStandin], ObservationsClass],
) -> None:
    t0 = time.perf_counter()
    archive = Archive(N, seed=1)
    st = make_standin(archive)
    obs = astroquery_for(st)

    # What the daemon does: release windows of ~a month from the start, ...
    tables = []
    lo = archive.start_mjd - 1
    while lo <= archive.end_mjd:
        tab = obs.query_criteria(obs_collection="HST", instrument_name="WFC3/IR",
                                 t_obs_release=[lo, lo + 30])
        if len(tab):
            tables.append(tab)
        lo += 30
    obsids = np.unique(np.concatenate([np.asarray(t["obsid"]) for t in tables]))
    assert len(obsids) == archive.n_observations

    # ... then product lists in batches, keeping the FLT files.
    keys: set[str] = set()
    n_flt_rows = 0
    for i in range(0, len(obsids), 1000):
        products = obs.get_product_list(list(obsids[i:i + 1000]))
        flt = obs.filter_products(products, productSubGroupDescription="FLT")
        n_flt_rows += len(flt)
        keys.update(archive_key(name.removesuffix("_flt.fits")) for name in flt["productFilename"])
    elapsed = time.perf_counter() - t0

    assert keys == {k for _, k in archive.flt_keys()}
    assert len(keys) == N
    # Association members are listed twice (association + themselves).
    members = sum(1 for e in archive.exposures() if e.association is not None)
    assert n_flt_rows == N + members
    # Its speed is benchmarks/bench_mast_standin.py's to measure, not a timed test's.
    print(f"20,000-exposure discovery took {elapsed:.1f} s")
    served = [r for r in st.log if r.service == "Mast.Caom.Filtered"]
    assert sum(r.rows for r in served) == sum(len(t) for t in tables)
