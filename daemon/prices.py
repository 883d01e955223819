"""S3's published request prices, for the cost figures refresh and status show.

Standard-library only: ``status`` imports it and must start fast.
"""

from __future__ import annotations

# S3 Standard, us-east-1, per 1,000 requests ("GET, SELECT, and all other requests" and
# "PUT, COPY, POST, LIST requests" on https://aws.amazon.com/s3/pricing/; a HEAD bills as a
# GET-class request). The archive bucket is not Requester Pays: its owner pays for the reads.
GET_PRICE_PER_1000 = 0.0004
LIST_PRICE_PER_1000 = 0.005


def cost_usd(heads: float, lists: float = 0.0) -> float:
    """What ``heads`` HEAD (GET-class) and ``lists`` LIST requests cost at S3's prices."""
    return heads * GET_PRICE_PER_1000 / 1000.0 + lists * LIST_PRICE_PER_1000 / 1000.0
