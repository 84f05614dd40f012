"""Store a request table as CSV or Parquet, after checking it is one.

The file reads back with `load_trace` (format "native") to an equal table:
CSV keeps empty prompt text ("") apart from a missing one (null).
"""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl

from driftsim.traces.schema import TraceError, validate_trace

__all__ = ["write_trace"]


def write_trace(df: pl.DataFrame, path: str | os.PathLike) -> Path:
    """Write `df` to `path` (.csv or .parquet) and return the path.

    Validates first, so a malformed table never reaches disk where a later
    run would trip over it. Parent folders are created.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        what = repr(suffix) if suffix else "a file without extension"
        raise TraceError(f"cannot write {what}; use .csv or .parquet", source=str(path))
    validate_trace(df, source=str(path))
    p.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":  # CSV has no lists: prefix ids as space-separated integers
        ids = pl.col("prefix_ids")
        text = pl.when(ids.list.len() == 0).then(pl.lit("[]")).otherwise(ids.cast(pl.List(pl.String)).list.join(" "))
        df.with_columns(text.alias("prefix_ids")).write_csv(p)
    else:
        df.write_parquet(p)
    return p
