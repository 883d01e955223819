"""The AWS prices mastmirror's cost estimates use, in one place, with where they come from.

US East (N. Virginia), on demand, the first pricing tier, as published when this was written
(2026); other regions and tiers differ by a few per cent. The daemon's estimated spend
(``daemon.metrics``), the refresh walk's and the notifications' request costs (``status``,
``mastmirror refresh``) and the cost model in docs/BENCHMARKS.md all read them from here.
Standard library only: ``status`` imports it and must start fast.

* Lambda (https://aws.amazon.com/lambda/pricing/): duration per GB-second,
  $0.0000166667 on x86_64 and $0.0000133334 on arm64 (the first 6 and 7.5 billion GB-s a
  month); $0.20 per million requests (invocations), either architecture.
* Lambda's CPU (AWS Lambda developer guide, "Configuring memory"): a function gets CPU in
  proportion to its memory, the equivalent of one full vCPU at 1,769 MB, so below that its
  computing stretches by 1769/MB (the cost models of the benchmarks).
* S3 Standard (https://aws.amazon.com/s3/pricing/): PUT, COPY, POST and LIST $0.005 per
  1,000 requests; "GET, SELECT, and all other requests" $0.0004 per 1,000 (a HEAD bills as
  one); DELETE free. The archive bucket (stpubdata, AWS Open Data) is not Requester Pays:
  its owner pays for the reads, and reading it costs its reader nothing.
"""

from __future__ import annotations

__all__ = ["LAMBDA_FULL_VCPU_MB", "LAMBDA_GB_S", "LAMBDA_REQUEST", "S3_GET", "S3_PUT",
           "cost_usd", "lambda_usd"]

LAMBDA_GB_S = {"x86_64": 0.0000166667, "arm64": 0.0000133334}  # USD per GB-second
LAMBDA_REQUEST = 0.20 / 1_000_000  # USD per invocation
LAMBDA_FULL_VCPU_MB = 1769  # memory at which a function has one full vCPU
S3_PUT = 0.005 / 1000  # USD per PUT, COPY, POST or LIST request
S3_GET = 0.0004 / 1000  # USD per GET or HEAD request


def lambda_usd(run_seconds: float, requests: int, *, memory_mb: int, architecture: str) -> float:
    """What Lambda bills for ``run_seconds`` of function time at ``memory_mb`` and
    ``requests`` invocations (Lambda counts a GB as 1,024 MB)."""
    return (run_seconds * memory_mb / 1024.0 * LAMBDA_GB_S[architecture]
            + requests * LAMBDA_REQUEST)


def cost_usd(heads: float, lists: float = 0.0) -> float:
    """What ``heads`` HEAD (GET-class) and ``lists`` LIST requests cost at S3's prices."""
    return heads * S3_GET + lists * S3_PUT
