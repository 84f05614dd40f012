"""Run metrics computed by hand: a three-request trace on a cost model simple enough to step on paper.

Cost: 0.1 s per step plus 1 ms per prefill token, nothing else. Requests (arrival, prompt, output):
A (0, 10, 3) and B (0, 10, 5) of tenant gold, C (0.25, 10, 2) of tenant free.

    step 0  [0.00, 0.12]  prefill A, B (20 tokens)   A, B token 1
    step 1  [0.12, 0.22]  decode A, B                 A, B token 2
    step 2  [0.22, 0.32]  decode A, B                 A done (3), B token 3
    step 3  [0.32, 0.43]  prefill C (10), decode B    C token 1, B token 4   (C arrived at 0.25, mid-step)
    step 4  [0.43, 0.53]  decode B, C                 B done (5), C done (2)

So TTFT A 0.12, B 0.12, C 0.43 - 0.25 = 0.18; E2E A 0.32, B 0.53, C 0.28; TPOT (E2E - TTFT) / (out - 1)
A 0.1, B 0.1025, C 0.1. SLOs: gold TTFT <= 0.15 s and E2E <= 0.4 s (A met, B missed), free TTFT <= 0.15 s
(C missed).
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from driftsim.costmodel.linear import LinearCostModel
from driftsim.sim.config import EngineConfig
from driftsim.sim.metrics import summarize
from driftsim.sim.run import simulate
from tests.factories import make_trace

COST = LinearCostModel(overhead_s=0.1, per_prefill_token_s=0.001)
TRACE = make_trace([(0.0, 10, 3), (0.0, 10, 5), (0.25, 10, 2)], tenants=["gold", "gold", "free"],
                   slo_ttft_s=[0.15, 0.15, 0.15], slo_e2e_s=[0.4, 0.4, None])
EXPECTED = {  # request: (ttft_s, e2e_s, tpot_s, slo_met)
    0: (0.12, 0.32, 0.1, True),
    1: (0.12, 0.53, 0.1025, False),
    2: (0.18, 0.28, 0.1, False),
}
SPAN_S = 0.53  # first arrival (0) to last finish


@pytest.fixture(scope="module")
def result():
    return simulate(TRACE, cost=COST, engine=EngineConfig(max_num_seqs=8, max_num_batched_tokens=512, block_size=16,
                                                          max_model_len=1024), num_blocks=100)


def test_per_request_latencies_and_slo_outcomes(result):
    df = result.requests.sort("request_id")
    assert df["status"].to_list() == ["ok"] * 3
    for row in df.iter_rows(named=True):
        ttft, e2e, tpot, met = EXPECTED[row["request_id"]]
        assert row["ttft_s"] == pytest.approx(ttft, abs=1e-12), row
        assert row["e2e_s"] == pytest.approx(e2e, abs=1e-12), row
        assert row["tpot_s"] == pytest.approx(tpot, abs=1e-12), row
        assert row["slo_met"] is met, row


def test_summary_per_tenant_and_overall(result):
    s = summarize(result.requests, result.replicas)
    assert s["span_s"] == pytest.approx(SPAN_S, abs=1e-12)
    gold, free, overall = s["tenants"]["gold"], s["tenants"]["free"], s["overall"]
    assert (gold["requests"], gold["completed"], free["requests"], overall["completed"]) == (2, 2, 1, 3)
    assert gold["slo_attainment"] == 0.5 and free["slo_attainment"] == 0.0
    assert overall["slo_attainment"] == pytest.approx(1 / 3) and overall["slo_requests"] == 3
    # overall TTFT [0.12, 0.12, 0.18]: mean 0.14, p50 0.12; E2E sorted [0.28, 0.32, 0.53]: p50 0.32,
    # p90 at rank 0.9 x 2 = 1.8 (linear): 0.32 + 0.8 x 0.21 = 0.488
    assert overall["ttft_s"]["mean"] == pytest.approx(0.14, abs=1e-12)
    assert overall["ttft_s"]["p50"] == pytest.approx(0.12, abs=1e-12)
    assert overall["e2e_s"]["p50"] == pytest.approx(0.32, abs=1e-12)
    assert overall["e2e_s"]["p90"] == pytest.approx(0.488, abs=1e-12)
    assert gold["e2e_s"]["mean"] == pytest.approx((0.32 + 0.53) / 2, abs=1e-12)
    assert free["tpot_s"]["p99"] == pytest.approx(0.1, abs=1e-12)
    assert overall["throughput_rps"] == pytest.approx(3 / SPAN_S)
    assert overall["output_tokens_per_s"] == pytest.approx(10 / SPAN_S)
    assert gold["output_tokens_per_s"] == pytest.approx(8 / SPAN_S)
    # goodput counts completed requests meeting every SLO they carry: A only
    assert overall["goodput_rps"] == pytest.approx(1 / SPAN_S)
    # the one replica was busy for the whole span (no gap between steps)
    assert s["busy_fraction"] == pytest.approx(1.0)


def test_a_lone_tenant_gets_the_figures_of_its_own_rows_and_its_own_copy(result):
    import json

    from driftsim.sim.metrics import _group_summary, _lean

    gold = result.requests.filter(result.requests["tenant"] == "gold")
    summary = summarize(gold, result.replicas)
    by_rows = _group_summary(_lean(gold), summary["span_s"])
    assert json.dumps(summary["tenants"]["gold"], sort_keys=True) == json.dumps(by_rows, sort_keys=True)
    assert summary["tenants"]["gold"]["completed"] == 2
    summary["overall"]["completed"] = -1  # a caller changing one group leaves the other alone
    assert summary["tenants"]["gold"]["completed"] == 2


def test_summary_quantiles_one_at_a_time_equal_polars_quantiles_in_one_select():
    """The summary takes each quantile on its own (memory); the figures must be exactly those of one
    select of every metric's mean and quantiles, as before, nulls and NaNs included."""
    from driftsim.sim.metrics import _QUANTILES, _mean_and_quantiles

    rng = np.random.default_rng(7)
    for trial in range(60):
        n = int(rng.integers(1, 2000))
        values = rng.lognormal(0.0, 2.0, n)
        if trial % 5 == 0:
            values[rng.integers(0, n, max(1, n // 20))] = np.nan
        col = pl.Series("x", values)
        if trial % 3 == 0:
            col = col.scatter(rng.integers(0, n, max(1, n // 10)).tolist(), None)
        got = _mean_and_quantiles(col, _QUANTILES)
        want = pl.DataFrame([col]).select(
            pl.col("x").mean().alias("mean"),
            *(pl.col("x").quantile(q, interpolation="linear").alias(k) for k, q in _QUANTILES.items())).row(0, named=True)
        for k, w in want.items():
            assert (w is None and np.isnan(got[k])) or got[k] == w or (np.isnan(w) and np.isnan(got[k])), (trial, k)


def test_an_oracle_run_without_slos_has_null_outcomes_and_null_estimates_for_refused_requests():
    """The memory-lean paths (series instead of expressions) give what the expressions gave: slo_met null
    where no request carries an SLO, est_output = observed_output = generated tokens for completed
    requests and null for a refused one."""
    trace = make_trace([(0.0, 10, 3), (0.0, 5000, 5), (0.1, 10, 2)])
    r = simulate(trace, cost=COST, engine=EngineConfig(max_num_seqs=8, max_num_batched_tokens=512, block_size=16,
                                                       max_model_len=1024), num_blocks=64).requests
    assert r["status"].to_list() == ["ok", "rejected", "ok"]
    assert r["slo_met"].null_count() == 3 and r["slo_met"].dtype == pl.Boolean
    assert r["est_output"].to_list() == [3, None, 2] and r["observed_output"].to_list() == [3, None, 2]
    assert r["category"].null_count() == 3 and r["est_bias"].null_count() == 3
