"""Summaries of a run: per tenant and overall latency statistics, SLOs, utilisation."""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from driftsim.sim.results import STATUS
from driftsim.sim.sketch import DEFAULT_ALPHA, QuantileSketch
from driftsim.sim.summary_fields import LATENCY_METRICS, STATS
_QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}


def _group_summary(df: pl.DataFrame, span_s: float) -> dict:
    ok = df.filter(pl.col("status") == "ok")
    out: dict = {
        "requests": df.height,
        "completed": ok.height,
        "rejected": int((df["status"] == "rejected").sum()),
        "unfinished": int((df["status"] == "unfinished").sum()),
        "timeout": int((df["status"] == "timeout").sum()),  # the client gave up (driftsim.sim.client)
        "abandoned": int((df["status"] == "abandoned").sum()),
        "retries": int(df["attempts"].sum()) - df.height if "attempts" in df.columns else 0,
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
        "tenant", "status", "generated_tokens", "preemptions", "slo_met", *LATENCY_METRICS,
        *(["attempts"] if "attempts" in requests.columns else []),
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


class _GroupTotals:
    """Additive totals of one tenant (or all): what :func:`_group_summary` reports, without the rows."""

    def __init__(self, statuses: list[str], alpha: float) -> None:
        self.statuses = statuses
        self.by_status = [0] * len(statuses)
        self.requests = 0
        self.generated_ok = 0
        self.preemptions = 0
        self.extra_attempts = 0
        self.slo_requests = 0
        self.slo_met = 0
        self.latency = {m: QuantileSketch(alpha) for m in LATENCY_METRICS}

    def add(self, part: pl.DataFrame) -> None:
        codes = part["status"].to_physical().to_numpy()
        for code, n in enumerate(np.bincount(codes, minlength=len(self.statuses))):
            self.by_status[code] += int(n)
        self.requests += part.height
        ok_mask = part["status"] == "ok"
        ok = part.filter(ok_mask)
        self.generated_ok += int(ok["generated_tokens"].sum())
        self.preemptions += int(part["preemptions"].sum())
        if "attempts" in part.columns:
            self.extra_attempts += int(part["attempts"].sum()) - part.height
        slo = part["slo_met"].drop_nulls()
        self.slo_requests += slo.len()
        self.slo_met += int(slo.sum())
        for m, sketch in self.latency.items():
            sketch.add(ok[m].drop_nulls().drop_nans().to_numpy())

    def merge(self, other: _GroupTotals) -> None:
        self.by_status = [a + b for a, b in zip(self.by_status, other.by_status)]
        for name in ("requests", "generated_ok", "preemptions", "extra_attempts", "slo_requests", "slo_met"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for m, sketch in self.latency.items():
            sketch.merge(other.latency[m])

    def summary(self, span_s: float) -> dict:
        count = dict(zip(self.statuses, self.by_status))
        completed = count.get("ok", 0)
        out: dict = {"requests": self.requests, "completed": completed}
        out.update({s: n for s, n in count.items() if s not in ("ok", "pending")})
        out.update(
            retries=self.extra_attempts,
            throughput_rps=completed / span_s if span_s > 0 else math.nan,
            output_tokens_per_s=self.generated_ok / span_s if span_s > 0 else math.nan,
            preemptions=self.preemptions,
        )
        for m, sketch in self.latency.items():
            out[m] = {"mean": sketch.mean, **{name: sketch.quantile(q) for name, q in _QUANTILES.items()}}
        out["slo_requests"] = self.slo_requests
        out["slo_attainment"] = self.slo_met / self.slo_requests if self.slo_requests else None
        return out


class StreamingSummary:
    """The summary :func:`summarize` gives, built chunk by chunk in memory independent of the trace.

    Feed it the results table in pieces (:meth:`add`); :meth:`result` gives
    the same dict as :func:`summarize`. Counts, sums, throughput, span and
    SLO attainment are exact, latency means are exact up to the order of
    floating-point summation, and every percentile is within ``alpha``
    relative error of the exact one (:class:`driftsim.sim.sketch.QuantileSketch`);
    the dict says so under ``"percentiles"``.
    """

    def __init__(self, alpha: float = DEFAULT_ALPHA) -> None:
        self.alpha = alpha
        self.tenants: dict[str, _GroupTotals] = {}
        self.start = math.inf  # first arrival
        self.end = -math.inf  # last completion
        self._statuses: list[str] = list(STATUS.categories)

    def add(self, requests: pl.DataFrame) -> None:
        """Fold in some rows of the results table (any split of it, in any order)."""
        if requests.height == 0:
            return
        self.start = min(self.start, float(requests["arrival_s"].min()))
        finish = requests["finish_s"].drop_nulls().drop_nans()
        if finish.len():
            self.end = max(self.end, float(finish.max()))
        lean = requests.select(
            "tenant", "status", "generated_tokens", "preemptions", "slo_met", *LATENCY_METRICS,
            *(["attempts"] if "attempts" in requests.columns else []),
        )
        for (tenant,), part in lean.group_by("tenant"):
            if tenant not in self.tenants:
                self.tenants[tenant] = _GroupTotals(self._statuses, self.alpha)
            self.tenants[tenant].add(part)

    def result(self, replicas: list[dict]) -> dict:
        """The summary dict (as :func:`summarize`), plus how its percentiles were computed."""
        start = self.start if self.tenants else 0.0
        end = self.end if self.end > -math.inf else start
        span = max(end - start, 0.0)
        overall = _GroupTotals(self._statuses, self.alpha)
        for t in self.tenants.values():
            overall.merge(t)
        busy = [r["busy_s"] for r in replicas]
        return {
            "span_s": span,
            "overall": overall.summary(span),
            "tenants": {t: self.tenants[t].summary(span) for t in sorted(self.tenants)},
            "replicas": [dict(r, busy_fraction=(r["busy_s"] / span if span > 0 else math.nan)) for r in replicas],
            "busy_fraction": (sum(busy) / (span * len(busy))) if span > 0 and busy else math.nan,
            "percentiles": {"method": "log-bucket sketch", "relative_error": self.alpha},
        }
