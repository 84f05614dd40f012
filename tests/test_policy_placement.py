"""Policies inside the engine (vLLM priority scheduling generalised) and runtime-progress policies."""

from __future__ import annotations

import pytest

from driftsim.sim.config import ConfigError, EngineConfig, GatewayConfig
from driftsim.sim.engine import EngineCore
from driftsim.sim.policies import make_policy
from driftsim.sim.run import simulate
from tests.factories import linear_cost, make_request, make_trace, random_trace


def test_las_orders_by_tokens_already_generated():
    las = make_policy("las")
    a, b, c = make_request(0, 10, 50), make_request(1, 10, 50), make_request(2, 10, 50)
    a.generated, b.generated, c.generated = 30, 0, 5
    for r in (a, b, c):
        las.push(r, 0.0)
    assert [las.pop(0.0).request_id for _ in range(3)] == [1, 2, 0]


def test_srpt_orders_by_estimated_remaining_output():
    srpt = make_policy("srpt")
    a, b = make_request(0, 10, 100), make_request(1, 10, 40)  # est_tokens = input + output
    a.generated = 80  # 20 left
    srpt.push(b, 0.0)
    srpt.push(a, 0.0)
    assert srpt.pop(0.0).request_id == 0


def test_engine_priority_admits_urgent_first_and_preempts_least_urgent():
    core = EngineCore(
        config=EngineConfig(max_num_seqs=1, max_num_batched_tokens=64, max_model_len=4096),
        cost=linear_cost(), num_blocks=100, policy=make_policy("priority"),
    )
    low, high = make_request(0, 10, 3), make_request(1, 10, 3)
    low.priority, high.priority = 3, 1
    core.add(low)
    core.add(high)
    ends = core.plan(0.0)
    core.commit(len(ends))
    assert [r.request_id for r in core.running.values()] == [1]
    # the victim under KV pressure is the running request ranked last
    core2 = EngineCore(
        config=EngineConfig(max_num_seqs=8, max_num_batched_tokens=64, max_model_len=4096, block_size=16),
        cost=linear_cost(), num_blocks=5, policy=make_policy("priority"),
    )
    r0, r1 = make_request(0, 20, 40), make_request(1, 20, 40)
    r0.priority, r1.priority = 3, 1  # r0 admitted first but less urgent
    core2.add(r0)
    core2.add(r1)
    done, t = [], 0.0
    while core2.has_work():
        ends = core2.plan(t)
        done += [r.request_id for r, _ in core2.commit(len(ends))]
        t = float(ends[-1])
    assert r0.preemptions >= 1 and r1.preemptions == 0
    assert done[0] == 1


def test_engine_placement_changes_tenant_latencies_and_stays_exact():
    trace = random_trace(400, rate=12, seed=5, tenants=("premium", "batch"))
    trace = trace.with_columns(priority=(trace["tenant"] == "batch").cast(int) * 2 + 1)
    engine = EngineConfig(max_num_seqs=16, max_num_batched_tokens=512, max_model_len=2048)
    fifo = simulate(trace, cost=linear_cost(), engine=engine, num_blocks=400)
    prio_gw = GatewayConfig(policy="priority", placement="engine")
    prio = simulate(trace, cost=linear_cost(), engine=engine, gateway=prio_gw, num_blocks=400)
    slow = simulate(trace, cost=linear_cost(), engine=EngineConfig(**{**engine.__dict__, "fast_forward": False}),
                    gateway=prio_gw, num_blocks=400)
    assert prio.requests.equals(slow.requests)
    p50 = lambda res, t: res.summary["tenants"][t]["e2e_s"]["p50"]  # noqa: E731
    assert p50(prio, "premium") < p50(fifo, "premium")
    assert p50(prio, "batch") > p50(fifo, "batch")


def test_stateful_policy_refused_inside_the_engine():
    trace = make_trace([(0.0, 10, 5)])
    with pytest.raises(ConfigError, match="only act at the gateway"):
        simulate(trace, cost=linear_cost(), engine=EngineConfig(max_model_len=2048),
                 gateway=GatewayConfig(policy="weighted", placement="engine"), num_blocks=100)
