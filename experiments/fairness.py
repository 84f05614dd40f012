"""Jain's fairness index, the one fairness number the DriftSched experiment reports.

The original records no fairness metric; driftsim adds Jain's index so the
cost of strict tiers (priority, aging, weighted) shows up next to their
latency gains. It is a plain function of a vector so any per-tenant
quantity can be fed to it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def jain_index(values: Iterable[float]) -> float:
    """Jain's index ``(sum x)^2 / (n * sum x^2)`` of non-negative values, in ``[1/n, 1]``.

    1.0 when every value is equal (all tenants treated alike); ``1/n`` when
    one value holds everything and the rest are 0. Scale-invariant, so the
    unit of ``values`` (seconds, tokens/s) does not matter.

    Edge cases, chosen so that a report never crashes on them: an empty
    input and any NaN give NaN (a tenant with no completed request has no
    mean latency, so fairness is undefined); all zeros give 1.0 (everyone
    got the same). A negative value is an error: the index is defined for
    allocations, not for signed quantities.
    """
    xs = [float(v) for v in values]
    if not xs or any(math.isnan(x) for x in xs):
        return math.nan
    if any(x < 0 for x in xs):
        raise ValueError(f"jain_index needs non-negative values, got {xs}")
    total = sum(xs)
    squares = sum(x * x for x in xs)
    if squares == 0:
        return 1.0
    return total * total / (len(xs) * squares)
