"""Rows that arrive over time: micro-batches published with Write-Audit-Publish (``microbatch``), Feast's
push (``push``: ``POST /push`` and ``fl.push``) with its write-ahead buffer (``buffer``).

Floor plan: above ``serving`` (it writes the online store) and ``auditing`` (it audits and publishes like a
backfill); ``featurelake serve`` hands the server a push handler built here (the server does not import it).
"""

from __future__ import annotations

from featurelake.streaming.microbatch import (
    REJECTED_TABLE,
    MicroBatchResult,
    MicroBatchWriter,
    last_committed,
)

__all__ = ["REJECTED_TABLE", "MicroBatchResult", "MicroBatchWriter", "last_committed"]
