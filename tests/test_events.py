"""What the engine and the gateway publish to observers, and that observing changes nothing."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import polars as pl
import pytest
import simpy

from driftsim.sim.config import EngineConfig, GatewayConfig
from driftsim.sim.events import EngineSampled, RequestDispatched, RequestFinished, RequestScheduled, StepCommitted
from driftsim.sim.replica import urgent_timeout
from driftsim.sim.run import simulate
from tests.factories import linear_cost, random_trace


class EventLog(list):
    """An observer keeping every event."""

    def __call__(self, event) -> None:
        self.append(event)

    def of(self, kind) -> list:
        return [e for e in self if isinstance(e, kind)]


def observed_run(*, fast_forward: bool = True, mode: str = "continuous", replicas: int = 2, cap: int | None = 3):
    trace = random_trace(150, rate=40, seed=3, max_in=500, max_out=200)
    engine = EngineConfig(max_num_seqs=8, max_num_batched_tokens=512, max_model_len=2048, fast_forward=fast_forward,
                          mode=mode)
    log = EventLog()
    res = simulate(trace, cost=linear_cost(), engine=engine, gateway=GatewayConfig(max_outstanding=cap),
                   replicas=replicas, num_blocks=300, observers=[log])
    return res, log


def test_observing_a_run_leaves_its_results_unchanged():
    res, log = observed_run()
    plain = simulate(random_trace(150, rate=40, seed=3, max_in=500, max_out=200), cost=linear_cost(),
                     engine=EngineConfig(max_num_seqs=8, max_num_batched_tokens=512, max_model_len=2048),
                     gateway=GatewayConfig(max_outstanding=3), replicas=2, num_blocks=300)
    assert log, "the run published nothing"
    assert res.requests.equals(plain.requests)
    assert res.replicas == plain.replicas


def test_one_step_committed_per_engine_step_in_time_order():
    res, log = observed_run()
    ends = defaultdict(list)
    for e in log.of(StepCommitted):
        ends[e.replica].append(e.end_s)
    for stats in res.replicas:
        got = ends[stats["replica"]]
        assert len(got) == stats["steps"]
        assert np.all(np.diff(got) > 0), "a replica's steps end one after another"


def test_fast_forwarded_and_step_by_step_runs_publish_the_same_events():
    _, fast = observed_run(fast_forward=True)
    _, slow = observed_run(fast_forward=False)
    # EngineSampled comes once per commit, and a fast-forwarded run commits many steps at once
    per_step = (StepCommitted, EngineSampled)
    assert [e for e in fast if not isinstance(e, per_step)] == [e for e in slow if not isinstance(e, per_step)]
    fast_samples = {(e.replica, e.t_s): e for e in fast.of(EngineSampled)}
    slow_samples = {(e.replica, e.t_s): e for e in slow.of(EngineSampled)}
    assert fast_samples and set(fast_samples) <= set(slow_samples)
    assert all(slow_samples[k] == e for k, e in fast_samples.items())  # same state where both sample
    assert sorted(fast.of(StepCommitted), key=lambda e: (e.replica, e.end_s)) == \
        sorted(slow.of(StepCommitted), key=lambda e: (e.replica, e.end_s))


def test_request_events_match_the_results_and_follow_each_other():
    res, log = observed_run()
    ok = res.requests.filter(pl.col("status") == "ok")
    dispatched = {e.request_id: e.t_s for e in log.of(RequestDispatched)}
    scheduled: dict[int, RequestScheduled] = {}
    for e in log.of(RequestScheduled):
        scheduled.setdefault(e.request_id, e)
    finished = {e.request_id: e for e in log.of(RequestFinished)}
    assert len(dispatched) == len(scheduled) == len(finished) == ok.height
    for rid, rep, arrival, sched, finish in ok.select("request_id", "replica", "arrival_s", "scheduled_s",
                                                       "finish_s").iter_rows():
        assert arrival <= dispatched[rid] <= scheduled[rid].t_s
        assert scheduled[rid].t_s == sched and scheduled[rid].replica == rep
        assert finished[rid].t_s == finish and finished[rid].replica == rep


def test_microbatch_workers_publish_pulls_and_engine_steps():
    res, log = observed_run(mode="microbatch", cap=None)
    ok = set(res.requests.filter(pl.col("status") == "ok")["request_id"].to_list())
    assert {e.request_id for e in log.of(RequestDispatched)} == ok
    assert {e.request_id for e in log.of(RequestFinished)} == ok
    assert len(log.of(StepCommitted)) == sum(r["steps"] for r in res.replicas)


def test_events_are_frozen_records():
    event = StepCommitted(0, 1.5)
    with pytest.raises(AttributeError):
        event.end_s = 2.0  # type: ignore[misc]


def test_an_urgent_timeout_runs_before_an_ordinary_one_due_at_the_same_instant():
    env = simpy.Environment()
    order: list[str] = []

    def waiter(name, make):
        yield make()
        order.append(name)

    env.process(waiter("ordinary", lambda: env.timeout(1.0)))
    env.process(waiter("urgent", lambda: urgent_timeout(env, 1.0)))
    env.run()
    assert order == ["urgent", "ordinary"] and env.now == 1.0


@pytest.mark.parametrize("policy, router", [("fifo", "least_outstanding"), ("sjf", "round_robin")])
def test_with_no_cap_the_gateway_hands_requests_on_as_through_its_queue(policy, router):
    # no cap: each arrival is released at once, so it skips the policy's heap; a cap no run reaches
    # sends it through the heap: the same dispatches, the same results
    def run(cap):
        log = EventLog()
        res = simulate(random_trace(200, rate=60, seed=9, max_in=500, max_out=150), cost=linear_cost(),
                       engine=EngineConfig(max_num_seqs=8, max_num_batched_tokens=512, max_model_len=2048),
                       gateway=GatewayConfig(policy=policy, router=router, max_outstanding=cap), replicas=2,
                       num_blocks=300, observers=[log])
        return res, log

    (free, free_log), (capped, capped_log) = run(None), run(10**9)
    assert free.requests.equals(capped.requests)
    assert free_log.of(RequestDispatched) == capped_log.of(RequestDispatched)
    assert len(free_log.of(RequestDispatched)) == 200
