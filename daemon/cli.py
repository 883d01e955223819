"""The ``mastmirror`` command: a thin shell over functions the tests call directly.

Exit codes: 0 success, 1 the work failed (for example MAST did not answer during
``run --once``), 2 bad usage or configuration, 3 another daemon holds the database.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

# Config validation must not depend on whatever pydantic plugins happen to be installed,
# and looking them up (entry-point scanning) is a tenth of `status`'s start-up.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

import click

from daemon import __version__
from daemon.configfile import ConfigError, find_config, state_path
from daemon.lambda_cli import lambda_group
from daemon.lock import AlreadyRunning, InstanceLock

if TYPE_CHECKING:
    from daemon.config import Config

EXIT_FAILED, EXIT_CONFIG, EXIT_LOCKED = 1, 2, 3


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"mastmirror: error: {message}", err=True)
    sys.exit(code)


class _Ctx:
    def __init__(self, config_arg: str | None) -> None:
        self.config_arg = config_arg
        self._config: Config | None = None
        self.path: Path | None = None

    @property
    def config(self) -> Config:
        """The validated configuration (loaded on first use; exits 2 if unusable)."""
        if self._config is None:
            from daemon.config import load_config  # pydantic: not for `status`

            try:
                self.path = find_config(self.config_arg)
                self._config = load_config(self.path)
            except ConfigError as exc:
                _fail(str(exc), EXIT_CONFIG)
        return self._config

    def state_path(self) -> Path:
        """Only ``[state] path``, without validating the rest (exits 2 if unusable)."""
        try:
            return state_path(find_config(self.config_arg))
        except ConfigError as exc:
            _fail(str(exc), EXIT_CONFIG)

    def logging(self) -> Config:
        """The configuration, with logging set up from its ``[log]`` section."""
        from daemon import logs

        config = self.config
        logs.configure(config.log.level, config.log.format)
        return config


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_arg", metavar="PATH", envvar=None,
              help="config.toml (default: ./config.toml, then $MASTMIRROR_CONFIG, then "
                   "/etc/mastmirror/config.toml)")
@click.version_option(__version__, prog_name="mastmirror")
@click.pass_context
def main(ctx: click.Context, config_arg: str | None) -> None:
    """Keep SEP source catalogs of every public HST WFC3/IR exposure in MAST."""
    ctx.obj = _Ctx(config_arg)


@main.command()
@click.option("--once", is_flag=True, help="One poll, dispatch everything new, wait for the "
              "results, reconcile, exit.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bars (default: on a terminal).")
@click.pass_obj
def run(obj: _Ctx, once: bool, progress: bool | None) -> None:
    """Run the daemon (or one full cycle with --once)."""
    from daemon.service import Service
    from state.store import unwritable

    config = obj.logging()
    service = Service(config, config_path=obj.path)
    try:
        service.open()
    except AlreadyRunning as exc:
        _fail(str(exc), EXIT_LOCKED)
    except Exception as exc:
        reason = unwritable(exc)
        if reason is None:
            raise
        _fail(f"cannot open the state database {config.state_path}: {reason}", EXIT_FAILED)
    try:
        if once:
            show = sys.stderr.isatty() if progress is None else progress
            summary = service.run_once(progress=show)
            _print_cycle(summary)
            code = 0 if summary.ok else EXIT_FAILED
        else:
            code = service.run_forever()
    finally:
        service.close()
    if service.fatal:
        _fail(service.fatal, EXIT_FAILED)
    sys.exit(code)


def _print_cycle(summary: Any) -> None:
    c = summary.counts
    poll = summary.poll
    head = (f"poll: {poll.new} new in {poll.windows} window(s), {poll.observations} "
            "observations" if poll and poll.ok else
            f"poll: FAILED ({poll.error if poll else 'not run'})")
    click.echo(head)
    click.echo(f"this cycle: {summary.dispatched} dispatched, {summary.done} done, "
               f"{summary.failed} failed in {summary.seconds:.1f} s")
    if summary.resweep is not None:
        click.echo(_resweep_line(summary.resweep))
    click.echo(f"datasets: {c['done']} done, {c['failed']} failed, {c['skipped']} skipped, "
               f"{c['new']} new ({summary.waiting} waiting for the archive), "
               f"{c['dispatched']} in flight, {c['total']} total")


def _resweep_line(outcome: Any) -> str:
    from daemon.mjd import mjd_to_iso

    if not outcome.ok:
        return f"resweep: FAILED ({outcome.error})"
    lo, hi = (mjd_to_iso(m)[:10] for m in outcome.window)
    return (f"resweep {lo} to {hi}: MAST lists {outcome.listed} exposure(s), the database "
            f"holds {outcome.recorded}; {outcome.new} added")


@main.command("resweep")
@click.option("--all", "everything", is_flag=True,
              help="Walk the whole archive again (from [mast] since), not the last "
                   "[mast] resweep_days.")
@click.pass_obj
def resweep_command(obj: _Ctx, everything: bool) -> None:
    """Query MAST again for recent (or all) releases; record what was missed."""
    from daemon.discovery import resweep
    from daemon.service import make_mast_client
    from state.store import StateStore

    config = obj.logging()
    try:
        store = StateStore(config.state_path, create=False)
    except FileNotFoundError as exc:
        _fail(str(exc), EXIT_FAILED)
    client = make_mast_client(config)
    try:
        with store:
            outcome = resweep(store, client, config.mast, everything=everything)
    finally:
        client.close()
    if outcome is None:
        _fail("nothing to resweep: no poll has recorded a cursor yet (run the daemon first)",
              EXIT_FAILED)
    click.echo(_resweep_line(outcome))
    if not outcome.ok:
        sys.exit(EXIT_FAILED)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def status(obj: _Ctx, as_json: bool) -> None:
    """What the mirror holds and what the daemon is doing (reads only [state] path of the
    config; the daemon validates the rest when it starts)."""
    from daemon.status import render, status_document

    try:
        doc = status_document(obj.state_path())
    except FileNotFoundError as exc:
        _fail(str(exc), EXIT_FAILED)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(render(doc))


@main.command()
@click.argument("obs_ids", nargs=-1)
@click.pass_obj
def retry(obj: _Ctx, obs_ids: tuple[str, ...]) -> None:
    """Put failed datasets (all, or the OBS_IDS given) back to new."""
    from state.store import StateStore

    try:
        store = StateStore(obj.config.state_path, create=False)
    except FileNotFoundError as exc:
        _fail(str(exc), EXIT_FAILED)
    with store:
        moved = store.retry_failed(list(obs_ids) if obs_ids else None)
    missing = sorted(set(obs_ids) - set(moved))
    click.echo(f"{len(moved)} dataset(s) back to new" + (f": {', '.join(moved)}" if
                                                        0 < len(moved) <= 20 else ""))
    if missing:
        _fail(f"not failed (or unknown): {', '.join(missing)}", EXIT_FAILED)


@main.command()
@click.argument("obs_ids", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Every catalogued dataset.")
@click.pass_obj
def refresh(obj: _Ctx, obs_ids: tuple[str, ...], everything: bool) -> None:
    """Check catalogued inputs (OBS_IDS, or --all) against the archive: a changed one is
    queued again as its next generation, a missing one reported as withdrawn."""
    if bool(obs_ids) == everything:
        _fail("give the OBS_IDS to check, or --all (not both)", EXIT_CONFIG)
    from daemon.archive import ArchiveBucket
    from daemon.outputs import OutputStore
    from daemon.refresh import refresh as check_inputs
    from state.store import StateStore

    config = obj.logging()
    try:
        store = StateStore(config.state_path, create=False)
    except FileNotFoundError as exc:
        _fail(str(exc), EXIT_FAILED)
    archive = ArchiveBucket(config.archive.bucket, anonymous=config.archive.anonymous)
    try:
        with store:
            wanted = [o.lower() for o in obs_ids] if obs_ids else None
            out = check_inputs(store, archive, OutputStore(config.output_url), obs_ids=wanted)
    finally:
        archive.close()
    _print_refresh(out)
    if out.missing or out.unknown:
        _fail(f"{len(out.missing) + len(out.unknown)} dataset(s) not checked", EXIT_FAILED)


def _print_refresh(out: Any) -> None:
    from daemon.prices import S3_GET, S3_PUT
    from daemon.status import money

    def some(ids: list[str]) -> str:
        return ", ".join(ids[:20]) + (f" and {len(ids) - 20} more" if len(ids) > 20 else "")

    click.echo(f"refresh: {out.checked:,} input(s) checked in {out.seconds:.2f} s: "
               f"{len(out.changed):,} changed, {len(out.withdrawn):,} withdrawn, "
               f"{out.unchanged:,} unchanged")
    req = out.requests
    click.echo(f"requests: {req.heads:,} HEAD + {req.lists:,} LIST = {money(req.cost_usd)} at "
               f"S3's published prices (${S3_GET * 1000:g} per 1,000 GET-class, "
               f"${S3_PUT * 1000:g} per 1,000 LIST)")
    if out.changed:
        click.echo(f"changed (queued again as their next generation; `mastmirror run --once` "
                   f"or the daemon re-catalogues them): {some(out.changed)}")
    if out.withdrawn:
        click.echo(f"withdrawn from the archive (catalogs kept): {some(out.withdrawn)}")
    for obs_id, reason in list(out.unknown.items())[:20]:
        click.echo(f"not checked: {obs_id}: {reason}")
    if out.missing:
        click.echo(f"not catalogued (or unknown): {some(out.missing)}")


main.add_command(lambda_group, "lambda")


# -- the detection index -------------------------------------------------------------------

def _index_url(obj: _Ctx, given: str | None) -> str:
    if given is not None:
        return given if "://" in given else "file://" + os.path.abspath(given)
    url = obj.config.index_url
    if url is None:
        _fail(f"{obj.path}: [index] url is \"\" (the index is off)", EXIT_CONFIG)
    return url


@main.command(context_settings={"ignore_unknown_options": True})  # a Dec may start with "-"
@click.argument("ra")
@click.argument("dec")
@click.argument("radius", metavar="RADIUS_ARCSEC", type=float)
@click.option("--filter", "filter_", metavar="F", help="Only this filter (F160W, ...).")
@click.option("--mag-max", type=float, metavar="M", help="Only mag_auto <= M.")
@click.option("--format", "fmt", type=click.Choice(("table", "csv", "votable", "parquet")),
              default="table", show_default=True)
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write here instead of standard output.")
@click.option("--index", "index_arg", metavar="URL",
              help="Search this index (directory, file:// or s3://) instead of [index] url.")
@click.pass_obj
def search(obj: _Ctx, ra: str, dec: str, radius: float, filter_: str | None,  # noqa: PLR0917
           mag_max: float | None, fmt: str, out: Path | None, index_arg: str | None) -> None:
    """Detections within RADIUS_ARCSEC of RA DEC, nearest first.

    RA and DEC in degrees, or sexagesimal as astropy's SkyCoord reads them
    (10:21:03.2 +41:12:00 with RA in hours, or 10h21m03.2s +41d12m00s).
    """
    from daemon.index import IndexFault
    from daemon.search import NoIndex, SearchError, write
    from daemon.search import search as cone

    url = _index_url(obj, index_arg)
    if fmt == "parquet" and out is None and sys.stdout.isatty():
        _fail("--format parquet writes binary: give -o FILE or redirect the output",
              EXIT_CONFIG)
    try:
        table = cone(url, ra, dec, radius, filter=filter_, mag_max=mag_max)
    except (NoIndex, IndexFault, OSError) as exc:
        _fail(str(exc), EXIT_FAILED)
    except SearchError as exc:
        _fail(str(exc), EXIT_CONFIG)
    if out is None:
        write(table, fmt)
    else:
        with open(out, "wb") as fh:
            write(table, fmt, fh)


@main.group("index")
def index_group() -> None:
    """The detection index: rebuild | check."""


@index_group.command("rebuild")
@click.pass_obj
def index_rebuild(obj: _Ctx) -> None:
    """Make the index again from the catalogs of every done dataset (the daemon must not
    run; searches see the old index until the new one is complete)."""
    from daemon.indexcheck import rebuild
    from daemon.outputs import OutputStore
    from state.store import StateStore

    config = obj.logging()
    url = _index_url(obj, None)
    try:
        lock = InstanceLock(config.state_path)
        lock.acquire()
    except AlreadyRunning as exc:
        _fail(f"{exc} (index rebuild writes the index the daemon writes)", EXIT_LOCKED)
    try:
        with StateStore(config.state_path, create=False) as store:
            outcome = rebuild(url, store, OutputStore(config.output_url))
    except FileNotFoundError as exc:
        _fail(str(exc), EXIT_FAILED)
    finally:
        lock.release()
    click.echo(f"index rebuilt at {url}: {outcome.catalogs} catalogs, {outcome.rows} "
               f"detections (commit {outcome.commit})")
    for obs_id, why in outcome.unusable:
        click.echo(f"  not indexed: {obs_id}: {why}")
    if outcome.unusable:
        sys.exit(EXIT_FAILED)


@index_group.command("check")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def index_check(obj: _Ctx, as_json: bool) -> None:
    """Compare the index with the state and the catalogs (exit 1 if they differ)."""
    from daemon.indexcheck import check
    from daemon.outputs import OutputStore
    from state.store import StateStore

    config = obj.config
    url = _index_url(obj, None)
    try:
        with StateStore(config.state_path, readonly=True) as store:
            report = check(url, store, OutputStore(config.output_url))
    except FileNotFoundError as exc:
        _fail(str(exc), EXIT_FAILED)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(f"index {url}: commit {report.commit}, {report.catalogs} catalogs, "
                   f"{report.rows} detections in {report.partitions} partitions "
                   f"({report.fragments} files)")
        for line in report.notes:
            click.echo(f"  note: {line}")
        for line in report.problems:
            click.echo(f"  PROBLEM: {line}")
        click.echo("ok: the index agrees with the state and the catalogs" if report.ok else
                   f"{len(report.problems)} kind(s) of problem")
    sys.exit(0 if report.ok else EXIT_FAILED)


@main.command()
@click.argument("obs_id")
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, path_type=Path),
              help="PNG to write (default: OBS_ID_preview.png).")
@click.pass_obj
def preview(obj: _Ctx, obs_id: str, out: Path | None) -> None:
    """A PNG of OBS_ID's image with its catalog's Kron ellipses."""
    from daemon.preview import PreviewError
    from daemon.preview import preview as draw

    try:
        path = draw(obj.logging(), obs_id.lower(), out)
    except PreviewError as exc:
        _fail(str(exc), EXIT_FAILED)
    click.echo(str(path))


@main.command()
@click.option("--dir", "workdir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("demo-output"), show_default=True,
              help="Where the demo writes its config, database, catalogs and preview.")
@click.option("--exposures", default=24, show_default=True, type=click.IntRange(1, 2000),
              help="Exposures in the synthetic archive at the start.")
@click.option("--release", default=8, show_default=True, type=click.IntRange(0, 2000),
              help="Exposures released while the daemon runs.")
def demo(workdir: Path, exposures: int, release: int) -> None:
    """The whole pipeline offline: local MAST and S3 stand-ins, the daemon, a preview."""
    from daemon import logs
    from standin.demo import DemoError, run_demo

    logs.configure("warning", "console")
    try:
        result = run_demo(workdir, exposures=exposures, release=release)
    except DemoError as exc:
        _fail(str(exc), EXIT_FAILED)
    except KeyboardInterrupt:
        click.echo("mastmirror: demo interrupted; everything it started is stopped", err=True)
        sys.exit(130)
    click.echo(f"demo finished in {result.seconds:.0f} s")


if __name__ == "__main__":  # pragma: no cover
    main()
