"""Invariants over random traces: conservation, causality, limits, exact fast-forward."""

from __future__ import annotations

import numpy as np
import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftsim.sim.config import EngineConfig, GatewayConfig
from driftsim.sim.run import simulate
from tests.factories import RecordingCost, linear_cost, make_trace, random_trace, table_cost

engine_configs = st.builds(
    lambda seqs, extra, bs, chunked, blocks, asynch: (
        EngineConfig(
            max_num_seqs=seqs,
            max_num_batched_tokens=max(seqs, 2048 if not chunked else seqs + extra),
            block_size=bs,
            chunked_prefill=chunked,
            max_model_len=2048,
            async_scheduling=asynch,
        ),
        blocks,
    ),
    seqs=st.integers(1, 64),
    extra=st.integers(0, 600),
    bs=st.sampled_from([1, 4, 16]),
    chunked=st.booleans(),
    blocks=st.integers(130, 2000),
    asynch=st.booleans(),
)

traces = st.builds(
    lambda n, rate, seed: random_trace(n, rate=rate, seed=seed, max_in=600, max_out=300),
    n=st.integers(1, 120),
    rate=st.floats(0.5, 200),
    seed=st.integers(0, 2**31),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trace=traces, cfg=engine_configs, replicas=st.integers(1, 3), cap=st.sampled_from([None, 1, 4]),
       tabled=st.booleans())
def test_invariants_and_fast_forward_is_exact(trace, cfg, replicas, cap, tabled):
    engine, blocks = cfg
    new_cost = table_cost if tabled else linear_cost  # with or without a decode-sequence table
    cost = RecordingCost(new_cost())
    gw = GatewayConfig(max_outstanding=cap, router="round_robin" if cap == 4 else "least_outstanding")
    fast = simulate(trace, cost=cost, engine=engine, gateway=gw, replicas=replicas, num_blocks=blocks)
    slow_engine = EngineConfig(**{**engine.__dict__, "fast_forward": False})
    slow = simulate(trace, cost=new_cost(), engine=slow_engine, gateway=gw, replicas=replicas, num_blocks=blocks)
    assert fast.requests.equals(slow.requests), "fast-forward must equal step-by-step execution bit for bit"

    df = fast.requests
    assert df.height == trace.height
    assert set(df["status"].unique().to_list()) <= {"ok", "rejected"}
    ok = df.filter(pl.col("status") == "ok")
    # tokens: every completed request generated exactly its (capped) output
    capped = np.minimum(ok["output_tokens"].to_numpy(), 2048 - ok["input_tokens"].to_numpy())
    assert (ok["generated_tokens"].to_numpy() == capped).all()
    # causality
    assert (ok["queue_wait_s"] >= 0).all()
    assert (ok["ttft_s"] > 0).all()
    assert (ok["ttft_s"] <= ok["e2e_s"]).all()
    assert (ok["scheduled_s"] <= ok["first_token_s"]).all()
    # limits
    for b in cost.batches:
        assert b.num_seqs <= engine.max_num_seqs
        assert b.total_tokens <= engine.max_num_batched_tokens
        assert b.total_tokens > 0


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31), mode=st.sampled_from(["continuous", "microbatch"]))
def test_same_seed_same_results(seed, mode):
    trace = random_trace(80, rate=20, seed=seed)
    engine = EngineConfig(mode=mode, max_model_len=2048)
    a = simulate(trace, cost=linear_cost(), engine=engine, num_blocks=500)
    b = simulate(trace, cost=linear_cost(), engine=engine, num_blocks=500)
    assert a.requests.equals(b.requests)


def test_microbatch_conserves_requests_and_completes_batches_together():
    trace = random_trace(300, rate=30, seed=3)
    res = simulate(trace, cost=linear_cost(), engine=EngineConfig(mode="microbatch", batch_size=16, max_model_len=2048),
                   num_blocks=2000)
    df = res.requests
    assert (df["status"] == "ok").all()
    # every batch of at most 16 finishes together: group sizes by finish time
    sizes = df.group_by("finish_s").len()["len"]
    assert sizes.max() <= 16
    assert res.replicas[0]["batches"] == sizes.len()


def test_littles_law_holds_on_a_long_run():
    """Time-average occupancy over a window equals arrival rate x mean time in system (boundary effects aside)."""
    trace = random_trace(6000, rate=4, seed=11)
    res = simulate(trace, cost=linear_cost(), engine=EngineConfig(max_model_len=2048), num_blocks=3000)
    df = res.requests
    t0, t1 = 100.0, df["arrival_s"].max() - 100.0
    grid = np.linspace(t0, t1, 20001)
    arr, fin = df["arrival_s"].to_numpy(), df["finish_s"].to_numpy()
    occupancy = (np.searchsorted(np.sort(arr), grid, side="right")
                 - np.searchsorted(np.sort(fin), grid, side="right")).mean()
    inside = df.filter((pl.col("arrival_s") >= t0) & (pl.col("arrival_s") < t1))
    lam = inside.height / (t1 - t0)
    W = inside["e2e_s"].mean()
    assert occupancy > 1.0, "the test needs a loaded system"
    assert abs(occupancy - lam * W) / (lam * W) < 0.05


def test_busy_fraction_rises_with_load():
    light = simulate(random_trace(500, rate=1, seed=1), cost=linear_cost(), engine=EngineConfig(max_model_len=2048),
                     num_blocks=3000)
    heavy = simulate(random_trace(500, rate=8, seed=1), cost=linear_cost(), engine=EngineConfig(max_model_len=2048),
                     num_blocks=3000)
    assert 0 < light.summary["busy_fraction"] < heavy.summary["busy_fraction"] <= 1.0


def test_horizon_reports_unfinished_requests():
    trace = make_trace([(0.0, 100, 1000), (0.0, 100, 5)])
    res = simulate(trace, cost=linear_cost(), engine=EngineConfig(max_model_len=2048), num_blocks=1000, horizon_s=0.5)
    assert sorted(res.requests["status"].to_list()) == ["ok", "unfinished"]
