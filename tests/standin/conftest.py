"""Fixtures for the MAST stand-in tests: an archive, a running stand-in, astroquery on it."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from astroquery.mast import ObservationsClass

from standin.archive import Archive
from standin.mast import MastStandin

#: The archive most tests use: small, but with several programs, associations and
#: singletons spread over the whole release range.
N_EXPOSURES = 3000
SEED = 7


def point_astroquery(obs: ObservationsClass, url: str) -> ObservationsClass:
    """Point one astroquery ``Observations`` instance at ``url`` (a MAST stand-in).

    astroquery builds its portal URLs from ``conf.server`` when ``astroquery.mast`` is
    imported, as class attributes of ``PortalAPI``; setting them on the instance's
    connection redirects only this instance (the module-level ``Observations`` and
    other tests stay untouched).
    """
    conn = obs._portal_api_connection
    conn.MAST_REQUEST_URL = url + "/api/v0/invoke"
    conn.COLUMNS_CONFIG_URL = url + "/portal/Mashup/Mashup.asmx/columnsconfig"
    conn.MAST_DOWNLOAD_URL = url + "/api/v0.1/Download/file"
    conn.MAST_BUNDLE_URL = url + "/api/v0.1/Download/bundle"
    return obs


@pytest.fixture(scope="module")
def archive() -> Archive:
    """A shared read-only archive (tests that release or plant build their own)."""
    return Archive(N_EXPOSURES, seed=SEED)


@pytest.fixture
def standin(archive: Archive) -> Iterator[MastStandin]:
    """A running stand-in serving the shared archive; faults and log start clean."""
    with MastStandin(archive) as st:
        yield st
        assert st.errors == [], "the stand-in failed on a request:\n" + "\n".join(st.errors)


@pytest.fixture
def make_standin() -> Iterator[Callable[..., MastStandin]]:
    """Start stand-ins for archives a test builds itself; all stopped at the end."""
    started: list[MastStandin] = []

    def make(archive: Archive, **kw: object) -> MastStandin:
        st = MastStandin(archive, **kw).start()  # type: ignore[arg-type]
        started.append(st)
        return st

    yield make
    for st in started:
        st.stop()
    for st in started:
        assert st.errors == [], "the stand-in failed on a request:\n" + "\n".join(st.errors)


@pytest.fixture
def obs(standin: MastStandin) -> ObservationsClass:
    """A fresh astroquery Observations pointed at the running stand-in."""
    return point_astroquery(ObservationsClass(), standin.url)


@pytest.fixture
def point_at() -> Callable[[ObservationsClass, str], ObservationsClass]:
    """`point_astroquery` as a fixture (test modules do not import conftest)."""
    return point_astroquery


@pytest.fixture
def astroquery_for() -> Callable[[MastStandin], ObservationsClass]:
    """Make fresh astroquery Observations for a given stand-in."""
    return lambda st: point_astroquery(ObservationsClass(), st.url)
