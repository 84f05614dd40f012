"""Synthetic generator: counts and rates for a seed, determinism, burstiness, length distributions."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from driftsim.traces import REQUEST_SCHEMA, LengthDist, TenantLoad, generate, lengths_from_trace, validate_trace

SHORT = LengthDist.constant(16)


def tenant(name: str, rate: float | None, **kw) -> TenantLoad:
    kw.setdefault("input", SHORT)
    kw.setdefault("output", SHORT)
    return TenantLoad(name, rate, **kw)


def gaps(df: pl.DataFrame) -> np.ndarray:
    return np.diff(df["arrival_s"].to_numpy())


def test_table_shape_and_merge_order():
    df = generate(
        [
            tenant("gold", 5.0, priority=0, slo_ttft_s=0.5, slo_e2e_s=5.0),
            tenant("free", 20.0, arrival="gamma", cv=2.0),
        ],
        duration_s=100,
        seed=1,
    )
    assert list(df.schema.items()) == list(REQUEST_SCHEMA.items())
    validate_trace(df)
    assert df["request_id"].to_list() == list(range(df.height))
    assert df["arrival_s"].max() < 100
    gold = df.filter(pl.col("tenant") == "gold")
    assert gold["priority"].unique().to_list() == [0] and gold["slo_ttft_s"].unique().to_list() == [0.5]
    free = df.filter(pl.col("tenant") == "free")
    assert free["priority"].null_count() == free.height and free["slo_e2e_s"].null_count() == free.height


def test_count_and_rate_within_tolerance():
    df = generate([tenant("a", 30.0), tenant("b", 10.0)], duration_s=1000, seed=3)
    counts = dict(df.group_by("tenant").len().iter_rows())
    # Poisson: sd = sqrt(mean); 4 sd bounds fail about once in 15,000 seeds, and this seed is fixed.
    assert abs(counts["a"] - 30_000) < 4 * 30_000**0.5
    assert abs(counts["b"] - 10_000) < 4 * 10_000**0.5


def test_num_requests_exact_and_prefix_stable():
    loads = [tenant("a", 3.0, arrival="gamma", cv=4.0), tenant("b", 1.0, arrival="uniform")]
    big = generate(loads, num_requests=5000, seed=11)
    assert big.height == 5000
    assert generate(loads, num_requests=700, seed=11).equals(big.head(700))
    both = generate(loads, num_requests=5000, duration_s=10, seed=11)
    assert both["arrival_s"].max() < 10 and both.height < 5000


def test_same_seed_same_frame_other_seed_differs():
    loads = [
        tenant("a", 5.0, input=LengthDist.lognormal(mean=300, cv=2.0, max=4096), output=LengthDist.uniform(1, 100)),
        tenant("b", 2.0, arrival="gamma", cv=0.5),
    ]
    one = generate(loads, duration_s=200, seed=42)
    assert one.equals(generate(loads, duration_s=200, seed=42))
    assert not one.equals(generate(loads, duration_s=200, seed=43))


def test_tenant_streams_are_independent_of_other_tenants():
    a = tenant("a", 5.0, input=LengthDist.uniform(1, 1000))
    alone = generate([a], duration_s=100, seed=5)
    mixed = generate([tenant("z", 50.0), a], duration_s=100, seed=5).filter(pl.col("tenant") == "a")
    cols = ["arrival_s", "input_tokens", "output_tokens"]
    assert mixed.select(cols).equals(alone.select(cols))


@pytest.mark.parametrize("cv", [0.5, 1.0, 3.0])
def test_gamma_cv_honoured(cv):
    g = gaps(generate([tenant("a", 100.0, arrival="gamma", cv=cv)], num_requests=40_000, seed=2))
    assert g.mean() == pytest.approx(0.01, rel=0.05)
    assert g.std() / g.mean() == pytest.approx(cv, rel=0.1)


def test_gamma_cv_zero_is_evenly_spaced_and_uniform_gaps_in_range():
    g = gaps(generate([tenant("a", 4.0, arrival="gamma", cv=0.0)], num_requests=100, seed=0))
    assert np.allclose(g, 0.25)
    u = gaps(generate([tenant("u", None, arrival="uniform", gap_range=(0.5, 1.5))], num_requests=2000, seed=0))
    assert u.min() >= 0.5 and u.max() <= 1.5 and u.mean() == pytest.approx(1.0, rel=0.05)
    with pytest.raises(ValueError, match="gap_range"):
        tenant("u", 5.0, arrival="uniform", gap_range=(0.5, 1.5))


def test_length_distributions():
    rng = np.random.default_rng(0)
    assert (LengthDist.constant(7).sample(rng, 10) == 7).all()
    u = LengthDist.uniform(3, 5).sample(rng, 10_000)
    assert set(np.unique(u)) == {3, 4, 5}
    ln = LengthDist.lognormal(mean=500, cv=1.0).sample(rng, 200_000)
    assert ln.mean() == pytest.approx(500, rel=0.03)
    assert ln.std() / ln.mean() == pytest.approx(1.0, rel=0.1)
    clipped = LengthDist.lognormal(mu=6.0, sigma=2.0, min=10, max=2000).sample(rng, 10_000)
    assert clipped.min() >= 10 and clipped.max() <= 2000 and clipped.dtype == np.int64
    emp = LengthDist.empirical([5, 50, 500]).sample(rng, 3000)
    assert set(np.unique(emp)) == {5, 50, 500}
    for bad in (
        lambda: LengthDist.lognormal(mean=10),
        lambda: LengthDist.uniform(5, 3),
        lambda: LengthDist.constant(0),
        lambda: LengthDist.empirical([]),
        lambda: LengthDist.empirical([1.5]),
    ):
        with pytest.raises(ValueError):
            bad()


def test_empirical_from_a_trace():
    src = generate(
        [tenant("a", 10.0, input=LengthDist.uniform(1, 9), output=LengthDist.uniform(100, 109))],
        num_requests=500,
        seed=0,
    )
    inp, out = lengths_from_trace(src)
    assert inp.dtype == np.int64 and len(inp) == 500
    resampled = tenant("r", 10.0, input=LengthDist.empirical(inp), output=LengthDist.empirical(out))
    df = generate([resampled], num_requests=1000, seed=1)
    assert set(df["input_tokens"].unique()) <= set(inp.tolist())
    assert set(df["output_tokens"].unique()) <= set(out.tolist())


def test_argument_errors():
    with pytest.raises(ValueError, match="duration_s, num_requests"):
        generate([tenant("a", 1.0)], seed=0)
    with pytest.raises(ValueError, match="distinct"):
        generate([tenant("a", 1.0), tenant("a", 2.0)], duration_s=1, seed=0)
    with pytest.raises(ValueError, match="rate_per_s"):
        tenant("a", 0.0)
    assert generate([tenant("a", 1.0)], duration_s=0, seed=0).height == 0


def test_a_million_requests_are_drawn_in_full():
    """Scale, not speed (bench/bench_synth.py times it): every row is drawn, in arrival order, both tenants."""
    df = generate(
        [
            tenant("a", 800.0, arrival="gamma", cv=2.0, input=LengthDist.lognormal(mean=800, cv=1.5, max=32_000)),
            tenant("b", 200.0, input=LengthDist.uniform(10, 4000), output=LengthDist.lognormal(mean=200, cv=1.0)),
        ],
        num_requests=1_000_000,
        seed=0,
    )
    assert df.height == 1_000_000
    assert df["arrival_s"].is_sorted() and df["request_id"].n_unique() == 1_000_000
    assert set(df["tenant"].unique()) == {"a", "b"}
