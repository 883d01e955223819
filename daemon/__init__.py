"""mastmirror's service: configuration, MAST discovery, dispatch, reconcile, scheduling, CLI."""

from lambda_sep import __version__

__all__ = ["__version__"]
