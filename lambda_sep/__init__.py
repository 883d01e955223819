"""The SEP extraction function: what runs in AWS Lambda (or in the local process pool).

This package imports only numpy, astropy, sep, boto3/botocore and the standard library, so
it can be bundled for Lambda on its own. It never imports ``daemon`` or ``state``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__: str = version("mastmirror")
except PackageNotFoundError:  # a Lambda bundle may carry the code without its dist-info
    __version__ = "0+unknown"

__all__ = ["__version__"]
