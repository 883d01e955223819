"""The SEP extraction function: what runs in AWS Lambda (or in the local process pool).

This package imports only numpy, astropy, sep, boto3/botocore and the standard library, so
it can be bundled for Lambda on its own. It never imports ``daemon`` or ``state``.
"""

# The one place the version is written: pyproject.toml reads it from here, the daemon
# imports it, and a Lambda bundle (which carries no dist-info) still knows it.
__version__ = "0.1.0"

__all__ = ["__version__"]
