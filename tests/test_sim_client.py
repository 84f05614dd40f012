"""Clients that give up, in the simulator: timeouts free the engine's KV, retries back off,
abandonment ends a request, nothing disappears, and fast-forward stays exact."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import simpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftsim.sim.client import ClientConfig
from driftsim.sim.config import ConfigError, EngineConfig, GatewayConfig
from driftsim.sim.engine import EngineCore
from driftsim.sim.run import simulate
from tests.factories import linear_cost, make_engine, make_request, make_trace, random_trace

ENGINE = EngineConfig(max_num_seqs=8, max_num_batched_tokens=512, block_size=16, max_model_len=2048)


def run(trace, client, *, engine=ENGINE, blocks=400, **kw):
    return simulate(trace, cost=linear_cost(), engine=engine, num_blocks=blocks, client=client, **kw)


@pytest.fixture
def cores(monkeypatch):
    """Every EngineCore a simulation builds, to look inside afterwards."""
    import driftsim.sim.run as run_mod

    made: list[EngineCore] = []
    real = run_mod.EngineCore

    def keep(**kw):
        made.append(real(**kw))
        return made[-1]

    monkeypatch.setattr(run_mod, "EngineCore", keep)
    return made


def test_a_request_past_its_timeout_is_recorded_and_its_kv_freed(cores):
    # request 0 decodes for ~1000 steps (>= 4 s); request 1 is short and must not notice
    trace = make_trace([(0.0, 100, 1000), (0.0, 50, 5)])
    res = run(trace, ClientConfig(timeout_s=1.0))
    df = res.requests
    assert df["status"].to_list() == ["timeout", "ok"]
    r0 = df.row(0, named=True)
    assert "timed out after 1 s (attempt 1 of 1" in r0["reason"] and r0["attempts"] == 1
    assert 0 < r0["generated_tokens"] < 1000  # tokens it had when the client left
    assert r0["e2e_s"] is None
    core = cores[0]
    assert core.used_blocks == 0 and not core.running and not len(core.waiting)
    # the engine stopped working on it: it ran about timeout_s worth of steps, not its 1000 tokens
    assert 1.0 <= core.busy_s < 1.02
    assert res.summary["overall"]["timeout"] == 1 and res.summary["overall"]["completed"] == 1


def test_a_request_still_queued_at_the_gateway_is_removed(cores):
    # cap 1, priority policy: the low-priority request 1 waits at the gateway while urgent ones
    # keep arriving, and times out there without ever reaching the engine
    rows = [(0.0, 100, 50), (0.01, 50, 5)] + [(0.02 + 0.01 * k, 50, 50) for k in range(6)]
    trace = make_trace(rows, priority=[1, 3] + [1] * 6)
    res = run(trace, ClientConfig(timeout_s=0.5), gateway=GatewayConfig(max_outstanding=1, policy="priority"))
    r1 = res.requests.row(1, named=True)
    assert r1["status"] == "timeout" and r1["generated_tokens"] == 0
    assert "0 of 5 tokens" in r1["reason"]
    admitted = cores[0]._next_order
    timed_out_in_engine = res.requests.filter(pl.col("status") == "timeout").height - 1
    assert admitted == res.requests.filter(pl.col("status") == "ok").height + timed_out_in_engine
    assert cores[0].used_blocks == 0


def test_retries_back_off_and_keep_the_request_id():
    trace = make_trace([(0.0, 100, 1000)])
    cfg = ClientConfig(timeout_s=0.5, retries=2, backoff_s=0.25, backoff_factor=2.0)
    res = run(trace, cfg)
    row = res.requests.row(0, named=True)
    assert row["status"] == "timeout" and row["attempts"] == 3
    assert "attempt 3 of 3" in row["reason"]
    # three attempts of 0.5 s with 0.25 s and 0.5 s between them: busy about 1.5 s over a 2.25 s span
    busy = res.replicas[0]["busy_s"]
    assert 1.45 < busy < 1.6


def test_a_retry_that_succeeds_counts_its_attempts_and_latency_from_the_first_arrival():
    # cap 1, FIFO: A (~0.66 s) completes; B times out after waiting for A; the short request C waits
    # for both and times out; B's retry then runs alone and completes, and C's retry after it
    trace = make_trace([(0.0, 100, 150), (0.005, 100, 150), (0.01, 50, 3)])
    cfg = ClientConfig(timeout_s=1.0, retries=1, backoff_s=0.5)
    res = run(trace, cfg, gateway=GatewayConfig(max_outstanding=1))
    df = res.requests
    assert df["status"].to_list() == ["ok", "ok", "ok"]
    assert df["attempts"].to_list() == [1, 2, 2]
    assert df["e2e_s"][2] > 1.0 + 0.5  # user-perceived: from the first arrival
    assert res.summary["overall"]["retries"] == 2


def test_abandonment_without_a_first_token_ends_the_request_without_retry():
    # max_num_seqs 1: the second request cannot start before the first finishes (~1 s)
    eng = EngineConfig(max_num_seqs=1, max_num_batched_tokens=512, block_size=16, max_model_len=2048)
    trace = make_trace([(0.0, 100, 200), (0.0, 50, 5), (0.0, 50, 5)], tenants=["a", "impatient", "a"])
    cfg = ClientConfig(abandon_tenant_s={"impatient": 0.2}, retries=3, timeout_s=30.0)
    res = run(trace, cfg, engine=eng)
    df = res.requests
    assert df["status"].to_list() == ["ok", "abandoned", "ok"]
    assert df["attempts"].to_list() == [1, 1, 1]
    assert "no first token within 0.2 s" in df["reason"][1]


def test_a_user_who_got_a_token_does_not_abandon():
    trace = make_trace([(0.0, 100, 300)])
    res = run(trace, ClientConfig(abandon_s=0.05))
    assert res.requests["status"].to_list() == ["ok"]


def test_engine_abort_frees_blocks_of_prefilling_and_decoding_requests():
    cost = linear_cost()
    core = make_engine(cost, max_num_seqs=8, max_num_batched_tokens=64, block_size=16)
    a, b = make_request(0, 40, 50), make_request(1, 200, 5)
    core.add(a)
    core.add(b)
    t = 0.0
    for _ in range(3):  # a decodes, b prefills in chunks
        ends = core.plan(t)
        core.commit(len(ends))
        t = float(ends[-1])
    assert a.finish_g >= 0 and b.finish_g < 0 and core.used_blocks > 0
    produced = core.generated_by(a, t)
    assert core.abort(b) and core.abort(a)
    assert a.generated == produced
    assert core.used_blocks == 0 and not core.running and not core.prefilling and core.num_decode == 0
    assert not core.abort(a)
    assert not core.has_work()


def test_config_is_checked_and_microbatch_is_refused():
    with pytest.raises(ConfigError, match="client.timeout_s"):
        ClientConfig(timeout_s=0)
    with pytest.raises(ConfigError, match="client.retries"):
        ClientConfig(retries=-1)
    with pytest.raises(ConfigError, match="client.backoff_factor"):
        ClientConfig(backoff_factor=0.5)
    mb = EngineConfig(mode="microbatch", max_num_seqs=8, max_num_batched_tokens=512)
    with pytest.raises(ConfigError, match="micro-batch"):
        run(make_trace([(0.0, 10, 2)]), ClientConfig(timeout_s=1.0), engine=mb)
    # a client that never gives up changes nothing
    trace = random_trace(30, rate=20, seed=1, max_in=300, max_out=100)
    assert run(trace, ClientConfig()).requests.equals(run(trace, None).requests)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 60), rate=st.floats(2, 200), seed=st.integers(0, 2**31),
       timeout=st.floats(0.05, 2.0), retries=st.integers(0, 2), abandon=st.sampled_from([None, 0.1, 0.5]),
       cap=st.sampled_from([None, 2]), placement=st.sampled_from(["gateway", "engine"]),
       blocks=st.integers(80, 600), policy=st.sampled_from(["fifo", "sjf", "vtc", "weighted"]),
       async_scheduling=st.booleans())
def test_with_timeouts_fast_forward_stays_exact_and_no_request_disappears(
        n, rate, seed, timeout, retries, abandon, cap, placement, blocks, policy, async_scheduling):
    if placement == "engine" and policy in ("vtc", "weighted"):
        policy = "sjf"
    trace = random_trace(n, rate=rate, seed=seed, max_in=400, max_out=200)
    cfg = ClientConfig(timeout_s=timeout, retries=retries, backoff_s=0.05, abandon_s=abandon)
    gw = GatewayConfig(max_outstanding=cap, placement=placement, policy=policy)
    eng = EngineConfig(max_num_seqs=8, max_num_batched_tokens=256, block_size=16, max_model_len=1024,
                       async_scheduling=async_scheduling)
    slow_eng = EngineConfig(**{**eng.__dict__, "fast_forward": False})
    fast = run(trace, cfg, engine=eng, blocks=blocks, gateway=gw, replicas=2)
    slow = run(trace, cfg, engine=slow_eng, blocks=blocks, gateway=gw, replicas=2)
    assert fast.requests.equals(slow.requests), "fast-forward must equal step-by-step with timeouts too"
    df = fast.requests
    assert df.height == trace.height
    assert set(df["status"].unique().to_list()) <= {"ok", "rejected", "timeout", "abandoned"}
    assert df.filter(pl.col("status") == "pending").height == 0
    assert (df["attempts"] >= 1).all() and (df["attempts"] <= 1 + retries).all()
    to = df.filter(pl.col("status") == "timeout")
    assert (to["attempts"] == 1 + retries).all()
    ok = df.filter(pl.col("status") == "ok")
    assert (ok["e2e_s"] <= ok["attempts"] * timeout + (ok["attempts"] - 1) * 0.05 * 4 + 1e-9).all()
    s = fast.summary["overall"]
    assert s["completed"] + s["rejected"] + s["timeout"] + s["abandoned"] == trace.height


def test_a_scenario_file_can_set_the_client(tmp_path):
    from driftsim.sim.scenario import build_client, load_scenario

    path = tmp_path / "s.toml"
    path.write_text('name = "t"\n[client]\ntimeout_s = 2.5\nretries = 1\nabandon_tenant_s = { batch = 9.0 }\n')
    cfg = build_client(load_scenario(path))
    assert cfg == ClientConfig(timeout_s=2.5, retries=1, abandon_tenant_s={"batch": 9.0})
    path.write_text('name = "t"\n[client]\ntimeout = 2.5\n')
    with pytest.raises(ConfigError, match=r"\[client\]: unknown key\(s\) timeout"):
        build_client(load_scenario(path))
    path.write_text('name = "t"\n[client]\nbackoff_s = "soon"\n')
    with pytest.raises(ConfigError, match="client.backoff_s"):
        build_client(load_scenario(path))
