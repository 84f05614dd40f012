"""A step and the decode run after it waited for as one timeout: the same results as step by step.

:meth:`driftsim.sim.replica.ContinuousReplica._step_then_run` commits a planned step early and plans
the pure-decode run after it in the same wait, when nothing can look at the engine in between.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftsim.sim.client import ClientConfig
from driftsim.sim.closed_loop import ClosedLoop, simulate_closed_loop
from driftsim.sim.config import EngineConfig, GatewayConfig
from driftsim.sim.engine import EngineCore
from driftsim.sim.replica import ContinuousReplica
from driftsim.sim.run import simulate
from driftsim.traces.schema import REQUEST_SCHEMA
from tests.factories import linear_cost, make_trace, random_trace, table_cost

BS = 16


@pytest.fixture
def merged(monkeypatch) -> list[bool]:
    """Each call of ``_step_then_run``: True when it waited for a step and a decode run as one."""
    seen: list[bool] = []
    original = ContinuousReplica._step_then_run

    def counting(self, end):
        finished, last = yield from original(self, end)
        seen.append(last > end)
        return finished, last

    monkeypatch.setattr(ContinuousReplica, "_step_then_run", counting)
    return seen


def _with_prefixes(trace, seed: int, groups: int = 4):
    """``trace`` with each prompt's blocks named after one of ``groups`` shared prefixes."""
    rng = np.random.default_rng(seed)
    group = rng.integers(0, groups, trace.height)
    ids = [[int(g) * 1000 + m for m in range(-(-int(p) // BS))] for g, p in zip(group, trace["input_tokens"])]
    return trace.with_columns(pl.Series("prefix_ids", ids, dtype=REQUEST_SCHEMA["prefix_ids"]),
                              pl.lit(BS, dtype=REQUEST_SCHEMA["prefix_block_tokens"]).alias("prefix_block_tokens"))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 150), rate=st.floats(0.5, 100), seed=st.integers(0, 2**31), seqs=st.integers(1, 48),
       chunk=st.sampled_from([64, 256, 2048]), blocks=st.integers(60, 1500), replicas=st.integers(1, 3),
       cap=st.sampled_from([None, 2]), prefixes=st.booleans(), tabled=st.booleans(),
       policy=st.sampled_from(["fifo", "priority", "sjf"]))
def test_merged_runs_equal_step_by_step(merged, n, rate, seed, seqs, chunk, blocks, replicas, cap, prefixes, tabled,
                                        policy):
    trace = random_trace(n, rate=rate, seed=seed, max_in=600, max_out=300)
    if prefixes:
        trace = _with_prefixes(trace, seed)
    cost = table_cost if tabled else linear_cost
    gateway = GatewayConfig(policy=policy, max_outstanding=cap)

    def run(ff: bool):
        engine = EngineConfig(max_num_seqs=seqs, max_num_batched_tokens=max(seqs, chunk), block_size=BS,
                              max_model_len=2048, fast_forward=ff)
        return simulate(trace, cost=cost(), engine=engine, gateway=gateway, replicas=replicas,
                        num_blocks=blocks).requests

    assert run(True).equals(run(False)), "merged runs must equal step-by-step execution bit for bit"


def test_busy_engines_merge_and_stay_exact_under_preemption(merged):
    # two replicas: each merges its steps and runs, the arrivals still come one event each
    trace = random_trace(800, rate=80, seed=7, max_in=500, max_out=200)
    engine = EngineConfig(max_num_seqs=32, max_num_batched_tokens=512, max_model_len=2048, block_size=BS,
                          compiled_core=False)  # the Python engine's merging is what is checked
    fast = simulate(trace, cost=linear_cost(), engine=engine, num_blocks=150, replicas=2).requests
    assert any(merged), "the run must take the merged path"
    slow = simulate(trace, cost=linear_cost(), engine=EngineConfig(**{**engine.__dict__, "fast_forward": False}),
                    num_blocks=150, replicas=2).requests
    assert fast.equals(slow)
    assert fast["preemptions"].sum() > 0


def test_a_lone_engine_commits_up_to_the_next_arrival_in_one_wait_and_stays_exact(monkeypatch):
    commits, commits_per_wait = [0], []
    commit, original = EngineCore.commit, ContinuousReplica._plan_up_to_arrival

    def counting_commit(self, n):
        commits[0] += 1
        return commit(self, n)

    def counting(self, ends):
        before = commits[0]
        out = original(self, ends)
        commits_per_wait.append(commits[0] - before)
        return out

    monkeypatch.setattr(EngineCore, "commit", counting_commit)
    monkeypatch.setattr(ContinuousReplica, "_plan_up_to_arrival", counting)
    trace = random_trace(400, rate=40, seed=7, max_in=500, max_out=200)
    engine = EngineConfig(max_num_seqs=32, max_num_batched_tokens=512, max_model_len=2048, block_size=BS,
                          compiled_core=False)  # the Python engine's planning is what is counted
    fast = simulate(trace, cost=linear_cost(), engine=engine, num_blocks=150).requests
    assert max(commits_per_wait) > 1 and len(commits_per_wait) < sum(commits_per_wait)
    slow = simulate(trace, cost=linear_cost(), engine=EngineConfig(**{**engine.__dict__, "fast_forward": False}),
                    num_blocks=150).requests
    assert fast.equals(slow)
    assert fast["preemptions"].sum() > 0


def test_a_closed_loop_merges_and_stays_exact(merged):
    trace = random_trace(500, rate=30, seed=3, max_in=400, max_out=150)
    loop = ClosedLoop(max_concurrency=12, think_s=0.05)
    kw = dict(cost=linear_cost(), num_blocks=400)
    # the Python engine's own merging (the compiled core, which runs a closed loop too, is checked in test_stepcore)
    fast = simulate_closed_loop(trace, loop, engine=EngineConfig(max_num_seqs=16, max_model_len=2048,
                                                                 compiled_core=False), **kw)
    assert any(merged)
    slow = simulate_closed_loop(trace, loop, engine=EngineConfig(max_num_seqs=16, max_model_len=2048,
                                                                 fast_forward=False), **kw)
    assert fast.requests.equals(slow.requests)


@pytest.mark.parametrize("setting", ["observers", "async", "client", "step_by_step"])
def test_runs_are_not_merged_where_something_could_see_the_engine_early(merged, setting):
    trace = make_trace([(0.05 * i, 200, 40) for i in range(40)])
    engine = EngineConfig(max_num_seqs=8, max_model_len=2048, async_scheduling=setting == "async",
                          fast_forward=setting != "step_by_step", compiled_core=False)  # the Python engine's choice
    kw = {"observers": [lambda event: None]} if setting == "observers" else {}
    if setting == "client":
        kw["client"] = ClientConfig(timeout_s=100.0)
    simulate(trace, cost=linear_cost(), engine=engine, num_blocks=500, **kw)
    assert merged == []


def _step_by_step(engine: EngineConfig) -> EngineConfig:
    return EngineConfig(**{**engine.__dict__, "fast_forward": False})


@pytest.fixture
def fed(monkeypatch) -> list[int]:
    """Rows a lone replica took in itself (``_ArrivalFeed.release_due``) instead of one event each."""
    from driftsim.sim import run as run_module

    rows: list[int] = []
    original = run_module._ArrivalFeed._open_next

    def counting(self):
        rows.append(1)
        return original(self)

    monkeypatch.setattr(run_module._ArrivalFeed, "_open_next", counting)
    return rows


@pytest.mark.parametrize("compiled", [False, True])
def test_a_lone_replica_takes_bursts_refusals_and_idle_gaps_in_as_the_arrival_process_does(fed, compiled):
    # bursts at one instant, arrivals on a grid that step ends may hit, prompts too long, idle gaps;
    # the Python engine's feed and the compiled core (which replaces the feed) alike
    rows = [(0.0, 300, 20)] * 5 + [(float(t) * 0.25, 100 + 37 * t, 1 + t % 9) for t in range(1, 60)]
    rows += [(20.0, 5000, 10), (20.0, 50, 1), (35.5, 200, 30)] + [(40.0 + 0.001 * k, 64, 64) for k in range(30)]
    trace = make_trace(rows)
    engine = EngineConfig(max_num_seqs=8, max_num_batched_tokens=256, max_model_len=2048, block_size=BS,
                          compiled_core=compiled)
    result = simulate(trace, cost=linear_cost(), engine=engine, num_blocks=200)
    fast = result.requests
    assert result.engine_core == ("compiled" if compiled else "python")
    if not compiled:
        assert len(fed) > len(rows) // 2, "the replica must take the arrivals in"
    assert fast.equals(simulate(trace, cost=linear_cost(), engine=_step_by_step(engine), num_blocks=200).requests)
    assert (fast["status"] == "rejected").sum() == sum(p >= 2048 for _, p, _ in rows) > 0


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("summary_only", [False, True])
def test_streamed_results_in_small_chunks_equal_the_step_by_step_table(tmp_path, fed, summary_only, compiled):
    trace = random_trace(300, rate=25, seed=11, max_in=500, max_out=120)
    engine = EngineConfig(max_num_seqs=16, max_num_batched_tokens=512, max_model_len=2048, block_size=BS,
                          compiled_core=compiled)
    slow = simulate(trace, cost=linear_cost(), engine=_step_by_step(engine), num_blocks=300)
    path = tmp_path / "requests.parquet"
    kw = {"summary_only": True} if summary_only else {"results_path": path}
    fast = simulate(trace, cost=linear_cost(), engine=engine, num_blocks=300, chunk_rows=7, **kw)
    assert fast.engine_core == ("compiled" if compiled else "python")
    assert bool(fed) != compiled  # the compiled core replaces the Python feed
    if summary_only:
        assert fast.summary["overall"]["requests"] == slow.summary["overall"]["requests"]
        assert fast.summary["overall"]["e2e_s"]["mean"] == pytest.approx(slow.summary["overall"]["e2e_s"]["mean"],
                                                                          rel=1e-12)
    else:
        assert pl.read_parquet(path).equals(slow.requests)


def test_a_horizon_keeps_the_arrival_process(fed):
    trace = random_trace(100, rate=20, seed=2)
    engine = EngineConfig(max_num_seqs=16, max_model_len=2048)
    fast = simulate(trace, cost=linear_cost(), engine=engine, num_blocks=500, horizon_s=2.0).requests
    assert not fed
    slow = simulate(trace, cost=linear_cost(), engine=_step_by_step(engine), num_blocks=500, horizon_s=2.0).requests
    assert fast.equals(slow) and (fast["status"] == "unfinished").any()


@pytest.mark.parametrize("estimator", ["driftsched", "learned"])
def test_estimates_calibrated_by_completions_see_them_in_the_same_order(estimator):
    # the engine orders its queue by estimated length, and each completion recalibrates the estimates of
    # later arrivals: completions before an arrival must reach the estimator before it, as step by step
    from driftsim.admission.controller import AdmissionConfig

    trace = random_trace(300, rate=30, seed=5, max_in=400, max_out=200)
    engine = EngineConfig(max_num_seqs=8, max_num_batched_tokens=512, max_model_len=2048, block_size=BS)
    kw = dict(cost=linear_cost(), num_blocks=300, admission=AdmissionConfig(estimator=estimator),
              gateway=GatewayConfig(policy="sjf", placement="engine"))
    fast = simulate(trace, engine=engine, **kw).requests
    assert fast.equals(simulate(trace, engine=_step_by_step(engine), **kw).requests)
