"""Summaries of a run: per tenant and overall latency statistics, SLOs, utilisation."""

from __future__ import annotations

import copy
import math

import numpy as np
import polars as pl

from driftsim.sim.results import STATUS
from driftsim.sim.sketch import DEFAULT_ALPHA, QuantileSketch
from driftsim.sim.summary_fields import BENCH_LATENCIES, BENCH_STATS, LATENCY_METRICS, STATS, bench_field

_QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}
_BENCH_QUANTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}
_SCALE = {"ms": 1e3, "s": 1.0}
#: Columns of the results table the summaries read.
_ITL_BLOCK = 4096  # requests per block when the streaming summary repeats mean gaps into its sketch
_LEAN = ("tenant", "status", "input_tokens", "generated_tokens", "preemptions", "slo_met", *LATENCY_METRICS)


def _lean(requests: pl.DataFrame) -> pl.DataFrame:
    """The columns the summaries read; ``attempts`` and ``cached_tokens`` where the table has them."""
    # NOTE: series, not select(): the expression engine materialises what it selects (~38 MB at 1M requests)
    names = (*_LEAN, *(c for c in ("attempts", "cached_tokens") if c in requests.columns))
    return pl.DataFrame([requests.get_column(c) for c in names])


def prefix_figures(completed: int, input_tokens: int, cached_tokens: int, hit_requests: int) -> dict:
    """Prefix-cache figures of a group of completed requests: prompt tokens found cached at their first
    admission (prefill saved), and the share of tokens and of requests that hit."""
    return {
        "prefix_cached_tokens": cached_tokens,
        "prefix_hit_requests": hit_requests,
        "prefix_token_hit_rate": cached_tokens / input_tokens if input_tokens else math.nan,
        "prefix_request_hit_rate": hit_requests / completed if completed else math.nan,
    }


def _weighted_quantiles(values: np.ndarray, weights: np.ndarray, qs: dict[str, float]) -> dict[str, float]:
    """The q-quantiles (linear) of ``values`` with each repeated ``weights`` times, without repeating them;
    one sort serves every q."""
    keep = weights > 0
    if not keep.all():  # copies only where some weigh nothing (one-token answers have no gaps)
        values, weights = values[keep], weights[keep]
    del keep
    if not weights.size:
        return {name: math.nan for name in qs}
    order = np.argsort(values, kind="stable")
    w = weights[order]
    # in place where the sum keeps the dtype (int64, float64): one array of the sample's size fewer at once
    cum = np.cumsum(w, out=w) if w.dtype in (np.int64, np.float64) else np.cumsum(w)
    at = lambda rank: float(values[order[np.searchsorted(cum, rank, side="right")]])  # noqa: E731
    out = {}
    for name, q in qs.items():
        pos = q * (cum[-1] - 1)
        lo = math.floor(pos)
        low = at(lo)
        out[name] = low if pos == lo else low + (pos - lo) * (at(lo + 1) - low)
    return out


def _weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """The q-quantile (linear) of ``values`` with each repeated ``weights`` times, without repeating them."""
    return _weighted_quantiles(values, weights, {"q": q})["q"]


