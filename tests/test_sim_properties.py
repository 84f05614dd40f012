"""Engine properties over every mode, policy, placement and admission rule, and what the strategy covers.

The strategy (:func:`tests.engine_cases.sim_cases`) is built so that the hard paths run: the KV cache
is sized from the largest request (preemption), client timeouts fire, some prompts are too long
(rejections). ``test_the_strategy_covers_what_the_properties_claim`` draws a fixed,
seeded sample from it and asserts those paths are reached in a stated share of runs.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, event, given, settings, target

from driftsim.sim.client import ClientConfig
from driftsim.sim.config import EngineConfig, GatewayConfig
from driftsim.sim.policies import POLICIES
from driftsim.sim.scenario import place_policy
from tests.engine_cases import KEYED_POLICIES, MAX_MODEL_LEN, SimCase, draw_seeded, run_case, sim_cases
from tests.factories import make_trace

STATUSES = {"ok", "rejected", "timeout"}


def check_run(case: SimCase):
    """Run ``case`` step by step and fast-forwarded; assert every property; return the step-by-step run."""
    run = run_case(case)
    df = run.result.requests
    engine = case.engine

    # fast-forward is exact, whatever the mode, policy, placement or client
    fast = run_case(case, fast_forward=True)
    assert fast.result.requests.equals(df), "fast-forward must equal step-by-step execution bit for bit"

    # conservation: one row per request, each settled
    assert df.height == case.trace.height
    assert set(df["status"].unique().to_list()) <= STATUSES
    too_long = set(case.trace.filter(pl.col("input_tokens") >= MAX_MODEL_LEN)["request_id"].to_list())
    assert set(df.filter(pl.col("status") == "rejected")["request_id"].to_list()) == too_long
    if case.client is None:
        assert run.count("timeout") == 0

    # tokens: every completed request generated its output, cut to what fits max_model_len
    ok = df.filter(pl.col("status") == "ok")
    inp, out = ok["input_tokens"].to_numpy(), ok["output_tokens"].to_numpy()
    assert (ok["generated_tokens"].to_numpy() == np.minimum(out, MAX_MODEL_LEN - inp)).all()

    # causality
    assert (ok["scheduled_s"] >= ok["arrival_s"]).all()
    assert (ok["scheduled_s"] <= ok["first_token_s"]).all()
    assert (ok["first_token_s"] <= ok["finish_s"]).all()
    assert (ok["ttft_s"] > 0).all()

    # every step's batch within the engine's limits
    for b in run.cost.batches:
        assert 0 < b.num_seqs <= engine.max_num_seqs or engine.mode == "microbatch"
        assert 0 < b.total_tokens <= engine.max_num_batched_tokens

    # KV accounting through the engine's samples: one per step (KvAudit checked each against the
    # capacity) and, at the end, every block given back and nothing left running or waiting
    steps = sum(r["steps"] for r in run.result.replicas)
    assert run.kv.steps == run.kv.commit_samples == steps
    for sample in run.kv.last.values():
        assert (sample.kv_used_blocks, sample.running, sample.waiting) == (0, 0, 0), sample
    return run


def label(case: SimCase, run) -> None:
    """What hypothesis reports per example (``--hypothesis-show-statistics``)."""
    event(f"mode={case.engine.mode}")
    event(f"policy={case.gateway.policy} placement={case.gateway.placement}")
    event(f"reserve_full_prompt={case.engine.reserve_full_prompt}")
    event("preempted" if run.preemptions else "no preemption")
    event("timeouts" if run.count("timeout") else "no timeout")
    target(float(run.preemptions), label="preemptions")
    target(float(run.count("timeout")), label="timeouts")


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(case=sim_cases())
def test_engine_properties_hold_over_modes_policies_and_placements(case):
    label(case, check_run(case))


def test_the_strategy_covers_what_the_properties_claim():
    """200 seeded draws of the strategy: the paths the properties are meant to exercise are reached."""
    seen = [(case, run_case(case, fast_forward=True)) for case in draw_seeded(sim_cases(), 200, seed=20261205)]
    n = len(seen)

    def share(pred) -> float:
        return sum(1 for case, run in seen if pred(case, run)) / n

    preempted = lambda c, r: r.preemptions > 0  # noqa: E731
    shares = {  # path: (share reached, share required)
        "preempted": (share(preempted), 0.20),
        "nothing rejected or timed out": (share(lambda c, r: r.count("rejected") + r.count("timeout") == 0), 0.20),
        "some rejected": (share(lambda c, r: r.count("rejected") > 0), 0.10),
        "client timeouts fired": (share(lambda c, r: r.count("timeout") > 0), 0.10),
        "micro-batch": (share(lambda c, r: c.engine.mode == "microbatch"), 0.20),
        "micro-batch, preempted": (share(lambda c, r: c.engine.mode == "microbatch" and preempted(c, r)), 0.10),
        "reserve_full_prompt off, preempted": (share(lambda c, r: not c.engine.reserve_full_prompt and preempted(c, r)), 0.10),
        "async scheduling, preempted": (share(lambda c, r: c.engine.async_scheduling and preempted(c, r)), 0.10),
        "engine placement, preempted": (share(lambda c, r: c.gateway.placement == "engine" and preempted(c, r)), 0.10),
    }
    short = {k: v for k, v in shares.items() if v[0] < v[1]}
    assert not short, f"paths reached too rarely (share, required): {short}"
    assert {c.gateway.policy for c, _ in seen} == set(POLICIES)
    assert {(c.gateway.placement, c.engine.mode) for c, _ in seen} == {
        ("gateway", "continuous"), ("engine", "continuous"), ("gateway", "microbatch")}
    engine_placed = {c.gateway.policy for c, _ in seen if c.gateway.placement == "engine"}
    assert engine_placed == set(KEYED_POLICIES)


# ---- fixed examples: each hard path is reached by a hand-built case, whatever the strategy draws ------

def _case(rows, *, engine=None, gateway=None, client=None, num_blocks=None, block_size=16, replicas=1) -> SimCase:
    """A one-tenant case from (arrival_s, input_tokens, output_tokens) rows; KV for 1,000 blocks unless given."""
    eng = EngineConfig(**{"max_num_seqs": 8, "max_num_batched_tokens": 512, "block_size": block_size,
                          "max_model_len": MAX_MODEL_LEN, **(engine or {})})
    return SimCase(trace=make_trace(rows, tenants=["a"] * len(rows), priority=[0] * len(rows)), engine=eng,
                   gateway=gateway or GatewayConfig(), client=client, replicas=replicas,
                   num_blocks=num_blocks or 1000)


# two 20-token prompts growing to 320 tokens need 2 x 20 blocks; 21 reported (20 usable) hold one
_PREEMPT_ROWS = [(0.0, 20, 300), (0.0, 20, 300)]


@pytest.mark.parametrize("engine", [
    {},
    {"async_scheduling": True},
    {"reserve_full_prompt": False},
    {"mode": "microbatch", "batch_size": 2},
], ids=["continuous", "async", "no-reserve", "microbatch"])
def test_fixed_case_must_preempt(engine):
    run = check_run(_case(_PREEMPT_ROWS, engine=engine, num_blocks=21))
    assert run.preemptions >= 1
    assert run.kv.peak == 20, "the KV cache filled up before the preemption"
    assert run.count("ok") == 2


def test_fixed_case_must_preempt_with_the_policy_in_the_engine():
    gw, _ = place_policy(GatewayConfig(policy="sjf", placement="engine"), EngineConfig(), True)
    run = check_run(_case(_PREEMPT_ROWS, gateway=gw, num_blocks=21))
    assert gw.placement == "engine" and run.preemptions >= 1 and run.count("ok") == 2


def test_fixed_case_must_reject_a_prompt_longer_than_the_engine_takes():
    run = check_run(_case([(0.0, 10, 5), (0.01, MAX_MODEL_LEN + 10, 5), (0.02, 12, 5)]))
    assert run.result.requests["status"].to_list() == ["ok", "rejected", "ok"]


def test_fixed_case_must_time_out():
    """A 300-token answer takes 300 decode steps (over 1 s at the factory's >= 3 ms a step): a 0.2 s
    client timeout with one retry ends it as a timeout, while a 2-token answer beside it completes."""
    run = check_run(_case([(0.0, 20, 300), (0.0, 20, 2)], client=ClientConfig(timeout_s=0.2, retries=1, backoff_s=0.1)))
    assert run.result.requests["status"].to_list() == ["timeout", "ok"]


def test_fixed_case_micro_batches_do_not_mix():
    """Micro-batch mode: a batch of two runs to its end before the next one starts (no request joins it)."""
    rows = [(0.0, 10, 2), (0.0, 11, 8), (0.0, 12, 2), (0.0, 13, 2)]
    run = check_run(_case(rows, engine={"mode": "microbatch", "batch_size": 2}))
    df = run.result.requests.sort("request_id")
    assert df["status"].to_list() == ["ok"] * 4
    first, second = df.filter(pl.col("request_id") < 2), df.filter(pl.col("request_id") >= 2)
    assert second["scheduled_s"].min() >= first["finish_s"].max()
    assert max(b.num_seqs for b in run.cost.batches) == 2


def test_fixed_case_engine_placement_orders_the_engines_queue():
    """SJF in the engine's waiting queue: one sequence at a time, a long request runs first; the three
    arriving while it runs are taken shortest first (5, 20, 50 output tokens), not in arrival order."""
    rows = [(0.0, 10, 30), (0.001, 10, 50), (0.002, 10, 5), (0.003, 10, 20)]
    gw, _ = place_policy(GatewayConfig(policy="sjf", placement="engine"), EngineConfig(), True)
    assert gw.placement == "engine"
    run = check_run(_case(rows, engine={"max_num_seqs": 1}, gateway=gw))
    df = run.result.requests
    assert df.sort("scheduled_s")["request_id"].to_list() == [0, 2, 3, 1]
    fifo = run_case(_case(rows, engine={"max_num_seqs": 1}))
    assert fifo.result.requests.sort("scheduled_s")["request_id"].to_list() == [0, 1, 2, 3]


def test_fixed_case_a_request_timing_out_in_the_engines_queue_leaves_it_empty():
    """One sequence at a time, two long requests sent at once, a 0.2 s client timeout: at 0.2 s one is
    aborted while running and the other while queued at the engine; the engine's last sample shows
    neither (an abort of a queued request is published too, not only of a running one)."""
    run = check_run(_case([(0.0, 20, 300), (0.0, 20, 300)], engine={"max_num_seqs": 1},
                          client=ClientConfig(timeout_s=0.2)))
    assert run.result.requests["status"].to_list() == ["timeout", "timeout"]
    assert run.kv.samples > run.kv.commit_samples, "the aborts were published"
