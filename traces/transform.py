"""Reshape a loaded request table: tenants, rate, duration, SLOs, priorities.

Each function takes a request table and returns a new one (inputs are never
modified), so a scenario is a readable chain: load, assign tenants, scale,
clip. Randomness comes from a numpy Generator built from an explicit seed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import polars as pl

__all__ = ["assign_tenants", "clip_duration", "head", "parse_tenant_weights", "scale_rate", "set_priorities", "set_slos"]


def parse_tenant_weights(spec: str) -> dict[str, float]:
    """``"premium=2,standard=1"`` or ``"a,b,c"`` (weight 1 each) -> ``{name: weight}`` for :func:`assign_tenants`.

    The one parser of a tenant-weights option. Raises ValueError when a
    weight is not a number or no name is given.
    """
    out: dict[str, float] = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, w = part.partition("=")
        try:
            out[name.strip()] = float(w) if w else 1.0
        except ValueError:
            raise ValueError(f"weight of {name!r} is not a number: {w!r} (expected e.g. premium=2,standard=1)") from None
    if not out:
        raise ValueError("expected names with optional weights, e.g. premium=1,standard=1,batch=1")
    return out


def _weights(tenants: Mapping[str, float] | Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Names and normalised weights; a list means equal weights."""
    if isinstance(tenants, str):
        raise ValueError("tenants must be a list of names or a {name: weight} dict, not a string")
    if isinstance(tenants, Mapping):
        names, w = list(tenants), np.array([float(v) for v in tenants.values()], dtype=float)
    else:
        names = list(tenants)
        w = np.ones(len(names))
    if not names:
        raise ValueError("tenants is empty; give at least one tenant name")
    if len(set(names)) != len(names) or any(not isinstance(n, str) or not n for n in names):
        raise ValueError(f"tenant names must be distinct non-empty strings, got {names}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"tenant weights must be finite, >= 0 and not all 0, got {dict(zip(names, w.tolist()))}")
    return names, w / w.sum()


def assign_tenants(
    df: pl.DataFrame,
    tenants: Mapping[str, float] | Sequence[str],
    *,
    seed: int,
    method: Literal["random", "round_robin"] = "random",
    replace: bool = False,
) -> pl.DataFrame:
    """Split a tenant-less trace into tenants by weight (a list means equal weights).

    "random": each request independently, with probability = weight
    (deterministic for a seed). "round_robin": a fixed weighted interleave in
    arrival order, so shares are exact to within one request; `seed` is
    unused. A trace that already has tenants other than "default" is refused
    unless `replace=True`, so real tenant labels are not overwritten by
    accident.
    """
    names, w = _weights(tenants)
    n = df.height
    if not replace:
        existing = sorted(set(df["tenant"].unique().drop_nulls().to_list()) - {"default"})
        if existing:
            raise ValueError(f"the trace already has tenants {existing}; pass replace=True to overwrite them")
    if method == "random":
        codes = np.random.default_rng(seed).choice(len(names), size=n, p=w)
    elif method == "round_robin":
        # Tenant i's k-th turn is at virtual time (k + 0.5) / w_i; merging all turns in time order
        # gives a smooth weighted interleave (ties go to the earlier-listed tenant).
        counts = np.ceil(w * n).astype(np.int64) + 1
        counts[w == 0] = 0
        owner = np.repeat(np.arange(len(names)), counts)
        k = np.concatenate([np.arange(c) for c in counts])
        with np.errstate(divide="ignore"):
            t = (k + 0.5) / w[owner]
        codes = owner[np.lexsort((owner, t))][:n]
    else:
        raise ValueError(f"unknown method {method!r}; expected 'random' or 'round_robin'")
    labels = pl.Series("tenant", names, dtype=pl.String).gather(pl.Series(codes, dtype=pl.UInt32))
    return df.with_columns(labels)


def scale_rate(df: pl.DataFrame, factor: float) -> pl.DataFrame:
    """Multiply the request rate by `factor` (2 = twice the rate: every arrival time halves)."""
    if not (math.isfinite(factor) and factor > 0):
        raise ValueError(f"factor must be a finite number > 0, got {factor!r}")
    return df.with_columns(pl.col("arrival_s") / factor)


def clip_duration(df: pl.DataFrame, seconds: float) -> pl.DataFrame:
    """Keep the requests that arrive in [0, seconds)."""
    if not (seconds >= 0):
        raise ValueError(f"seconds must be >= 0, got {seconds!r}")
    return df.filter(pl.col("arrival_s") < seconds)


def head(df: pl.DataFrame, n: int) -> pl.DataFrame:
    """Keep the first `n` requests by arrival."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return df.head(n)


def _check_tenants(df: pl.DataFrame, names: Sequence[str]) -> None:
    """A name that is not in the trace is almost always a typo: say so instead of doing nothing."""
    present = set(df["tenant"].unique().to_list())
    unknown = [n for n in names if n not in present]
    if unknown:
        raise ValueError(f"tenant(s) {unknown} not in the trace; it has {sorted(present)}")


def set_slos(df: pl.DataFrame, slos: Mapping[str, tuple[float | None, float | None]]) -> pl.DataFrame:
    """Set (ttft_s, e2e_s) objectives per tenant; None leaves that objective unset (null).

    Tenants not named keep their current values.
    """
    _check_tenants(df, list(slos))
    ttft, e2e = pl.col("slo_ttft_s"), pl.col("slo_e2e_s")
    for tenant, pair in slos.items():
        a, b = pair
        for v in (a, b):
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ValueError(f"tenant {tenant!r}: SLOs must be finite and > 0 seconds, got {pair}")
        if a is not None and b is not None and b < a:
            raise ValueError(f"tenant {tenant!r}: e2e SLO {b} s is shorter than the TTFT SLO {a} s")
        hit = pl.col("tenant") == tenant
        ttft = pl.when(hit).then(pl.lit(a, pl.Float64)).otherwise(ttft)
        e2e = pl.when(hit).then(pl.lit(b, pl.Float64)).otherwise(e2e)
    return df.with_columns(ttft.alias("slo_ttft_s"), e2e.alias("slo_e2e_s"))


def set_priorities(df: pl.DataFrame, priorities: Mapping[str, int | None]) -> pl.DataFrame:
    """Set a priority per tenant (lower is more urgent; None clears it). Tenants not named are unchanged."""
    _check_tenants(df, list(priorities))
    prio = pl.col("priority")
    for tenant, p in priorities.items():
        if p is not None and (isinstance(p, bool) or not isinstance(p, (int, np.integer))):
            raise ValueError(f"tenant {tenant!r}: priority must be an integer, got {p!r}")
        prio = pl.when(pl.col("tenant") == tenant).then(pl.lit(p, pl.Int64)).otherwise(prio)
    return df.with_columns(prio.alias("priority"))
