"""The bootstrap interval of each statistic's sim-vs-real error tells a real miss from sampling noise."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from driftsim.validation.scoring import (
    METRICS,
    STATS,
    aggregate,
    bootstrap_errors,
    target_check,
    verdict,
)


def lat(values: np.ndarray, gaps_per_request: int = 4) -> pl.DataFrame:
    """A latency table (as scoring.latencies makes) whose every metric is ``values`` (ITL: gaps of it)."""
    n = len(values)
    return pl.DataFrame({
        "request_id": np.arange(n), "tenant": ["a"] * n, "status": ["ok"] * n,
        "queue_wait_s": values * 0.1, "ttft_s": values, "e2e_s": values * 3, "tpot_s": values / 10,
        "itls": [[float(v) / 10] * gaps_per_request for v in values],
    })


def test_the_same_latencies_on_both_sides_give_a_zero_interval():
    real = lat(np.random.default_rng(1).lognormal(0, 0.5, 200))
    out = bootstrap_errors(real, real, set(range(200)))
    for m in METRICS:
        for k in STATS:
            assert out[m][k] == {"err_lo": 0.0, "err_hi": 0.0}, (m, k)


def test_a_systematic_error_is_tight_around_its_size_and_missed():
    x = np.random.default_rng(2).lognormal(0, 0.5, 200)
    out = bootstrap_errors(lat(x), lat(1.2 * x), set(range(200)))
    for m in METRICS:
        for k in STATS:
            assert out[m][k]["err_lo"] == pytest.approx(0.2, abs=1e-9) and out[m][k]["err_hi"] == pytest.approx(0.2, abs=1e-9)
    assert verdict(0.2, out["ttft_s"]["p50"]["err_lo"], out["ttft_s"]["p50"]["err_hi"], 0.1) == "missed"


def test_a_tail_percentile_of_two_samples_of_one_distribution_is_within_noise():
    """Real and sim draw independently from the same heavy-tailed law: their p99 differ by far more than a
    10 % bound, but the interval reaches zero, so the verdict is noise, not a miss; their p50 are close."""
    rng = np.random.default_rng(4)  # a draw whose p99 differ by 34 % (most seeds differ by > 10 %)
    real, sim = rng.pareto(2.5, 150) + 1, rng.pareto(2.5, 150) + 1
    r, s = lat(real), lat(sim)
    out = bootstrap_errors(r, s, set(range(150)))
    err = np.quantile(sim, 0.99) / np.quantile(real, 0.99) - 1
    lo, hi = out["ttft_s"]["p99"]["err_lo"], out["ttft_s"]["p99"]["err_hi"]
    assert abs(err) > 0.1 and lo < 0 < hi
    assert verdict(abs(err), lo, hi, 0.1) == "within noise"
    assert hi - lo > out["ttft_s"]["p50"]["err_hi"] - out["ttft_s"]["p50"]["err_lo"]  # the tail is the coarse one


def test_bootstrap_is_deterministic_and_follows_only_the_compared_requests():
    rng = np.random.default_rng(4)
    r, s = lat(rng.lognormal(0, 0.5, 120)), lat(rng.lognormal(0, 0.5, 120))
    assert bootstrap_errors(r, s, set(range(100))) == bootstrap_errors(r, s, set(range(100)))
    assert bootstrap_errors(r, s, set(range(100))) != bootstrap_errors(r, s, set(range(120)))


def test_verdicts():
    assert verdict(0.04, 0.02, 0.06, 0.05) == "met"
    assert verdict(0.08, 0.01, 0.15, 0.05) == "within noise"
    assert verdict(0.08, -0.15, -0.01, 0.05) == "within noise"
    assert verdict(0.08, 0.06, 0.10, 0.05) == "missed"
    assert verdict(0.08, math.nan, math.nan, 0.05) == "missed"  # no interval, no benefit of the doubt


def test_target_rows_carry_the_interval_and_the_verdict():
    cell = lambda err, lo, hi: {"real": 1.0, "sim": 1.0 + err, "err": err, "err_lo": lo, "err_hi": hi}
    runs = [{"groups": {"overall": {m: {k: cell(0.12, 0.08, 0.16) for k in STATS} for m in METRICS}}},
            {"groups": {"overall": {m: {k: cell(0.02, -0.02, 0.06) for k in STATS} for m in METRICS}}}]
    agg = aggregate(runs)
    rows = target_check(agg, {("ttft_s", "p50"): 0.05})
    assert rows[0]["err"] == pytest.approx(0.07) and rows[0]["err_lo"] == pytest.approx(0.03)
    assert rows[0]["err_hi"] == pytest.approx(0.11) and rows[0]["verdict"] == "within noise"