def _itl_inputs(ok: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per completed request: its mean gap between tokens (s) and how many gaps it had."""
    gaps = ok["generated_tokens"].to_numpy().astype(np.int64)  # a copy in numpy: one array, not polars' two
    gaps -= 1
    tpot = ok["tpot_s"].to_numpy()  # NaN where null
    if not tpot.flags.writeable:  # no nulls: polars' own buffer
        tpot = tpot.copy()
    tpot[np.isnan(tpot)] = 0.0
    return tpot, gaps


def _bench_figures(df: pl.DataFrame, ok: pl.DataFrame, span_s: float) -> dict:
    """`vllm bench serve`'s figures for one group, flat, the unit in each name.

    ITL is vLLM's pooled distribution of gaps between consecutive tokens.
    The simulator records each request's first and last token times, not
    every token's, so a request's gaps all count as its mean gap (its TPOT),
    weighted by their number (tokens - 1): the mean ITL is exact (total
    decode time / total gaps), the percentiles are those of the per-request
    mean gaps, weighted by gaps. Goodput counts completed requests that met
    every SLO they carry, per second; None when no request carries one.
    """
    rate = lambda x: float(x) / span_s if span_s > 0 else math.nan  # noqa: E731
    out: dict = {}
    for metric, unit in BENCH_LATENCIES:
        if metric == "itl":
            values, weights = _itl_inputs(ok)
            mean = float((values * weights).sum() / weights.sum()) if weights.sum() else math.nan
            stats = {"mean": mean, **_weighted_quantiles(values, weights, _BENCH_QUANTILES)}
        else:
            col = ok[f"{metric}_s"].drop_nulls().drop_nans()
            stats = (_mean_and_quantiles(col, _BENCH_QUANTILES) if col.len()
                     else dict.fromkeys(("mean", *_BENCH_QUANTILES), math.nan))
        out.update({bench_field(metric, s): stats[s] * _SCALE[unit] for s in BENCH_STATS})
    inputs, outputs = float(ok["input_tokens"].sum()), float(ok["generated_tokens"].sum())
    out.update(input_tokens_per_s=rate(inputs), total_tokens_per_s=rate(inputs + outputs))
    has_slo = df["slo_met"].is_not_null()
    good = int(((df["status"] == "ok") & df["slo_met"].fill_null(False)).sum())
    out["goodput_rps"] = rate(good) if has_slo.any() else None
    return out


def _group_summary(df: pl.DataFrame, span_s: float) -> dict:
    completed = df["status"] == "ok"
    ok = df if completed.all() else df.filter(completed)  # a filter copies every column
    del completed
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
    for m in LATENCY_METRICS:
        out[m] = _mean_and_quantiles(ok[m], _QUANTILES) if ok.height else dict.fromkeys(STATS, math.nan)
    slo_met = df["slo_met"].drop_nulls()  # null where a request has no SLO
    out["slo_requests"] = slo_met.len()
    out["slo_attainment"] = float(slo_met.mean()) if slo_met.len() else None
    out.update(_bench_figures(df, ok, span_s))
    cached = ok["cached_tokens"] if "cached_tokens" in ok.columns else pl.Series([], dtype=pl.Int32)
    out.update(prefix_figures(ok.height, int(ok["input_tokens"].sum()), int(cached.sum()), int((cached > 0).sum())))
    return out


def _mean_and_quantiles(col: pl.Series, quantiles: dict[str, float]) -> dict[str, float]:
    """Mean and linear quantiles of ``col`` (nulls left out), one metric and one quantile at a time.

    NOTE: memory. Each quantile selects on its own copy of the column; one at a time, not all metrics'
    side by side in one select (at 1M requests that was the summary's memory peak).
    """
    return {"mean": _num(col.mean()),
            **{name: _num(col.quantile(q, interpolation="linear")) for name, q in quantiles.items()}}


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
    lean = _lean(requests)  # filter copies only these columns
    names = sorted(requests["tenant"].unique().to_list())
    overall = _group_summary(lean, span)
    if len(names) == 1:  # the one tenant's rows are all the rows, in the same order: the same figures
        tenants = {names[0]: copy.deepcopy(overall)}
    else:
        tenants = {t: _group_summary(lean.filter(pl.col("tenant") == t), span) for t in names}
    busy = [r["busy_s"] for r in replicas]
    return {
        "span_s": span,
        "overall": overall,
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
        self.input_ok = 0
        self.good = 0  # completed and met every SLO it carries
        self.cached_ok = 0  # prompt tokens of completed requests found in the prefix cache
        self.hit_ok = 0  # completed requests that found some
        self.itl = QuantileSketch(alpha)  # each request's mean gap, once per gap (see _bench_figures)

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
        self.input_ok += int(ok["input_tokens"].sum())
        self.good += int((ok_mask & part["slo_met"].fill_null(False)).sum())
        if "cached_tokens" in ok.columns:
            self.cached_ok += int(ok["cached_tokens"].sum())
            self.hit_ok += int((ok["cached_tokens"] > 0).sum())
        values, weights = _itl_inputs(ok)
        for lo in range(0, values.size, _ITL_BLOCK):  # bounded memory: blocks of requests
            self.itl.add(np.repeat(values[lo : lo + _ITL_BLOCK], weights[lo : lo + _ITL_BLOCK]))

    def merge(self, other: _GroupTotals) -> None:
        self.by_status = [a + b for a, b in zip(self.by_status, other.by_status)]
        for name in ("requests", "generated_ok", "preemptions", "extra_attempts", "slo_requests", "slo_met",
                     "input_ok", "good", "cached_ok", "hit_ok"):  # fmt: skip
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for m, sketch in self.latency.items():
            sketch.merge(other.latency[m])
        self.itl.merge(other.itl)

    def bench(self, span_s: float) -> dict:
        """The figures :func:`_bench_figures` gives, from the sketches (percentiles within alpha)."""
        rate = lambda x: float(x) / span_s if span_s > 0 else math.nan  # noqa: E731
        out: dict = {}
        for metric, unit in BENCH_LATENCIES:
            sketch = self.itl if metric == "itl" else self.latency[f"{metric}_s"]
            stats = {"mean": sketch.mean, **{n: sketch.quantile(q) for n, q in _BENCH_QUANTILES.items()}}
            out.update({bench_field(metric, st): stats[st] * _SCALE[unit] for st in BENCH_STATS})
        out.update(input_tokens_per_s=rate(self.input_ok), total_tokens_per_s=rate(self.input_ok + self.generated_ok))
        out["goodput_rps"] = rate(self.good) if self.slo_requests else None
        return out

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
        out.update(self.bench(span_s))
        out.update(prefix_figures(completed, self.input_ok, self.cached_ok, self.hit_ok))
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
        lean = _lean(requests)
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
        for t in sorted(self.tenants):  # a fixed order: float sums must not follow group_by's (unordered) output
            overall.merge(self.tenants[t])
        busy = [r["busy_s"] for r in replicas]
        return {
            "span_s": span,
            "overall": overall.summary(span),
            "tenants": {t: self.tenants[t].summary(span) for t in sorted(self.tenants)},
            "replicas": [dict(r, busy_fraction=(r["busy_s"] / span if span > 0 else math.nan)) for r in replicas],
            "busy_fraction": (sum(busy) / (span * len(busy))) if span > 0 and busy else math.nan,
            "percentiles": {"method": "log-bucket sketch", "relative_error": self.alpha},
        }
