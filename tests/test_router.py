"""Routers and multi-replica dispatch."""

from __future__ import annotations

from dataclasses import dataclass

from driftsim.sim.config import EngineConfig, GatewayConfig
from driftsim.sim.router import LeastOutstanding, RoundRobin
from driftsim.sim.run import simulate
from tests.factories import linear_cost, make_trace


@dataclass
class R:
    index: int
    outstanding: int = 0


def test_round_robin_cycles_and_skips_full_replicas():
    rs = [R(0), R(1), R(2)]
    rr = RoundRobin()
    assert [rr.pick(rs, None).index for _ in range(4)] == [0, 1, 2, 0]
    rs[1].outstanding = 2
    assert [rr.pick(rs, 2).index for _ in range(3)] == [2, 0, 2]
    for r in rs:
        r.outstanding = 2
    assert rr.pick(rs, 2) is None


def test_least_outstanding_prefers_idle_then_lowest_index():
    rs = [R(0, 3), R(1, 1), R(2, 1)]
    assert LeastOutstanding().pick(rs, None).index == 1
    assert LeastOutstanding().pick(rs, 1) is None


def test_two_replicas_halve_the_queue_of_a_burst():
    trace = make_trace([(0.0, 200, 50)] * 40)
    engine = EngineConfig(max_num_seqs=4, max_num_batched_tokens=1024, max_model_len=2048)
    one = simulate(trace, cost=linear_cost(), engine=engine, num_blocks=500)
    two = simulate(trace, cost=linear_cost(), engine=engine, num_blocks=500, replicas=2,
                   gateway=GatewayConfig(router="round_robin"))
    assert sorted(two.requests["replica"].value_counts()["count"].to_list()) == [20, 20]
    assert two.summary["overall"]["e2e_s"]["mean"] < 0.6 * one.summary["overall"]["e2e_s"]["mean"]
