"""The closed-loop client (`--max-concurrency`): hand-checked send times and a settled simulated run."""

import math

import numpy as np
import pytest

from driftsim.sim.closed_loop import ClosedLoop, closed_loop_sends, simulate_closed_loop
from driftsim.sim.config import ConfigError, EngineConfig
from driftsim.sim.run import simulate
from tests.factories import linear_cost, make_trace


def test_sends_by_hand_two_slots():
    # all open at 0. 0 and 1 go at once; 2 takes the slot 1 frees at 1.0; 3 the slot 0 frees at 3.0;
    # 4 the slot 2 frees at 4.0 (3 still holds its slot until 5.0)
    sends = closed_loop_sends(np.zeros(5), np.array([3.0, 1.0, 4.0, 5.0, 9.0]), ClosedLoop(max_concurrency=2))
    assert sends.tolist() == [0.0, 0.0, 1.0, 3.0, 4.0]


def test_sends_respect_open_times_order_and_think_time():
    sends = closed_loop_sends(np.array([0.0, 0.5, 5.0]), np.array([2.0, 3.0, 6.0]),
                              ClosedLoop(max_concurrency=1, think_s=0.25))
    assert sends.tolist() == [0.0, 2.25, 5.0]


def test_closed_loop_run_never_has_more_than_n_in_flight_and_sends_on_completions():
    trace = make_trace([(0.0, 50, 20)] * 12)
    res = simulate_closed_loop(trace, ClosedLoop(max_concurrency=3), cost=linear_cost(), engine=EngineConfig(), num_blocks=1000)
    req = res.requests.sort("request_id")
    send, finish = req["arrival_s"].to_numpy(), req["finish_s"].to_numpy()
    assert (req["status"] == "ok").all() and req.height == 12
    assert send[:3].tolist() == [0.0, 0.0, 0.0]
    for i in range(3, 12):  # every later send is exactly a completion of an earlier request
        assert send[i] in set(finish[:i].tolist())
    for t in send:  # in flight at each send (the one sent counted, those finishing then not)
        assert ((send <= t) & (finish > t)).sum() <= 3
    assert res.summary["closed_loop"] == {"max_concurrency": 3, "think_s": 0.0}
    # the sends made inside the run are the semaphore rule applied to the run's own completions
    assert send.tolist() == closed_loop_sends(np.zeros(12), finish, ClosedLoop(max_concurrency=3)).tolist()


def _bench_trace(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return make_trace([(float(t), int(p), int(o)) for t, p, o in
                       zip(np.sort(rng.uniform(0, 20, n)), rng.integers(20, 400, n), rng.integers(5, 120, n))])


@pytest.mark.parametrize("think_s", [0.0, 0.3])
def test_a_long_closed_loop_is_one_run_that_obeys_the_rule_and_the_fast_forward_is_exact(think_s):
    # thousands of requests whose sends hang on each other's completions: one run, no fixed point to chase
    trace, loop = _bench_trace(3000), ClosedLoop(max_concurrency=24, think_s=think_s)
    kw = dict(cost=linear_cost(), num_blocks=120)
    fast = simulate_closed_loop(trace, loop, engine=EngineConfig(max_num_seqs=16), **kw).requests
    slow = simulate_closed_loop(trace, loop, engine=EngineConfig(max_num_seqs=16, fast_forward=False), **kw).requests
    assert fast.equals(slow)
    assert (fast["status"] == "ok").all() and fast["preemptions"].sum() > 0  # KV pressure: the rule holds under it
    rule = closed_loop_sends(trace["arrival_s"].to_numpy(), fast["finish_s"].to_numpy(), loop)
    assert fast["arrival_s"].to_list() == rule.tolist()
    assert fast["arrival_s"].to_list() != trace["arrival_s"].to_list()  # the loop held some back


def test_concurrency_one_is_serial():
    trace = make_trace([(0.0, 30, 5)] * 4)
    req = simulate_closed_loop(trace, ClosedLoop(max_concurrency=1), cost=linear_cost(), num_blocks=1000,
                               engine=EngineConfig()).requests.sort("request_id")
    assert req["arrival_s"].to_list()[1:] == req["finish_s"].to_list()[:-1]


def test_bad_concurrency_is_refused_by_flag():
    with pytest.raises(ConfigError, match="--max-concurrency"):
        ClosedLoop(max_concurrency=0)
    with pytest.raises(ConfigError, match="think_s"):
        ClosedLoop(max_concurrency=1, think_s=math.nan)
