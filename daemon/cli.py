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
from daemon.lock import AlreadyRunning

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
    click.echo(f"datasets: {c['done']} done, {c['failed']} failed, {c['new']} new, "
               f"{c['dispatched']} in flight, {c['total']} total")


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


main.add_command(lambda_group, "lambda")


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
