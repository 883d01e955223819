"""mastmirror's service: configuration, MAST discovery, dispatch, reconcile, scheduling, CLI."""

from importlib import metadata

try:
    __version__ = metadata.version("mastmirror")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
