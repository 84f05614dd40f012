"""The `vllm bench serve`-style workload: count, order, Poisson/gamma arrivals, length ranges, tenants, determinism."""

import math

import numpy as np
import polars as pl
import pytest

from driftsim.traces.bench_workload import BenchWorkload, generate_bench
from driftsim.traces.schema import REQUEST_SCHEMA, validate_trace


def _gaps(df: pl.DataFrame) -> np.ndarray:
    return np.diff(np.concatenate([[0.0], df["arrival_s"].to_numpy()]))


def test_rate_4_with_100_prompts_gives_100_ordered_arrivals_ending_at_25_s():
    df = generate_bench(BenchWorkload(num_prompts=100, request_rate=4.0, seed=1))
    validate_trace(df)
    assert df.schema == pl.Schema(REQUEST_SCHEMA)
    assert df.height == 100
    assert df["request_id"].to_list() == list(range(100))
    assert (np.diff(df["arrival_s"].to_numpy()) >= 0).all()
    assert df["arrival_s"][-1] == pytest.approx(25.0, rel=1e-12)  # vLLM rescales to num / rate
    assert df["arrival_s"][0] > 0  # vLLM waits one gap before the first request


def test_poisson_gaps_are_exponential():
    gaps = _gaps(generate_bench(BenchWorkload(num_prompts=20000, request_rate=4.0, seed=7)))
    assert gaps.mean() == pytest.approx(0.25, rel=1e-9)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.03)
    # exponential: P(gap > mean) = e^-1
    assert (gaps > 0.25).mean() == pytest.approx(math.exp(-1), abs=0.015)


@pytest.mark.parametrize("burstiness", [0.25, 4.0])
def test_burstiness_sets_the_gap_cv_as_the_gamma_shape_says(burstiness):
    gaps = _gaps(generate_bench(BenchWorkload(num_prompts=20000, request_rate=2.0, burstiness=burstiness, seed=3)))
    assert gaps.std() / gaps.mean() == pytest.approx(1 / math.sqrt(burstiness), rel=0.05)


def test_infinite_rate_sends_everything_at_zero_and_infinite_burstiness_is_even():
    assert generate_bench(BenchWorkload(num_prompts=5))["arrival_s"].to_list() == [0.0] * 5
    even = generate_bench(BenchWorkload(num_prompts=4, request_rate=2.0, burstiness=math.inf))
    assert even["arrival_s"].to_list() == pytest.approx([0.5, 1.0, 1.5, 2.0])


def test_lengths_are_uniform_over_vllms_range():
    df = generate_bench(BenchWorkload(num_prompts=5000, input_len=100, output_len=11, range_ratio=0.5, seed=2))
    ins, outs = df["input_tokens"], df["output_tokens"]
    assert (ins.min(), ins.max()) == (50, 150)
    assert (outs.min(), outs.max()) == (5, 17)  # floor(5.5), ceil(16.5)
    assert ins.mean() == pytest.approx(100, rel=0.02)
    fixed = generate_bench(BenchWorkload(num_prompts=10, input_len=7, output_len=3))
    assert set(fixed["input_tokens"]) == {7} and set(fixed["output_tokens"]) == {3}


def test_tenant_mix_follows_the_weights_and_same_seed_same_bytes():
    w = BenchWorkload(num_prompts=4000, request_rate=10.0, tenants={"gold": 1, "free": 3}, seed=5)
    df = generate_bench(w)
    assert (df["tenant"] == "gold").mean() == pytest.approx(0.25, abs=0.02)
    assert generate_bench(w).equals(df)
    assert not generate_bench(BenchWorkload(num_prompts=4000, request_rate=10.0, seed=6))["arrival_s"].equals(
        df["arrival_s"]
    )
    # adding tenants does not move the arrivals (one stream per quantity)
    assert generate_bench(BenchWorkload(num_prompts=4000, request_rate=10.0, seed=5))["arrival_s"].equals(
        df["arrival_s"]
    )


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"num_prompts": 0}, "--num-prompts"),
        ({"request_rate": 0.0}, "--request-rate"),
        ({"request_rate": math.nan}, "--request-rate"),
        ({"burstiness": -1.0}, "--burstiness"),
        ({"range_ratio": 1.0}, "--range-ratio"),
        ({"input_len": 1, "range_ratio": 0.5}, "--input-len"),
        ({"tenants": {"a": 0}}, "--tenants"),
    ],
)
def test_bad_flags_are_refused_by_name(kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        BenchWorkload(**kwargs)
