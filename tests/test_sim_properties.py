"""Engine properties over every mode, policy, placement and admission rule, and what the strategy covers.

The strategy (:func:`tests.engine_cases.sim_cases`) is built so that the hard paths run: the KV cache
is sized from the largest request (preemption), client timeouts fire, some prompts are too long
(rejections). ``test_the_strategy_covers_what_the_properties_claim`` draws a fixed,
seeded sample from it and asserts those paths are reached in a stated share of runs.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from hypothesis import HealthCheck, event, given, settings, target

from driftsim.sim.policies import POLICIES
from tests.engine_cases import KEYED_POLICIES, MAX_MODEL_LEN, SimCase, draw_seeded, run_case, sim_cases

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
