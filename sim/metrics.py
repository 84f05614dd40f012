"""Summaries of a run: per tenant and overall latency statistics, SLOs, utilisation."""

from __future__ import annotations

import math

import polars as pl

LATENCY_METRICS = ("ttft_s", "tpot_s", "e2e_s", "queue_wait_s")
STATS = ("mean", "p50", "p90", "p99")
_QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}


def _group_summary(df: pl.DataFrame, span_s: float) -> dict:
    ok = df.filter(pl.col("status") == "ok")
    out: dict = {
        "requests": df.height,
        "completed": ok.height,
        "rejected": int((df["status"] == "rejected").sum()),
        "unfinished": int((df["status"] == "unfinished").sum()),
        "throughput_rps": ok.height / span_s if span_s > 0 else math.nan,
        "output_tokens_per_s": float(ok["generated_tokens"].sum()) / span_s if span_s > 0 else math.nan,
        "preemptions": int(df["preemptions"].sum()),
    }
    exprs = []
    for m in LATENCY_METRICS:
        exprs.append(pl.col(m).mean().alias(f"{m}:mean"))
        for name, q in _QUANTILES.items():
            exprs.append(pl.col(m).quantile(q, interpolation="linear").alias(f"{m}:{name}"))
    row = ok.select(exprs).row(0, named=True) if ok.height else {}
    for m in LATENCY_METRICS:
        out[m] = {s: _num(row.get(f"{m}:{s}")) for s in STATS}
    slo_met = df["slo_met"].drop_nulls()  # null where a request has no SLO
    out["slo_requests"] = slo_met.len()
    out["slo_attainment"] = float(slo_met.mean()) if slo_met.len() else None
    return out


def _num(x) -> float:
    return float(x) if x is not None else math.nan


def summarize(requests: pl.DataFrame, replicas: list[dict]) -> dict:
    """Per-tenant and overall summary of a finished run.

    Throughput is measured over the span from the first arrival to the last
    completion; SLO attainment counts rejected and unfinished requests that
    carry an SLO as misses.
    """
    finish = requests["finish_s"].drop_nans().drop_nulls()
    start = float(requests["arrival_s"].min()) if requests.height else 0.0
    end = float(finish.max()) if finish.len() else start
    span = max(end - start, 0.0)
    lean = requests.select(
        "tenant", "status", "generated_tokens", "preemptions", "slo_met", *LATENCY_METRICS
    )  # filter copies only these columns
    tenants = {
        t: _group_summary(lean.filter(pl.col("tenant") == t), span)
        for t in sorted(requests["tenant"].unique().to_list())
    }
    busy = [r["busy_s"] for r in replicas]
    return {
        "span_s": span,
        "overall": _group_summary(lean, span),
        "tenants": tenants,
        "replicas": [dict(r, busy_fraction=(r["busy_s"] / span if span > 0 else math.nan)) for r in replicas],
        "busy_fraction": (sum(busy) / (span * len(busy))) if span > 0 and busy else math.nan,
    }
