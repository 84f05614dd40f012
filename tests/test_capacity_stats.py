"""Confidence intervals on known numbers; SLO tails and attainment agree; contradictory SLOs are named."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftsim.capacity import stats
from driftsim.capacity.results import aggregate
from driftsim.capacity.slo import Target, combine, judge, parse_slo, tail_value
from driftsim.capacity.stats import mean_ci, t_critical
from driftsim.sim.config import ConfigError


def test_t_interval_on_known_numbers():
    ci = mean_ci([1, 2, 3, 4, 5])  # mean 3, s = sqrt(2.5) = 1.5811, se = 0.7071, t(0.975, 4) = 2.7764
    assert ci.n == 5 and ci.mean == 3
    assert ci.std == pytest.approx(1.5811388, rel=1e-6)
    assert ci.half_width == pytest.approx(2.7764451 * 0.7071068, rel=1e-5)
    assert (ci.low, ci.high) == pytest.approx((3 - 1.963243, 3 + 1.963243), rel=1e-5)
    two = mean_ci([10.0, 12.0])  # s = sqrt(2), se = 1, t(0.975, 1) = 12.706
    assert two.half_width == pytest.approx(12.7062, rel=1e-4)


def test_degenerate_inputs():
    one = mean_ci([4.2])
    assert one.n == 1 and one.mean == 4.2 and math.isnan(one.half_width)
    assert mean_ci([math.nan, 1.0, 3.0]).n_nan == 1 and mean_ci([math.nan, 1.0, 3.0]).mean == 2.0
    assert mean_ci([]).n == 0 and math.isnan(mean_ci([]).mean)
    assert mean_ci([2.0, 2.0, 2.0]).half_width == 0.0


def test_fallback_table_matches_scipy(monkeypatch):
    exact = {df: t_critical(df) for df in (1, 2, 4, 9, 30, 35, 50, 100, 500)}
    import builtins

    real = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda n, *a, **k: (_ for _ in ()).throw(ImportError()) if n.startswith("scipy") else real(n, *a, **k))
    for df, value in exact.items():
        assert stats.t_critical(df) == pytest.approx(value, rel=2e-3), df


def test_aggregate_groups_configurations_across_seeds():
    rows = []
    for cfg, base in (("a", 1.0), ("b", 10.0)):
        for seed in range(3):
            for tenant in ("x", "overall"):
                rows.append({"index": seed, "config": cfg, "label": f"{cfg} {seed}", "policy": cfg, "profile": "p", "gpu": "g",
                             "replicas": 1, "seed": seed, "tenant": tenant, "ttft_s_p99": base + seed, "slo_attainment": 1.0})  # fmt: skip
    out = aggregate(pl.DataFrame(rows))
    r = out.filter(pl.col("config") == "b", pl.col("tenant") == "x", pl.col("metric") == "ttft_s_p99").row(0, named=True)
    assert r["n"] == 3 and r["mean"] == 11.0 and r["policy"] == "b"
    assert r["half_width"] == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-5)  # s = 1
    assert out.height == 2 * 2 * 2  # configs x tenants x metrics present


def _frame(values, misses=0):
    n = len(values)
    return pl.DataFrame({
        "tenant": ["t"] * (n + misses), "status": ["ok"] * n + ["rejected"] * misses,
        "ttft_s": [*values, *([None] * misses)],
    }, schema={"tenant": pl.String, "status": pl.String, "ttft_s": pl.Float64})  # fmt: skip


def test_tail_value_counts_misses_as_infinitely_late():
    vals = list(np.arange(1, 101) / 100)  # 0.01 .. 1.00
    v, att, n = tail_value(_frame(vals), "ttft_s", 0.99, 0.5)
    assert (v, att, n) == (0.99, 0.5, 100)
    v, att, n = tail_value(_frame(vals, misses=2), "ttft_s", 0.99, 2.0)
    assert math.isinf(v) and att == pytest.approx(100 / 102) and n == 102


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(0.001, 100, allow_nan=False), min_size=1, max_size=60),
    st.integers(0, 5),
    st.sampled_from([0.5, 0.9, 0.95, 0.99, 1.0]),
    st.floats(0.001, 100),
)
def test_quantile_within_threshold_iff_attainment_reaches_it(values, misses, q, threshold):
    v, att, _ = tail_value(_frame(values, misses), "ttft_s", q, threshold)
    assert (v <= threshold) == (att >= q - 1e-12)


def test_judge_takes_the_worst_seed_or_the_mean():
    per_seed = [
        [{"tenant": "a", "metric": "ttft_s", "quantile": 0.99, "threshold_s": 1.0, "value_s": 0.5, "attainment": 1.0}],
        [{"tenant": "a", "metric": "ttft_s", "quantile": 0.99, "threshold_s": 1.0, "value_s": 1.4, "attainment": 0.97}],
    ]
    worst = judge(per_seed, "all")
    assert not worst.feasible and worst.binding.value_s == 1.4 and worst.margin == pytest.approx(-0.4)
    assert "40% over" in worst.binding.describe() and "97% of requests within it" in worst.binding.describe()
    mean = judge(per_seed, "mean")
    assert mean.feasible and mean.binding.value_s == pytest.approx(0.95)


def test_parse_slo_and_contradictions():
    t = parse_slo("premium.ttft.p99=0.5")
    assert (t.tenant, t.metric, t.quantile, t.threshold_s) == ("premium", "ttft_s", 0.99, 0.5)
    assert parse_slo("*.e2e=10", default_quantile=0.9).quantile == 0.9
    with pytest.raises(ConfigError, match="expected TENANT.METRIC"):
        parse_slo("premium=0.5")
    with pytest.raises(ConfigError, match="unknown metric 'latency'"):
        parse_slo("premium.latency=1")
    with pytest.raises(ConfigError, match="finite number of seconds > 0"):
        parse_slo("premium.ttft=-1")
    with pytest.raises(ConfigError, match="contradictory SLOs: premium p99 TTFT is given as 0.5 s and as 1 s"):
        combine([], [parse_slo("premium.ttft=0.5"), parse_slo("premium.ttft=1")])
    with pytest.raises(ConfigError, match="contradictory SLOs: premium p99 TTFT <= 20 s is looser than premium p99 E2E <= 10 s"):
        combine([], [parse_slo("premium.ttft=20"), parse_slo("premium.e2e=10")])
    with pytest.raises(ConfigError, match="tenant 'gold' is not in the scenario"):
        combine([], [parse_slo("gold.ttft=1")], ["premium", "batch"])
    scen = [Target("premium", "ttft_s", 1.0, 0.99, "scenario"), Target("batch", "e2e_s", 60, 0.99, "scenario")]
    out = combine(scen, [parse_slo("premium.ttft=0.5")])
    assert sorted((t.tenant, t.threshold_s) for t in out) == [("batch", 60), ("premium", 0.5)]  # the flag replaces the file
