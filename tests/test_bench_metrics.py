"""`vllm bench serve`-style figures in a run's summary: units in names, ITL, p95, goodput, tokens per second."""

import math

import numpy as np
import polars as pl
import pytest

from driftsim.sim.metrics import StreamingSummary, _weighted_quantile, summarize
from driftsim.sim.results import STATUS


def _results(rows):
    """rows: (tenant, status, arrival, first_token, finish, input, generated, slo_e2e)."""
    df = pl.DataFrame(
        rows,
        schema=["tenant", "status", "arrival_s", "first_token_s", "finish_s", "input_tokens", "generated_tokens",
                "slo_e2e_s"],
        orient="row",
    ).with_columns(pl.col("status").cast(STATUS), pl.col("generated_tokens").cast(pl.Int32))
    ok = pl.col("status") == "ok"
    return df.with_columns(
        pl.lit(0, pl.Int32).alias("preemptions"),
        pl.when(ok).then(pl.col("first_token_s") - pl.col("arrival_s")).alias("ttft_s"),
        pl.when(ok).then(pl.col("finish_s") - pl.col("arrival_s")).alias("e2e_s"),
        pl.lit(0.0).alias("queue_wait_s"),
    ).with_columns(
        pl.when(ok & (pl.col("generated_tokens") > 1))
        .then((pl.col("e2e_s") - pl.col("ttft_s")) / (pl.col("generated_tokens") - 1))
        .alias("tpot_s"),
        pl.when(pl.col("slo_e2e_s").is_not_null()).then(ok & (pl.col("e2e_s") <= pl.col("slo_e2e_s"))).alias("slo_met"),
    )


ROWS = [
    # tenant, status, arrival, first token, finish, input, generated, e2e SLO
    ("a", "ok", 0.0, 0.1, 1.1, 100, 11, 2.0),  # 10 gaps of 0.1 s; met
    ("a", "ok", 1.0, 1.3, 1.5, 50, 3, 0.4),  # 2 gaps of 0.1 s; e2e 0.5 > 0.4: missed
    ("b", "ok", 2.0, 2.2, 4.0, 200, 2, 3.0),  # 1 gap of 1.8 s; met
    ("b", "rejected", 3.0, None, None, 80, 0, 1.0),  # missed
]


def test_figures_are_in_the_units_their_names_say_and_hand_checked():
    s = summarize(_results(ROWS), [{"busy_s": 1.0}])
    o = s["overall"]
    assert s["span_s"] == 4.0
    assert o["ttft_mean_ms"] == pytest.approx(200.0)  # (0.1 + 0.3 + 0.2) / 3
    assert o["e2e_p50_s"] == pytest.approx(1.1)
    assert o["tpot_p50_ms"] == pytest.approx(100.0)
    # ITL mean = decode time / gaps = (1.0 + 0.2 + 1.8) / 13
    assert o["itl_mean_ms"] == pytest.approx(3.0 / 13 * 1e3)
    # 12 gaps of 0.1 s and one of 1.8 s: p95 at position 0.95 * 12 = 11.4 -> 0.1 + 0.4 * 1.7
    assert o["itl_p95_ms"] == pytest.approx((0.1 + 0.4 * 1.7) * 1e3)
    assert o["itl_p50_ms"] == pytest.approx(100.0)
    assert o["input_tokens_per_s"] == pytest.approx(350 / 4.0)  # completed requests only
    assert o["output_tokens_per_s"] == pytest.approx(16 / 4.0)
    assert o["total_tokens_per_s"] == pytest.approx(366 / 4.0)
    assert o["goodput_rps"] == pytest.approx(2 / 4.0)
    assert o["slo_attainment"] == pytest.approx(0.5)  # a fraction in data
    assert s["tenants"]["b"]["goodput_rps"] == pytest.approx(1 / 4.0)
    assert s["tenants"]["b"]["itl_p99_ms"] == pytest.approx(1800.0)


def test_goodput_is_none_without_slos():
    rows = [(t, st, a, f, e, i, g, None) for t, st, a, f, e, i, g, _ in ROWS]
    assert summarize(_results(rows), [])["overall"]["goodput_rps"] is None


def test_streaming_summary_gives_the_same_figures_within_the_sketch_error():
    df = _results(ROWS)
    exact = summarize(df, [])["overall"]
    stream = StreamingSummary()
    stream.add(df.head(2))
    stream.add(df.tail(2))
    got = stream.result([])["overall"]
    for key in ("ttft_p95_ms", "itl_p50_ms", "itl_p99_ms", "e2e_p99_s"):
        assert got[key] == pytest.approx(exact[key], rel=0.011), key
    for key in ("itl_mean_ms", "input_tokens_per_s", "goodput_rps", "total_tokens_per_s"):
        assert got[key] == pytest.approx(exact[key], rel=1e-12), key


def test_streaming_summary_does_not_depend_on_the_order_tenants_first_appear():
    # e2e 0.1, 0.2, 0.3 s: (0.1 + 0.2) + 0.3 != (0.3 + 0.2) + 0.1 in floating point, so the overall mean
    # is bit-identical only if the tenants' totals are merged in a fixed order
    rows = [(t, "ok", 0.0, e2e / 2, e2e, 10, 2, None) for t, e2e in (("a", 0.1), ("b", 0.2), ("c", 0.3))]
    df = _results(rows)
    results = []
    for order in ([0, 1, 2], [2, 1, 0]):
        stream = StreamingSummary()
        for i in order:
            stream.add(df.slice(i, 1))
        results.append(stream.result([])["overall"])
    assert (0.1 + 0.2) + 0.3 != (0.3 + 0.2) + 0.1
    assert results[0]["e2e_s"]["mean"] == results[1]["e2e_s"]["mean"]
    assert repr(results[0]) == repr(results[1])


def test_weighted_quantile_equals_the_quantile_of_the_repeated_values():
    rng = np.random.default_rng(0)
    values, weights = rng.random(50), rng.integers(0, 5, 50)
    expanded = np.repeat(values, weights)
    for q in (0.0, 0.37, 0.5, 0.95, 1.0):
        assert _weighted_quantile(values, weights, q) == pytest.approx(np.quantile(expanded, q), rel=1e-12)
    assert math.isnan(_weighted_quantile(values, np.zeros(50, int), 0.5))
