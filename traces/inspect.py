"""Summarise a request table as a plain dict (numbers and strings only), for the CLI to print and for tests."""

from __future__ import annotations

import polars as pl

__all__ = ["inspect_trace"]


def _lengths(col: pl.Expr) -> list[pl.Expr]:
    name = col.meta.output_name()
    return [
        col.quantile(0.5, "linear").alias(f"{name}.p50"),
        col.quantile(0.9, "linear").alias(f"{name}.p90"),
        col.quantile(0.99, "linear").alias(f"{name}.p99"),
        col.mean().alias(f"{name}.mean"),
        col.max().cast(pl.Float64).alias(f"{name}.max"),
    ]


def _nest(flat: dict) -> dict:
    out: dict = {}
    for key, value in flat.items():
        outer, inner = key.split(".")
        out.setdefault(outer, {})[inner] = value
    return out


def inspect_trace(df: pl.DataFrame) -> dict:
    """Size, span, rate, per-tenant shares and token-length percentiles of a trace.

    span_s is last minus first arrival; rates are requests / span_s (None
    when the span is 0). Length stats are p50/p90/p99 (linear interpolation),
    mean and max of input_tokens and output_tokens. prompt_share is the
    fraction of requests that carry prompt text.
    """
    n = df.height
    if n == 0:
        return {"requests": 0, "span_s": 0.0, "rate_per_s": None, "tenants": {}, "prompt_share": 0.0,
                "input_tokens": None, "output_tokens": None}
    span = float(df["arrival_s"].max() - df["arrival_s"].min())
    stats = df.select(*_lengths(pl.col("input_tokens")), *_lengths(pl.col("output_tokens"))).row(0, named=True)
    per_tenant = (
        df.group_by("tenant")
        .agg(
            pl.len().alias("requests"),
            pl.col("input_tokens").mean().alias("mean_input_tokens"),
            pl.col("output_tokens").mean().alias("mean_output_tokens"),
        )
        .sort("tenant")
    )
    tenants = {
        row["tenant"]: {
            "requests": row["requests"],
            "share": row["requests"] / n,
            "rate_per_s": row["requests"] / span if span > 0 else None,
            "mean_input_tokens": row["mean_input_tokens"],
            "mean_output_tokens": row["mean_output_tokens"],
        }
        for row in per_tenant.iter_rows(named=True)
    }
    return {
        "requests": n,
        "span_s": span,
        "rate_per_s": n / span if span > 0 else None,
        "tenants": tenants,
        "prompt_share": float(df["prompt"].is_not_null().mean()),
        **_nest(stats),
    }
