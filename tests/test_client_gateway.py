"""Client timeouts, retries and abandonment on the real gateway (mock engine over
httpx.MockTransport), and the simulator agreeing with it on what they do."""

from __future__ import annotations

import asyncio

import httpx
import polars as pl

from driftsim.profiling.gateway import ReplayGateway, StreamingClient, records_frame
from driftsim.sim.client import ClientConfig
from driftsim.sim.config import EngineConfig, GatewayConfig
from driftsim.sim.policies import make_policy
from driftsim.sim.run import simulate
from tests.factories import linear_cost, make_trace
from tests.test_validation import MockEngine, client_for, requests


class FlakyEngine(MockEngine):
    """A mock engine whose first attempt at chosen prompts fails: ``hang_once`` never answers,
    ``fail_once`` answers 500; later attempts stream normally."""

    def __init__(self, *, hang_once=(), fail_once=(), **kw):
        super().__init__(**kw)
        self.hang_once, self.fail_once = set(hang_once), set(fail_once)
        self.seen: list[int] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        import json

        if request.url.path == "/v1/completions":
            n_prompt = len(json.loads(request.content)["prompt"])
            first = n_prompt not in self.seen
            self.seen.append(n_prompt)
            if first and n_prompt in self.hang_once:
                await asyncio.sleep(3600)
            if first and n_prompt in self.fail_once:
                return httpx.Response(500, text="transient failure")
        return await super().__call__(request)


def gateway(engine, reqs, cfg: ClientConfig, policy="fifo", **kw) -> ReplayGateway:
    return ReplayGateway(reqs, policy=make_policy(policy), client_config=cfg,
                         client=StreamingClient(client_for(engine), model="tiny", clock=lambda: 0.0), **kw)


def run(gw):
    return asyncio.run(gw.run())


def test_a_hung_attempt_times_out_and_the_retry_completes():
    eng = FlakyEngine(ttft_s=0.005, tpot_s=0.002, hang_once={11}, fail_once={12})
    reqs = requests([(0.0, 10, 4), (0.0, 11, 4), (0.0, 12, 4)])
    recs = run(gateway(eng, reqs, ClientConfig(timeout_s=0.2, retries=1, backoff_s=0.05)))
    by = {r.input_tokens: r for r in recs}
    assert by[10].status == "ok" and by[10].attempts == 1 and by[10].error is None
    assert by[11].status == "ok" and by[11].attempts == 2
    assert "attempt 1: timed out after 0.2 s" in by[11].error
    assert by[12].status == "ok" and by[12].attempts == 2 and "attempt 1: HTTP 500" in by[12].error
    assert eng.seen.count(11) == 2 and eng.seen.count(12) == 2
    # user-perceived latency: from the first release, across the timeout and the backoff
    df = records_frame(recs)
    assert df.filter(pl.col("input_tokens") == 11)["e2e_s"][0] > 0.25
    assert df["attempts"].to_list() == [1, 2, 2]


def test_without_retries_left_the_request_ends_as_timeout_and_nothing_is_lost():
    eng = MockEngine(ttft_s=0.005, tpot_s=0.002, hang={11})
    reqs = requests([(0.0, 10, 4), (0.0, 11, 4), (0.05, 12, 4)])
    finals = []
    recs = run(gateway(eng, reqs, ClientConfig(timeout_s=0.15, retries=2, backoff_s=0.02), on_record=finals.append))
    by = {r.input_tokens: r for r in recs}
    assert by[11].status == "timeout" and by[11].attempts == 3
    assert by[11].error.count("timed out after 0.15 s") == 3
    assert sorted(r.input_tokens for r in finals) == [10, 11, 12]  # each reported once, when final


def test_a_request_waiting_at_the_gateway_is_removed_and_never_sent():
    # cap 1, priority: the low-priority 11 waits while 10 runs (~0.15 s) and then 12 (urgent) runs
    eng = MockEngine(ttft_s=0.005, tpot_s=0.01)
    reqs = requests([(0.0, 10, 15), (0.01, 11, 3), (0.02, 12, 15)], priorities=[1, 3, 1])
    recs = run(gateway(eng, reqs, ClientConfig(timeout_s=0.2), policy="priority", max_outstanding=1))
    by = {r.input_tokens: r for r in recs}
    assert by[11].status == "timeout" and "0 of 3 tokens" in by[11].error
    assert 11 not in eng.order  # never reached the engine
    assert by[10].status == "ok" and by[12].status == "timeout"  # 12 timed out in the engine


def test_a_tenant_that_gets_no_first_token_in_time_abandons_without_retry():
    eng = MockEngine(ttft_s=0.005, tpot_s=0.01)
    reqs = requests([(0.0, 10, 20), (0.01, 11, 3), (0.01, 12, 3)], tenants=["a", "impatient", "a"])
    cfg = ClientConfig(abandon_tenant_s={"impatient": 0.05}, retries=3, timeout_s=5.0)
    recs = run(gateway(eng, reqs, cfg, max_outstanding=1))
    by = {r.input_tokens: r for r in recs}
    assert [by[k].status for k in (10, 11, 12)] == ["ok", "abandoned", "ok"]
    assert by[11].attempts == 1 and "no first token within 0.05 s" in by[11].error
    assert 11 not in eng.order


# ---- sim and real agree on what a timeout does -------------------------------------

def test_sim_and_real_agree_on_timeouts_retries_and_abandonment():
    """Same requests, same ClientConfig: the mock engine (TTFT 20 ms, a token every 10 ms, no
    batching effects) and the simulator with 10 ms steps end every request with the same status
    and the same number of attempts. Deadlines are far from completion times on both sides."""
    rows = [(0.0, 16, 5), (0.0, 17, 100), (0.02, 18, 8), (0.05, 19, 60), (0.1, 20, 3)]
    tenants = ["a", "a", "b", "a", "b"]
    cfg = ClientConfig(timeout_s=0.4, retries=1, backoff_s=0.1)
    eng = MockEngine(ttft_s=0.02, tpot_s=0.01)
    recs = run(gateway(eng, requests(rows, tenants=tenants), cfg))
    real = [(r.status, r.attempts) for r in recs]

    trace = make_trace(rows, tenants=tenants)
    step = linear_cost(overhead_s=0.01, per_prefill_token_s=0, per_prefill_attn_s=0, per_prefill_seq_s=0,
                       per_decode_seq_s=0, per_decode_ctx_token_s=0)
    engine = EngineConfig(max_num_seqs=16, max_num_batched_tokens=512, block_size=16, max_model_len=1024,
                          num_gpu_blocks=1000)
    sim = simulate(trace, cost=step, engine=engine, gateway=GatewayConfig(), client=cfg).requests
    simulated = list(zip(sim["status"].cast(pl.String).to_list(), sim["attempts"].to_list()))
    assert real == simulated == [("ok", 1), ("timeout", 2), ("ok", 1), ("timeout", 2), ("ok", 1)]
