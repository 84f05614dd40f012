"""Validation mode, fast tests: the real gateway against a mock engine
(httpx.MockTransport), the simulation of a replay, and the scoring math on
hand-built pairs. The real-engine tests are in test_validation_engine.py."""

from __future__ import annotations

import asyncio
import json
import math
import signal
from dataclasses import replace

import httpx
import numpy as np
import polars as pl
import pytest

from driftsim.profiling.gateway import (MicroBatch, ReplayGateway, ReplayRequest, StreamingClient, check_endpoint,
                               records_frame, run_replay)
from driftsim.profiling.http import EndpointError, OpenAIClient
from driftsim.profiling.server_facts import read_server_facts
from driftsim.profiling.trace_replay import replay_requests
from driftsim.sim.config import EngineConfig, GatewayConfig
from driftsim.sim.policies import make_policy
from driftsim.sim.run import simulate
from driftsim.validation.calibration import AT_SERVER_SPEED, SESSION_SPEED, overhead_from_probe
from driftsim.validation.replay_sim import replay_engine, sim_trace, simulate_replay
from driftsim.validation.scoring import (OVERALL, TIME_RESOLUTION_S, aggregate, compare, jain, parse_bounds, rel_err,
                                         spread, target_check)
from driftsim.validation.workload import fit_trace
from tests.factories import linear_cost, make_trace


# ---- a mock engine ------------------------------------------------------------------

class MockEngine:
    """An OpenAI-compatible MockTransport handler: streams ``max_tokens`` tokens,
    one every ``tpot_s`` after ``ttft_s``, with vLLM's usage on every chunk.

    Prompt length selects misbehaviour: ``fail_500`` answers HTTP 500,
    ``drop`` drops the stream after 2 tokens, ``hang`` stops sending after
    one token. ``log`` keeps (event, prompt_len, time); ``concurrent``/
    ``max_concurrent`` count streams in flight.
    """

    def __init__(self, *, ttft_s=0.02, tpot_s=0.005, fail_500=(), drop=(), hang=(), on_request=None):
        self.ttft_s, self.tpot_s = ttft_s, tpot_s
        self.fail_500, self.drop, self.hang = set(fail_500), set(drop), set(hang)
        self.on_request = on_request
        self.concurrent = self.max_concurrent = self.requests = 0
        self.order: list[int] = []  # prompt lengths in the order the requests arrived

    def plain(self, request: httpx.Request) -> httpx.Response:
        """The non-streaming routes (for the sync client)."""
        path = request.url.path
        if path == "/health":
            return httpx.Response(200)
        if path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "tiny", "max_model_len": 1024}]})
        if path == "/metrics":
            return httpx.Response(200, text='vllm:cache_config_info{block_size="128",num_gpu_blocks="512"} 1.0\n')
        if path == "/version":
            return httpx.Response(200, json={"version": "mock"})
        return httpx.Response(404)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path != "/v1/completions":
            return self.plain(request)
        body = json.loads(request.content)
        n_prompt, n = len(body["prompt"]), body["max_tokens"]
        assert body["ignore_eos"] is True and body["min_tokens"] == n and body["stream"] is True
        self.order.append(n_prompt)
        self.requests += 1
        if self.on_request is not None:
            self.on_request(self)
        if n_prompt in self.fail_500:
            return httpx.Response(500, text="engine exploded")
        return httpx.Response(200, content=self._stream(n_prompt, n), headers={"content-type": "text/event-stream"})

    async def _stream(self, n_prompt: int, n: int):
        # NOTE: the client stops reading at [DONE], so the count drops before it is sent
        # (a generator's finally would only run when garbage-collected)
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        await asyncio.sleep(self.ttft_s)
        for k in range(1, n + 1):
            if k > 1:
                await asyncio.sleep(self.tpot_s)
            chunk = {"choices": [{"text": "x", "finish_reason": "length" if k == n else None}],
                     "usage": {"prompt_tokens": n_prompt, "completion_tokens": k}}
            yield f"data: {json.dumps(chunk)}\n\n".encode()
            if n_prompt in self.drop and k == 2:
                self.concurrent -= 1
                raise httpx.ReadError("peer closed connection")
            if n_prompt in self.hang:
                self.concurrent -= 1
                await asyncio.sleep(3600)
        self.concurrent -= 1
        yield b"data: [DONE]\n\n"


def client_for(engine) -> OpenAIClient:
    return OpenAIClient("http://engine.test", transport=httpx.MockTransport(engine.plain),
                        async_transport=httpx.MockTransport(engine))


def requests(rows, tenants=None, priorities=None) -> list[ReplayRequest]:
    """ReplayRequests from (arrival_s, input_tokens, output_tokens) rows."""
    out = []
    for i, (t, inp, o) in enumerate(rows):
        out.append(ReplayRequest(idx=i, request_id=i, arrival_s=t, tenant=(tenants or ["a"] * len(rows))[i],
                                 priority=(priorities or [0] * len(rows))[i], input_tokens=inp, output_tokens=o,
                                 est_tokens=inp + o))
    return out


def gateway(engine, reqs, policy="fifo", **kw) -> ReplayGateway:
    client = client_for(engine)
    return ReplayGateway(reqs, policy=make_policy(policy), client=StreamingClient(client, model="tiny", clock=lambda: 0.0),
                         **kw)


def run(gw: ReplayGateway):
    return asyncio.run(gw.run())


# ---- the gateway ----------------------------------------------------------------------

def test_uncapped_gateway_sends_each_request_when_released_and_times_every_token():
    # each answer takes >= 0.35 s, the arrivals span 0.06 s: an uncapped gateway has all three in flight
    # at once, which a gateway holding a request back would not (order, not a delay bound)
    eng = MockEngine(ttft_s=0.2, tpot_s=0.05)
    recs = run(gateway(eng, requests([(0.0, 10, 4), (0.03, 11, 3), (0.06, 12, 1)])))
    assert [r.status for r in recs] == ["ok"] * 3
    assert eng.max_concurrent == 3
    assert max(r.sent_s for r in recs) < min(r.first_token_s for r in recs)
    for r in recs:
        assert r.released_s >= r.intended_s - 1e-3
        assert r.sent_s >= r.released_s
        assert len(r.token_times) == r.output_tokens == r.completion_tokens
        assert r.first_token_s == r.token_times[0] and r.finish_s == r.token_times[-1] == r.delivered_s
        assert r.first_token_s - r.sent_s >= 0.2 - 1e-3
        assert all(b >= a for a, b in zip(r.token_times, r.token_times[1:]))
    df = records_frame(recs)
    assert df["ttft_s"].min() >= 0.2 - 1e-3
    assert df.filter(pl.col("request_id") == 2)["tpot_s"][0] is None  # one token: no TPOT
    assert df["token_times"].list.len().to_list() == [4, 3, 1]


def test_cap_is_honoured_and_the_policy_picks_who_goes_next():
    # a long head-of-line request holds the only slot while three arrive; priority picks 3, 2, 1 by tier
    eng = MockEngine(ttft_s=0.03, tpot_s=0.002)
    reqs = requests([(0.0, 20, 10), (0.005, 21, 2), (0.006, 22, 2), (0.007, 23, 2)], priorities=[0, 3, 2, 1])
    recs = run(gateway(eng, reqs, policy="priority", max_outstanding=1))
    assert eng.max_concurrent == 1
    assert eng.order == [20, 23, 22, 21]
    sent = [r.sent_s for r in recs]
    assert sent[3] < sent[2] < sent[1]
    df = records_frame(recs)
    assert df["queue_wait_s"][1] > df["queue_wait_s"][3] > 0.02  # they waited in the gateway, not the engine


@pytest.mark.parametrize("cap", [2, 3])
def test_cap_bounds_requests_in_flight(cap):
    eng = MockEngine(ttft_s=0.05, tpot_s=0.002)  # all nine queued at once: the cap, not arrival luck, bounds them
    recs = run(gateway(eng, requests([(0.0, 10 + i, 5) for i in range(9)]), max_outstanding=cap))
    assert eng.max_concurrent == cap
    assert all(r.status == "ok" for r in recs)


def test_sjf_at_the_gateway_orders_by_estimated_size():
    eng = MockEngine(ttft_s=0.02, tpot_s=0.001)
    reqs = requests([(0.0, 30, 5), (0.002, 31, 50), (0.003, 32, 20), (0.004, 33, 2)])
    run(gateway(eng, reqs, policy="sjf", max_outstanding=1))
    assert eng.order == [30, 33, 32, 31]


def test_errors_are_recorded_per_request_and_the_replay_goes_on():
    eng = MockEngine(ttft_s=0.005, tpot_s=0.002, fail_500={11}, drop={12}, hang={13})
    reqs = requests([(0.0, 10, 4), (0.0, 11, 4), (0.0, 12, 5), (0.0, 13, 5), (0.01, 14, 3)])
    recs = run(gateway(eng, reqs, request_timeout_s=0.3))
    by = {r.input_tokens: r for r in recs}
    assert by[10].status == by[14].status == "ok"
    assert by[11].status == "error" and "HTTP 500" in by[11].error and "engine exploded" in by[11].error
    assert by[11].http_status == 500
    assert by[12].status == "error" and "dropped after 2 of 5 tokens" in by[12].error
    assert len(by[12].token_times) == 2  # what arrived is kept
    assert by[13].status == "timeout" and "timed out after 0.3 s (attempt 1 of 1, 1 of 5 tokens)" in by[13].error
    assert by[13].completion_tokens == 1
    df = records_frame(recs)
    assert df.filter(pl.col("status") != "ok")["e2e_s"].null_count() == 3


def test_cancelling_the_replay_keeps_what_was_measured():
    eng = MockEngine(ttft_s=0.01, tpot_s=0.01)
    reqs = requests([(0.0, 10, 2), (0.05, 11, 40), (5.0, 12, 2)])
    gw = gateway(eng, reqs)

    async def go():
        task = asyncio.create_task(gw.run())
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    done, partial, never = gw.records
    assert done.status == "ok" and len(done.token_times) == 2
    assert partial.status == "cancelled" and 0 < partial.completion_tokens < 40
    assert len(partial.token_times) == partial.completion_tokens
    assert never.status == "not_sent" and math.isnan(never.sent_s)


def test_ctrl_c_stops_the_replay_and_returns_partial_results():
    # A terminal delivers Ctrl-C to a process whose SIGINT handler is Python's default; a job started in the
    # background by a non-interactive shell inherits SIGINT ignored, so install the default explicitly.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)

    def interrupt(engine):
        if engine.requests == 2:
            asyncio.get_running_loop().call_later(0.05, signal.raise_signal, signal.SIGINT)

    eng = MockEngine(ttft_s=0.01, tpot_s=0.01, on_request=interrupt)
    gw = gateway(eng, requests([(0.0, 10, 2), (0.03, 11, 30), (3.0, 12, 2)]))
    try:
        records, interrupted = run_replay(gw)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert interrupted
    assert [r.status for r in records] == ["ok", "cancelled", "not_sent"]
    assert records[1].completion_tokens > 0


def test_microbatch_worker_batches_in_policy_order_and_delivers_at_the_batch_end():
    eng = MockEngine(ttft_s=0.01, tpot_s=0.002)
    reqs = requests([(0.0, 10, 2), (0.001, 11, 8), (0.002, 12, 2), (0.2, 13, 2), (0.201, 14, 2)],
                    priorities=[3, 2, 1, 2, 1])
    recs = run(gateway(eng, reqs, policy="priority", microbatch=MicroBatch(batch_size=2, batch_wait_s=0.02)))
    # first pick at t=0 is the only one there (10); it waits 20 ms for a second: 12 (prio 1) beats 11
    assert [r.batch for r in recs] == [0, 1, 0, 2, 2]
    assert recs[0].delivered_s == recs[2].delivered_s >= max(recs[0].finish_s, recs[2].finish_s)
    assert recs[3].delivered_s == recs[4].delivered_s
    assert eng.max_concurrent == 2


def test_microbatch_replay_waits_for_its_last_batch_to_be_handed_back(monkeypatch):
    """The worker hands a batch back (delivered_s, the journal's record) only after the batch's last
    stream ends; the replay must not stop in between, even when the worker resumes late."""
    eng = MockEngine(ttft_s=0.005, tpot_s=0.002)
    gather = asyncio.gather

    async def late_gather(*aws, **kw):  # the worker resumes 50 ms after its batch's streams end
        out = await gather(*aws, **kw)
        await asyncio.sleep(0.05)
        return out

    monkeypatch.setattr(asyncio, "gather", late_gather)
    journaled = []
    gw = gateway(eng, requests([(0.0, 10, 3), (0.001, 11, 5)]), microbatch=MicroBatch(batch_size=2, batch_wait_s=0.01))
    gw.on_record = journaled.append
    recs = run(gw)
    assert [r.status for r in recs] == ["ok", "ok"]
    assert recs[0].delivered_s == recs[1].delivered_s >= max(r.finish_s for r in recs)
    assert sorted(r.input_tokens for r in journaled) == [10, 11]


def test_unreachable_endpoint_fails_fast_with_a_clear_message():
    def refuse(request):
        raise httpx.ConnectError("connection refused")

    with pytest.raises(EndpointError, match="cannot reach .*is the server running"):
        check_endpoint(OpenAIClient("http://engine.test", transport=httpx.MockTransport(refuse)))
    with pytest.raises(EndpointError, match="not served"):
        check_endpoint(client_for(MockEngine()), "other-model")


def test_server_facts_come_from_the_server():
    facts = read_server_facts(client_for(MockEngine()), max_num_seqs=32, max_num_batched_tokens=1024)
    assert (facts.model, facts.max_model_len, facts.num_gpu_blocks, facts.block_size) == ("tiny", 1024, 512, 128)
    assert facts.version == "mock"


# ---- the simulated side ---------------------------------------------------------------

def _random_trace(seed: int, n: int = 60) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(0.05, n))
    rows = [(float(a), int(rng.integers(8, 300)), int(rng.integers(1, 80))) for a in t]
    tenants = [["premium", "standard", "batch"][i % 3] for i in range(n)]
    return make_trace(rows, tenants=tenants, priority=[1 + i % 3 for i in range(n)])


@pytest.mark.parametrize("mode,cap,policy", [("continuous", None, "fifo"), ("continuous", 4, "priority"),
                                             ("continuous", 3, "vtc"), ("microbatch", None, "sjf")])
@pytest.mark.parametrize("seed", [0, 1])
def test_simulate_replay_matches_simulate(mode, cap, policy, seed):
    trace = _random_trace(seed)
    engine = EngineConfig(mode=mode, max_num_seqs=8, max_num_batched_tokens=256, block_size=16, num_gpu_blocks=120,
                          max_model_len=512, batch_size=4)
    gw = GatewayConfig(policy=policy, max_outstanding=cap)
    cost = linear_cost()
    ref = simulate(trace, cost=cost, engine=engine, gateway=gw).requests
    got = simulate_replay(trace, cost=cost, engine=engine, gateway=gw).requests
    for col in ("status", "scheduled_s", "first_token_s", "generated_tokens", "preemptions"):
        assert got[col].to_list() == ref[col].to_list(), col
    assert got["delivered_s"].to_list() == ref["finish_s"].to_list()  # when the gateway hands the result back
    if mode == "continuous":
        assert got["finish_s"].to_list() == ref["finish_s"].to_list()


def test_microbatch_replay_keeps_each_requests_last_token_apart_from_its_batchs_end():
    """DriftSched's worker hands a micro-batch back when its slowest request ends; the real gateway
    still streams each request's tokens, so TPOT and ITL must come from the request's own tokens."""
    trace = _random_trace(4, 40)
    engine = EngineConfig(mode="microbatch", max_num_seqs=8, max_num_batched_tokens=256, block_size=16,
                          num_gpu_blocks=400, max_model_len=512, batch_size=4)
    df = simulate_replay(trace, cost=linear_cost(), engine=engine, gateway=GatewayConfig()).requests
    df = df.filter(pl.col("status") == "ok")
    assert df.height == 40
    early = 0
    for row in df.iter_rows(named=True):
        tt = row["token_times"]
        assert tt is not None and len(tt) == row["generated_tokens"]
        assert tt[0] == row["first_token_s"] and tt[-1] == row["finish_s"] <= row["delivered_s"]
        early += row["finish_s"] < row["delivered_s"]
    assert early >= 10  # short requests of a batch finish before its longest one
    batches = df.group_by("scheduled_s").agg(pl.col("delivered_s").n_unique().alias("ends"),
                                             pl.col("finish_s").max().alias("last"), pl.col("delivered_s").first())
    assert (batches["ends"] == 1).all() and (batches["last"] == batches["delivered_s"]).all()


def test_relative_error_of_two_sub_millisecond_latencies_is_undefined():
    assert rel_err(0.0, 0.00035, floor=TIME_RESOLUTION_S) != rel_err(0.0, 0.00035, floor=TIME_RESOLUTION_S)  # NaN
    assert rel_err(0.0, 0.00035) == -1.0
    assert rel_err(0.002, 0.0005, floor=TIME_RESOLUTION_S) == pytest.approx(3.0)  # one side above: kept
    assert rel_err(0.011, 0.010, floor=TIME_RESOLUTION_S) == pytest.approx(0.1)


def test_simulated_tokens_are_at_step_ends_and_dispatch_is_noted():
    trace = _random_trace(3, 30)
    engine = EngineConfig(max_num_seqs=8, max_num_batched_tokens=256, block_size=16, num_gpu_blocks=400,
                          max_model_len=512)
    res = simulate_replay(trace, cost=linear_cost(), engine=engine, gateway=GatewayConfig(max_outstanding=3))
    df = res.requests.filter(pl.col("status") == "ok", pl.col("preemptions") == 0)
    assert df.height == 30
    for row in df.iter_rows(named=True):
        tt = row["token_times"]
        assert len(tt) == row["generated_tokens"]
        assert tt[0] == row["first_token_s"] and tt[-1] == row["finish_s"]
        assert row["arrival_s"] <= row["dispatch_s"] <= row["scheduled_s"]
    steps = res.step_ends[0]
    assert np.all(np.diff(steps) > 0)


def test_sim_trace_arrives_at_send_or_release_times_plus_overhead():
    trace = make_trace([(0.0, 10, 5), (1.0, 20, 6), (2.0, 30, 7)])
    real = pl.DataFrame({"request_id": [0, 1, 2], "released_s": [0.01, 1.02, None], "sent_s": [0.02, 1.5, None],
                         "output_tokens": [5, 4, 7]}, schema_overrides={"released_s": pl.Float64, "sent_s": pl.Float64})
    sent = sim_trace(trace, real, gateway_holds=False, overhead_s=0.005)
    assert sent["arrival_s"].to_list() == pytest.approx([0.025, 1.505])  # the unreleased request is not simulated
    assert sent["output_tokens"].to_list() == [5, 4]
    held = sim_trace(trace, real, gateway_holds=True)
    assert held["arrival_s"].to_list() == pytest.approx([0.01, 1.02])


def test_fit_trace_pins_lengths_to_the_server():
    trace = make_trace([(0.0, 10, 50), (0.1, 1000, 50), (0.2, 2000, 5), (0.3, 10, 500)], max_tokens=[20, None, None, None])
    fitted, notes = fit_trace(trace, 1024)
    assert fitted["output_tokens"].to_list() == [20, 24, 500]
    assert fitted["max_tokens"].null_count() == 3
    assert any("dropped 1" in n for n in notes) and any("capped the output of 2" in n for n in notes)
    reqs = replay_requests(fitted)
    assert [r.est_tokens for r in reqs] == [30, 1024, 510]


def test_fit_trace_keeps_prefix_ids_for_the_prompt_only():
    # a replay sends the trace's tokens for an earlier answer, never the engine's own: ids past the
    # prompt (its answer's blocks) would let the simulation find answers the real engine cannot
    trace = make_trace([(0.0, 40, 30), (1.0, 40, 5), (2.0, 33, 4)], prefix_ids=[[1, 2, 3, 4, 5], [1, 2, 3], None],
                       prefix_block_tokens=[16, 16, None])
    fitted, notes = fit_trace(trace, 1024)
    assert fitted["prefix_ids"].to_list() == [[1, 2, 3], [1, 2, 3], None]
    assert any("prefix ids of 1 request(s) for their prompt only" in n for n in notes)


def test_probe_overhead_is_what_does_not_grow_with_the_prompt():
    """A server with a 12 ms front end whose prefill work takes 1.4x the profile's: the probes' line gives
    both, through a slow first probe (a warm-up outlier); the median excess the overhead used to be
    mixes the prefill error at the probes' lengths into it (17 ms here), which every simulated request
    then paid whatever its prompt."""
    from driftsim.costmodel.batch import StepBatch
    from driftsim.validation.calibration import fit_probe
    from driftsim.validation.server_steps import prefill_work_s

    cost = linear_cost()

    def batch(p):
        return StepBatch(prefill_tokens=p, prefill_seqs=1, prefill_attn_tokens=p * (p + 1) / 2)

    rng = np.random.default_rng(3)
    samples = [(p, cost.step_time(batch(p)) + 0.012 + 0.4 * prefill_work_s(cost, batch(p)) + rng.normal(0, 3e-4))
               for _ in range(4) for p in (16, 128, 384)]
    samples[0] = (16, samples[0][1] + 0.02)
    fit = fit_probe(samples, cost)
    assert fit.overhead_s == pytest.approx(0.012, abs=1e-3)
    assert fit.prefill_factor == pytest.approx(1.4, abs=0.02)
    assert overhead_from_probe(samples, cost) == fit.overhead_s
    median_excess = np.median([t - cost.step_time(batch(p)) for p, t in samples])
    assert median_excess - fit.overhead_s > 0.004
    # one prompt length cannot tell the two apart: its median excess, as measured, and no factor
    one = fit_probe([(16, cost.step_time(batch(16)) + 0.005)] * 3, cost)
    assert one.overhead_s == pytest.approx(0.005) and one.prefill_factor == 1.0
    assert overhead_from_probe([(16, cost.step_time(batch(16)) / 2)], cost) == 0.0
    assert fit_probe([], cost).overhead_s == 0.0


def test_server_corrections_keep_the_cost_contract():
    """StepCorrection (and ScaledCost, which re-simulates at a server's speed): a fast-forwarded run of
    pure-decode steps is bit-identical to stepping one by one."""
    from driftsim.costmodel.batch import StepBatch
    from driftsim.validation.calibration import ScaledCost
    from driftsim.validation.server_steps import StepCorrection

    cost = linear_cost()
    b = StepBatch(decode_seqs=3, decode_ctx_tokens=90)
    corr = StepCorrection(cost, [0, 1, 2, 4, 8], [0.004, 0.004, 0.001, 0.003, 0.002])
    assert corr.step_time(b) == pytest.approx(cost.step_time(b) + 0.002)  # halfway between the knots 2 and 4
    assert corr.correction(20) == 0.002 and corr.correction(0) == 0.004  # flat beyond the ends
    assert StepCorrection(cost, [0, 8], [-1.0, -1.0]).step_time(b) > 0
    with pytest.raises(ValueError, match="knots"):
        StepCorrection(cost, [0, 4, 2], [0.0, 0.0, 0.0])
    for model in (corr, ScaledCost(cost, 1.3), ScaledCost(corr, 0.7)):
        assert [float(x) for x in model.decode_run_times(3, 90, 50)] == \
            [model.step_time(StepBatch(decode_seqs=3, decode_ctx_tokens=90 + 3 * j)) for j in range(50)]
    trace = _random_trace(5, 40)
    eng = EngineConfig(max_num_seqs=8, max_num_batched_tokens=256, block_size=16, num_gpu_blocks=300, max_model_len=512)
    a = simulate_replay(trace, cost=corr, engine=eng).requests
    slow = simulate_replay(trace, cost=corr, engine=EngineConfig(**{**eng.__dict__, "fast_forward": False})).requests
    assert a["finish_s"].to_list() == slow["finish_s"].to_list()  # fast-forward = step by step


# ---- scoring on hand-built pairs ------------------------------------------------------

def _real_frame(rows):
    """rows: (id, tenant, released, sent, [token times])."""
    return pl.DataFrame({
        "request_id": [r[0] for r in rows], "tenant": [r[1] for r in rows],
        "released_s": [r[2] for r in rows], "sent_s": [r[3] for r in rows],
        "first_token_s": [r[4][0] for r in rows], "finish_s": [r[4][-1] for r in rows],
        "delivered_s": [r[4][-1] for r in rows], "completion_tokens": [len(r[4]) for r in rows],
        "output_tokens": [len(r[4]) for r in rows], "status": ["ok"] * len(rows),
        "token_times": [r[4] for r in rows]})


def _sim_frame(rows):
    return pl.DataFrame({
        "request_id": [r[0] for r in rows], "status": ["ok"] * len(rows), "dispatch_s": [r[3] for r in rows],
        "first_token_s": [r[4][0] for r in rows], "finish_s": [r[4][-1] for r in rows],
        "delivered_s": [r[4][-1] for r in rows], "generated_tokens": [len(r[4]) for r in rows],
        "token_times": [r[4] for r in rows]})


def test_compare_computes_relative_errors_per_metric_tenant_and_request():
    # real: released at 0, first token at 1, tokens every 1 s; sim: everything 10 % later
    real_rows = [(i, "a" if i < 2 else "b", 0.0, 0.0, [1.0 + k for k in range(3)]) for i in range(4)]
    sim_rows = [(i, None, 0.0, 0.0, [1.1 * (1.0 + k) for k in range(3)]) for i in range(4)]
    trace = make_trace([(0.0, 10, 3)] * 4, tenants=["a", "a", "b", "b"], slo_e2e_s=[3.1, 3.1, 3.1, 3.5])
    score = compare(_real_frame(real_rows), _sim_frame(sim_rows), trace)
    g = score["groups"][OVERALL]
    assert g["ttft_s"]["p50"]["real"] == pytest.approx(1.0)
    assert g["ttft_s"]["p50"]["err"] == pytest.approx(0.1)
    assert g["e2e_s"]["p99"]["err"] == pytest.approx(0.1)
    assert g["tpot_s"]["mean"]["err"] == pytest.approx(0.1)
    assert g["itl_s"]["p50"]["real"] == pytest.approx(1.0) and g["itl_s"]["p50"]["err"] == pytest.approx(0.1)
    assert math.isnan(g["queue_wait_s"]["p50"]["err"])  # 0 real wait: relative error undefined
    assert score["groups"]["b"]["e2e_s"]["mean"]["err"] == pytest.approx(0.1)
    assert score["paired"]["e2e_s"]["median_abs"] == pytest.approx(0.1)
    assert score["paired"]["e2e_s"]["mean_signed"] == pytest.approx(0.1)
    # SLO: real e2e 3.0 meets 3.1 and 3.5; sim 3.3 misses 3.1, meets 3.5 (one request of four)
    assert score["slo"][OVERALL]["real"] == 1.0 and score["slo"][OVERALL]["sim"] == 0.25
    assert score["slo"]["b"]["sim"] == 0.5 and score["slo"][OVERALL]["diff_pts"] == pytest.approx(-75)
    assert score["fairness"]["jain_e2e_mean"]["real"] == pytest.approx(1.0)
    assert score["requests"]["compared"] == 4


def test_only_requests_completed_on_both_sides_are_compared():
    real = _real_frame([(0, "a", 0.0, 0.0, [1.0, 2.0]), (1, "a", 0.0, 0.0, [5.0, 6.0])])
    real = real.with_columns(pl.Series("status", ["ok", "error"]))
    sim = _sim_frame([(0, None, 0.0, 0.0, [1.0, 2.0]), (1, None, 0.0, 0.0, [1.0, 2.0])])
    score = compare(real, sim, make_trace([(0.0, 1, 2)] * 2, tenants=["a", "a"]))
    assert score["requests"]["compared"] == 1 and score["requests"]["real_errors"] == 1
    assert score["groups"][OVERALL]["e2e_s"]["mean"]["err"] == 0.0


def test_spread_is_the_mean_pairwise_relative_difference_of_real_runs():
    runs = [{"groups": {OVERALL: {m: {k: {"real": v, "sim": 1.0, "err": rel_err(1.0, v)} for k in ("mean", "p50", "p90", "p99")}
                                   for m in ("ttft_s", "tpot_s", "itl_s", "e2e_s", "queue_wait_s")}}}
            for v in (1.0, 1.1, 1.2)]
    sp = spread(runs)[OVERALL]["e2e_s"]["p50"]
    expect = np.mean([0.1 / 1.05, 0.2 / 1.1, 0.1 / 1.15])
    assert sp == pytest.approx(expect)
    agg = aggregate(runs)
    cell = agg["groups"][OVERALL]["e2e_s"]["p50"]
    assert cell["real"] == pytest.approx(1.1) and cell["spread"] == pytest.approx(expect)
    assert cell["abs_err"] == pytest.approx(np.mean([0.0, 0.1 / 1.1, 0.2 / 1.2]))
    assert math.isnan(spread(runs[:1])[OVERALL]["e2e_s"]["p50"])
    rows = target_check(agg, {("e2e_s", "p50"): 0.1})
    assert rows[0]["met"] and rows[0]["within_spread"]


def test_jain_and_bounds():
    assert jain([1.0, 1.0, 1.0]) == pytest.approx(1.0)
    assert jain([1.0, 0.0, 0.0]) == pytest.approx(1 / 3)
    assert parse_bounds("e2e:p50=0.25, ttft:p99=50%") == {("e2e_s", "p50"): 0.25, ("ttft_s", "p99"): 0.5}
    with pytest.raises(ValueError, match="METRIC:STAT=VALUE"):
        parse_bounds("e2e=0.2")
    with pytest.raises(ValueError, match="not a number"):
        parse_bounds("e2e:p50=x")


# ---- the whole pipeline on a mock engine, and the CLI's error paths ---------------------------

def test_run_validation_pipeline_writes_report_json_and_parquet(tmp_path):
    from driftsim.validation.plan import ValidationPlan
    from driftsim.validation.run import run_validation
    from driftsim.validation.report import write_outputs

    client = client_for(MockEngine(ttft_s=0.01, tpot_s=0.002))
    facts = read_server_facts(client, max_num_seqs=8, max_num_batched_tokens=256)
    traces = [(load, make_trace([(0.01 * i / load, 20 + i, 3 + i % 4) for i in range(8)],
                                tenants=["a", "b"] * 4, slo_e2e_s=[1.0] * 8)) for load in (0.5, 1.0)]
    said = []
    plan = ValidationPlan(repeat=2, warmup=False, overhead_s=0.001)
    res = run_validation(plan, client=client, facts=facts, cost=linear_cost(), traces=traces, capacity=10.0,
                         calibration=traces[0][1], progress=said.append)
    assert [lv.load for lv in res.levels] == [0.5, 1.0]
    # the repeats go round the levels, so a server drifting over the session shows in the spread
    assert [m.split(" (")[0] for m in said if ": replay " in m] == [
        "load 0.5: replay 1 of 2", "load 1: replay 1 of 2", "load 0.5: replay 2 of 2", "load 1: replay 2 of 2"]
    assert all(len(lv.real) == len(lv.sim) == len(lv.scores) == 2 for lv in res.levels)
    assert res.pooled is not None and res.pooled.trace.height == 16
    assert res.calibration["requests"] == 8
    assert all(math.isfinite(v) for v in res.calibration["correction"]["values_s"])
    cell = res.levels[0].aggregate["groups"][OVERALL]["e2e_s"]["p50"]
    assert cell["real"] > 0 and cell["sim"] > 0 and math.isfinite(cell["spread"])
    paths = write_outputs(res, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["levels"][1]["aggregate"]["groups"]["b"]["ttft_s"]["p99"]["real"] > 0
    assert "all levels" in data["targets"]
    real = pl.read_parquet(paths["real"])
    assert real.height == 32 and set(real["repeat"]) == {0, 1} and set(real["load"]) == {0.5, 1.0}
    sim = pl.read_parquet(paths["sim"])
    assert sim.height == 32 and sim["token_times"].list.len().sum() == real["token_times"].list.len().sum()
    page = paths["html"].read_text()
    assert "plotly" in page and "load 0.5" in page and "Figures to reach" in page


def test_loads_are_placed_against_the_calibrated_capacity(tmp_path):
    """After calibration the levels' rates are rescaled to the same fractions of the calibrated simulator's
    capacity (asked of the calibrated cost model), the factor is saved, and a re-score replays the same
    traces; with ``capacity_from="profile"`` they stay where the profile put them."""
    from driftsim.validation.plan import ValidationPlan
    from driftsim.validation.rescore import rescore
    from driftsim.validation.run import run_validation
    from driftsim.validation.server_steps import StepCorrection

    client = client_for(MockEngine(ttft_s=0.01, tpot_s=0.002))
    facts = read_server_facts(client, max_num_seqs=8, max_num_batched_tokens=256)
    base = make_trace([(0.01 * i, 20 + i, 3 + i % 4) for i in range(8)], tenants=["a", "b"] * 4)
    asked = []

    def capacity_of(cost, engine):
        asked.append(cost)
        return 4.0  # the calibrated simulator's capacity: less than the profile's 10 req/s

    runs = {}
    for how in ("calibration", "profile"):
        plan = ValidationPlan(warmup=False, overhead_s=0.001, capacity_from=how, out=tmp_path / how)
        runs[how] = run_validation(plan, client=client, facts=facts, cost=linear_cost(), traces=[(0.5, base)],
                                   capacity=10.0, calibration=base, capacity_of=capacity_of)
    assert len(asked) == 1 and isinstance(asked[0], StepCorrection)  # asked once, of the calibrated model
    placed, kept = runs["calibration"], runs["profile"]
    assert placed.capacity_rps == 4.0 and kept.capacity_rps == 10.0
    assert placed.levels[0].trace["arrival_s"].to_list() == pytest.approx((base["arrival_s"] * 2.5).to_list())
    assert kept.levels[0].trace["arrival_s"].to_list() == pytest.approx(base["arrival_s"].to_list())
    assert any("calibrated simulator's capacity, 4.00 req/s (the profile's alone: 10.00" in n for n in placed.notes)
    again = rescore(tmp_path / "calibration", cost=linear_cost())
    assert again.levels[0].trace["arrival_s"].to_list() == placed.levels[0].trace["arrival_s"].to_list()
    assert again.capacity_rps == 4.0 and any("4.00 req/s" in n for n in again.notes)
    from driftsim.validation.plan import ConfigError

    with pytest.raises(ConfigError, match="--capacity-from"):
        ValidationPlan(capacity_from="server")


def test_cli_fails_fast_on_an_unreachable_endpoint(tmp_path):
    from typer.testing import CliRunner

    from driftsim.cli.validate_cmds import validate
    from driftsim.profiling.server import free_port

    app = __import__("typer").Typer()
    app.command()(validate)
    runner = CliRunner()
    res = runner.invoke(app, ["--endpoint", f"http://127.0.0.1:{free_port()}", "--profile", "l4-qwen1.5-1.8b-chat-linear",
                              "--out", str(tmp_path)])
    assert res.exit_code == 2
    assert "cannot reach" in res.output and "is the server running" in res.output
    res = runner.invoke(app, ["--profile", "l4-qwen1.5-1.8b-chat-linear"])
    assert res.exit_code == 2 and "exactly one of --endpoint" in res.output
    res = runner.invoke(app, ["--endpoint", "http://x", "--profile", "l4-qwen1.5-1.8b-chat-linear", "--loads", "0.5,-1"])
    assert res.exit_code == 2 and "--loads" in res.output
    res = runner.invoke(app, ["--endpoint", "http://x", "--profile", "l4-qwen1.5-1.8b-chat-linear", "--check", "e2e=1"])
    assert res.exit_code == 2 and "METRIC:STAT=VALUE" in res.output
    res = runner.invoke(app, ["--endpoint", "http://x", "--profile", "l4-qwen1.5-1.8b-chat-linear",
                              "--server-arg=--num-gpu-blocks-override=48"])
    assert res.exit_code == 2 and "--server-arg is passed to a server driftsim launches" in res.output


def _server_replay(truth, eng, *, seed=0):
    """A "real" replay frame made by the simulator with a known server (``truth``), light then heavy."""
    rng = np.random.default_rng(seed)
    light = np.cumsum(rng.exponential(0.25, 40))
    heavy = light[-1] + 1 + np.cumsum(rng.exponential(0.01, 50))
    rows = [(float(t), int(rng.integers(16, 200)), int(rng.integers(10, 60))) for t in np.concatenate([light, heavy])]
    trace = make_trace(rows)
    real = simulate_replay(trace, cost=truth, engine=eng).requests
    real = real.rename({"generated_tokens": "completion_tokens"}).with_columns(
        pl.col("status").cast(pl.String), pl.col("arrival_s").alias("released_s"), pl.col("arrival_s").alias("sent_s"))
    return trace, real


def test_observed_steps_are_the_engine_steps():
    from driftsim.validation.server_steps import observed_steps

    eng = EngineConfig(max_num_seqs=16, max_num_batched_tokens=512, block_size=16, num_gpu_blocks=2000, max_model_len=1024)
    trace, real = _server_replay(linear_cost(), eng)
    ends = simulate_replay(trace, cost=linear_cost(), engine=eng).step_ends[0]
    steps = observed_steps(real)
    assert steps.height > 200
    i = np.searchsorted(ends, steps["end_s"].to_numpy())
    assert (ends[i] == steps["end_s"].to_numpy()).all(), "every recovered step ends at an engine step's end"
    assert np.allclose(steps["duration_s"].to_numpy(), ends[i] - ends[i - 1], rtol=0, atol=1e-12)
    assert (steps["decode_seqs"] >= 1).all() and steps["decode_seqs"].max() <= 16


class _RecordingCost:
    """A cost model that keeps every batch it timed (with fast-forward off: one per step, in order)."""

    def __init__(self, inner):
        self.inner = inner
        self.batches = []

    def step_time(self, batch):
        self.batches.append(batch)
        return self.inner.step_time(batch)

    def decode_run_times(self, num_seqs, ctx_tokens, k):
        raise AssertionError("fast-forward is off")

    def kv_capacity_blocks(self, block_size):
        return self.inner.kv_capacity_blocks(block_size)

    def describe(self):
        return self.inner.describe()


def _chunking_replay(truth, *, budget=256, seed=3):
    """A "real" replay by the simulator whose prompts (16-600 tokens) are often split over steps."""
    eng = EngineConfig(max_num_seqs=16, max_num_batched_tokens=budget, block_size=16, num_gpu_blocks=4000,
                       max_model_len=1024, fast_forward=False)
    rng = np.random.default_rng(seed)
    light = np.cumsum(rng.exponential(0.3, 40))
    heavy = light[-1] + 1 + np.cumsum(rng.exponential(0.02, 60))
    rows = [(float(t), int(rng.integers(16, 600)), int(rng.integers(10, 60))) for t in np.concatenate([light, heavy])]
    trace = make_trace(rows)
    res = simulate_replay(trace, cost=truth, engine=eng)
    real = res.requests.rename({"generated_tokens": "completion_tokens"}).with_columns(
        pl.col("status").cast(pl.String), pl.col("arrival_s").alias("released_s"), pl.col("arrival_s").alias("sent_s"))
    return eng, trace, real, res.step_ends[0]


def test_scheduled_steps_recover_every_batch_with_its_prefill_chunks():
    """Replaying the scheduler on the observed step boundaries gives each step's true batch, hidden
    prefill chunks included, where counting first tokens (observed_steps) gets the prefills wrong."""
    from driftsim.validation.server_steps import observed_steps, scheduled_steps

    rec = _RecordingCost(linear_cost())
    eng, _, real, ends = _chunking_replay(rec)
    assert len(rec.batches) == len(ends)
    steps = scheduled_steps(real, max_num_batched_tokens=eng.max_num_batched_tokens, max_num_seqs=eng.max_num_seqs,
                            cost=linear_cost())  # to time the steps that deliver nothing (an idle engine, a long prompt)
    assert steps.height > 300 and steps["consistent"].all()
    i = np.searchsorted(ends, steps["end_s"].to_numpy())
    assert (ends[i] == steps["end_s"].to_numpy()).all()
    truth = [rec.batches[k] for k in i]
    for col, attr in (("decode_seqs", "decode_seqs"), ("decode_ctx_tokens", "decode_ctx_tokens"),
                      ("prefill_seqs", "prefill_seqs"), ("prefill_tokens", "prefill_tokens"),
                      ("prefill_attn_tokens", "prefill_attn_tokens")):
        assert steps[col].to_list() == pytest.approx([getattr(b, attr) for b in truth]), col
    hidden = sum(1 for b, n in zip(truth, steps["prefill_tokens"].to_list()) if b.prefill_tokens and n)
    obs = observed_steps(real).join(steps, on="end_s", suffix="_sched")
    wrong = obs.filter(pl.col("prefill_tokens") != pl.col("prefill_tokens_sched")).height
    assert hidden > 50 and wrong > 10  # chunks are common here, and first tokens alone mis-count them


def test_scheduled_steps_start_a_cached_prompt_after_its_cached_prefix():
    """With prefix caching a request computes only the part of its prompt the cache lacks, attending to
    the cached part. Given each request's ``cached_tokens``, the replayed scheduler finds every step's
    true batch; without them it charges the cached prefixes again as prefill work (the speed of a
    shared-prompt replay was measured 3x off so)."""
    from driftsim.validation.server_steps import scheduled_steps

    rec = _RecordingCost(linear_cost())
    eng = EngineConfig(max_num_seqs=16, max_num_batched_tokens=256, block_size=16, num_gpu_blocks=4000,
                       max_model_len=1024, fast_forward=False)
    rng = np.random.default_rng(11)
    times = np.concatenate([np.cumsum(rng.exponential(0.3, 30)), 10 + np.cumsum(rng.exponential(0.02, 50))])
    rows = [(float(t), int(rng.integers(200, 500)), int(rng.integers(10, 40))) for t in times]
    system = [int(rng.integers(0, 3)) for _ in rows]  # one of three 192-token system prompts (12 blocks of 16)
    ids = [[1000 * k + b for b in range(12)] + [10**6 + 100 * i + b for b in range(40)] for i, k in enumerate(system)]
    trace = make_trace(rows, prefix_ids=[x[: -(-(n + m) // 16)] for x, (_, n, m) in zip(ids, rows)],
                       prefix_block_tokens=[16] * len(rows))
    res = simulate_replay(trace, cost=rec, engine=eng)
    real = res.requests.rename({"generated_tokens": "completion_tokens"}).with_columns(
        pl.col("status").cast(pl.String), pl.col("arrival_s").alias("released_s"), pl.col("arrival_s").alias("sent_s"))
    assert real["cached_tokens"].sum() >= 0.3 * real["input_tokens"].sum()  # most prompts found their system prompt
    ends = res.step_ends[0]

    def recovered(frame):
        return scheduled_steps(frame, max_num_batched_tokens=256, max_num_seqs=16, cost=linear_cost())

    steps = recovered(real)
    assert steps.height > 200 and steps["consistent"].all()
    truth = [rec.batches[k] for k in np.searchsorted(ends, steps["end_s"].to_numpy())]
    for col in ("decode_seqs", "decode_ctx_tokens", "prefill_seqs", "prefill_tokens", "prefill_attn_tokens"):
        assert steps[col].to_list() == pytest.approx([getattr(b, col) for b in truth]), col
    blind = recovered(real.drop("cached_tokens"))
    truth = [rec.batches[k] for k in np.searchsorted(ends, blind["end_s"].to_numpy())]
    wrong = sum(n != b.prefill_tokens for n, b in zip(blind["prefill_tokens"].to_list(), truth))
    print("steps with a wrong prefill when the cache is ignored:", wrong, "of", blind.height,
          "; unexplained:", int((~blind["consistent"]).sum()))
    assert wrong >= 20 and (~blind["consistent"]).sum() >= 10


def test_scheduled_steps_flag_what_the_scheduler_does_not_explain():
    """A request that reached the engine later than its send time says (a slow front end) is not
    where the replayed scheduler puts it: those steps are flagged (their batches would be wrong),
    the state is set back to what was seen, and the steps after them are recovered again."""
    from driftsim.validation.server_steps import scheduled_steps

    eng, _, real, _ = _chunking_replay(linear_cost())
    queued = real.sort("sent_s")["request_id"][70]  # in the heavy segment, where requests queue

    def recovered(shift_s):
        moved = real.with_columns(pl.when(pl.col("request_id") == queued).then(pl.col("sent_s") - shift_s)
                                  .otherwise(pl.col("sent_s")).alias("sent_s"))
        return scheduled_steps(moved, max_num_batched_tokens=eng.max_num_batched_tokens,
                               max_num_seqs=eng.max_num_seqs, cost=linear_cost())

    assert recovered(0.0)["consistent"].all()
    steps = recovered(0.02)
    bad = steps.filter(~pl.col("consistent"))
    assert 1 <= bad.height <= 20 and bad.height < 0.02 * steps.height
    assert bad["end_s"].max() - bad["end_s"].min() < 1.0
    assert steps.filter(pl.col("end_s") > bad["end_s"].max())["consistent"].all()


def test_step_speed_tells_a_server_that_changed_speed():
    """A replay measured against the cost model that made it runs at x1.00; a server 10 % slower than
    the model reads x1.10, for decode and mixed steps alike; and the level records it per replay."""
    from driftsim.validation.calibration import replay_speed
    from driftsim.validation.levels import LevelResult
    from driftsim.validation.server_steps import scheduled_steps, step_speed
    from tests.factories import COEF

    slow = linear_cost(**{k: 1.1 * v for k, v in COEF.items()})
    for truth, expect in ((linear_cost(), 1.0), (slow, 1.1)):
        eng, trace, real, _ = _chunking_replay(truth)
        speed = step_speed(scheduled_steps(real, max_num_batched_tokens=eng.max_num_batched_tokens,
                                           max_num_seqs=eng.max_num_seqs, cost=truth), linear_cost())
        assert speed["decode"] == pytest.approx(expect, rel=1e-6) and speed["mixed"] == pytest.approx(expect, rel=1e-6)
        assert speed["busy"] == pytest.approx(expect, rel=1e-6)
        assert speed["decode_steps"] > 300 and speed["mixed_steps"] > 50
    lv = LevelResult(load=1.0, rate_rps=1.0, trace=trace)
    lv.add_replay(real, 0, before={}, after={}, gateway_holds=False, overhead_s=0.0, cost=linear_cost(), engine=eng,
                  gateway=GatewayConfig())
    assert lv.speed == [replay_speed(real, cost=linear_cost(), engine=eng, overhead_s=0.0)]
    assert lv.speed[0]["decode"] == pytest.approx(1.1, rel=0.02)


def test_step_speed_shows_a_server_that_slowed_within_one_replay():
    """Steps that ran as modelled for the first half of a replay's busy time and 20 % slower after it
    read x1.00 over the first two quarters and x1.20 over the last two; the level line prints the span."""
    from types import SimpleNamespace
    from driftsim.costmodel.batch import StepBatch
    from driftsim.validation.server_steps import STEP_COLUMNS, step_speed
    from driftsim.validation.report import speed_text

    cost = linear_cost()
    steps = pl.DataFrame([(float(i), 0.0, 8, 2400, 0, 0, 0.0, 0.0) for i in range(440)],
                         schema=STEP_COLUMNS, orient="row")
    modelled = cost.step_time(StepBatch(decode_seqs=8, decode_ctx_tokens=2400))
    # 240 steps as modelled, then 200 that take 1.2x as long: each half of the busy time is 240 steps' worth
    steps = steps.with_columns(pl.Series("duration_s", np.where(np.arange(440) < 240, 1.0, 1.2) * modelled))
    speed = step_speed(steps, cost)
    assert speed["busy_quarters"] == pytest.approx([1.0, 1.0, 1.2, 1.2], rel=1e-3)
    assert speed["busy"] == pytest.approx(480 / 440, rel=1e-9)
    assert "x1.00-1.20 (busy time over a replay's quarters)" in speed_text(SimpleNamespace(speed=[speed]))


def test_at_server_speed_the_drift_is_taken_out_of_the_error():
    """A server 10 % slower than the model: the held-out sim is ~9 % fast on TPOT and E2E; simulated
    again at the replay's measured speed the error all but vanishes (the structure is exact here),
    per level and pooled, and the targets table carries it beside the judged error."""
    from driftsim.validation.levels import LevelResult, pool_levels, session_speed
    from driftsim.validation.report import variant_aggregates
    from tests.factories import COEF

    slow = linear_cost(**{k: 1.1 * v for k, v in COEF.items()})
    eng, trace, real, _ = _chunking_replay(slow)
    levels = []
    for load in (0.5, 1.0):
        lv = LevelResult(load=load, rate_rps=1.0, trace=trace)
        lv.add_replay(real, 0, before={}, after={}, gateway_holds=False, overhead_s=0.0, cost=linear_cost(),
                      engine=eng, gateway=GatewayConfig())
        lv.wall_s.append(1.0)
        levels.append(lv)
    lv = levels[0]
    at_speed = lv.variants[AT_SERVER_SPEED]
    held, matched = lv.aggregate["groups"][OVERALL], at_speed.aggregate["groups"][OVERALL]
    assert at_speed.factors == [pytest.approx(1.1, rel=0.02)]
    for m in ("tpot_s", "e2e_s"):
        assert held[m]["p50"]["err"] < -0.07
        assert matched[m]["p50"]["abs_err"] < 0.01
    # held out: each replay at the other replays' speed (here the other level's, the same server)
    session_speed(levels, gateway_holds=False, overhead_s=0.0, cost=linear_cost(), engine=eng, gateway=GatewayConfig())
    assert lv.variants[SESSION_SPEED].factors == at_speed.factors == levels[1].variants[SESSION_SPEED].factors
    assert lv.variants[SESSION_SPEED].aggregate["groups"][OVERALL]["e2e_s"]["p50"]["abs_err"] < 0.01
    pooled = pool_levels(levels, overhead_s=0.0)
    for name in (AT_SERVER_SPEED, SESSION_SPEED):
        v = pooled.variants[name]
        assert len(v.scores) == 1 and v.aggregate["groups"][OVERALL]["tpot_s"]["p50"]["abs_err"] < 0.01
    rows = target_check(lv.aggregate, variants=variant_aggregates(lv))
    assert all(r["at_server_speed_abs_err"] < r["abs_err"] and r["session_speed_abs_err"] < r["abs_err"]
               for r in rows if r["metric"] in ("tpot_s", "e2e_s"))


def test_session_speed_never_uses_the_scored_replay():
    """Three replays whose servers ran at x1.0, x1.2 and x1.4: each is re-simulated at the mean of
    the other two, never at its own."""
    from driftsim.validation.levels import LevelResult, session_speed

    eng, trace, real, _ = _chunking_replay(linear_cost())
    lv = LevelResult(load=1.0, rate_rps=1.0, trace=trace)
    lv.add_replay(real, 0, before={}, after={}, gateway_holds=False, overhead_s=0.0, cost=linear_cost(), engine=eng,
                  gateway=GatewayConfig())
    lv.real += [lv.real[0], lv.real[0]]
    lv.speed = [{"busy": 1.0}, {"busy": 1.2}, {"busy": 1.4}]
    session_speed([lv], gateway_holds=False, overhead_s=0.0, cost=linear_cost(), engine=eng, gateway=GatewayConfig())
    assert lv.variants[SESSION_SPEED].factors == [pytest.approx(1.3), pytest.approx(1.2), pytest.approx(1.1)]
    assert all(s is not None for s in lv.variants[SESSION_SPEED].scores)


def test_engine_queue_time_counts_from_the_step_end_as_vllm_does():
    """A request arriving mid-step is taken in at that step's end: with room it is scheduled at once
    (vLLM's queue time 0, though the simulator's queue_wait covers the step's remainder); with no
    room (one sequence at a time) it waits from that step end until the running request finishes."""
    from driftsim.validation.replay_sim import engine_queue_times

    trace = make_trace([(0.0, 64, 40), (0.0123, 32, 4)])
    for seqs in (8, 1):
        eng = EngineConfig(max_num_seqs=seqs, max_num_batched_tokens=256, block_size=16, num_gpu_blocks=100,
                           max_model_len=512)
        res = simulate_replay(trace, cost=linear_cost(), engine=eng)
        q = engine_queue_times(res)
        late = res.requests.row(1, named=True)
        ends = res.step_ends[0]
        taken_in = float(ends[np.searchsorted(ends, late["arrival_s"])])
        assert late["queue_wait_s"] > 0 and q[0] == 0.0
        if seqs == 8:
            assert q[1] == 0.0 and late["scheduled_s"] == taken_in
        else:
            first = res.requests.row(0, named=True)
            assert late["scheduled_s"] >= first["finish_s"] - 1e-12
            assert q[1] == pytest.approx(late["scheduled_s"] - taken_in) and q[1] > 0.1


def test_engine_queue_time_starts_at_the_gateway_dispatch_and_ends_at_the_engines_scheduling():
    """A capped gateway or a micro-batch worker holds requests before the engine sees them: that wait is
    the gateway's, not the engine's; a micro-batch worker's ``scheduled_s`` is its batch's start, not the
    engine's first scheduling of each request."""
    from driftsim.validation.replay_sim import engine_queue_times

    trace = make_trace([(0.0, 64, 30)] * 6)
    capped = simulate_replay(trace, cost=linear_cost(), engine=EngineConfig(
        max_num_seqs=8, max_num_batched_tokens=512, block_size=16, num_gpu_blocks=100, max_model_len=512),
        gateway=GatewayConfig(max_outstanding=2))
    assert capped.requests["queue_wait_s"].max() > 0.1  # held at the gateway
    assert engine_queue_times(capped).max() == 0.0  # dispatched as a slot frees, scheduled at once
    res = simulate_replay(trace, cost=linear_cost(), engine=EngineConfig(
        mode="microbatch", max_num_seqs=4, max_num_batched_tokens=512, block_size=16, num_gpu_blocks=100,
        max_model_len=512, batch_size=8, batch_wait_s=0.05))
    mb = res.requests
    assert mb["scheduled_s"].n_unique() == 1  # the batch's start, after the worker's 0.05 s wait
    assert (mb["scheduled_s"] - mb["dispatch_s"]).min() > 0.04
    assert mb["engine_scheduled_s"].n_unique() == 2  # four fit the engine, two wait for a slot
    q = sorted(engine_queue_times(res))
    assert q[:4] == [0.0] * 4 and min(q[4:]) > 0.1


def test_scaled_cost_scales_every_step_and_fast_forwarded_runs_alike():
    from driftsim.costmodel.batch import StepBatch
    from driftsim.validation.calibration import ScaledCost

    base = linear_cost()
    cost = ScaledCost(base, 1.25)
    b = StepBatch(decode_seqs=3, decode_ctx_tokens=300)
    assert cost.step_time(b) == base.step_time(b) * 1.25
    run = cost.decode_run_times(3, 300, 4)
    assert run[0] == cost.step_time(b) and np.all(run == base.decode_run_times(3, 300, 4) * 1.25)
    with pytest.raises(ValueError, match="speed factor"):
        ScaledCost(base, float("nan"))


def test_a_level_whose_server_moved_since_its_calibration_is_flagged():
    from driftsim.validation.levels import LevelResult, drift_notes

    def level(load, *decode):
        lv = LevelResult(load=load, rate_rps=1.0, trace=make_trace([(0.0, 10, 2)]))
        lv.speed = [{"decode": x, "decode_steps": 100, "mixed": x, "mixed_steps": 10} for x in decode]
        return lv

    calib = {"speed": {"decode": 0.97}}
    notes = drift_notes([level(0.3, 0.96, 0.99, 0.98), level(1.2, 0.85, 0.86, 0.84)], calib)
    assert len(notes) == 1 and notes[0].startswith("load 1.2:") and "x0.88" in notes[0]
    assert drift_notes([level(1.2, 0.85)], None) == []  # no calibration: nothing to compare with


#: What a synthetic "server" adds to the profile's decode step at 0, 1, 2, 4, 8 and 16 decoding sequences
#: (``count_knots(16)``): uneven, as a real server's correction is, but never so much less at a larger batch
#: that the step gets cheaper with more work (with ``per_decode_seq_s=0.001``).
SERVER_ADDED = [0.003, 0.003, 0.004, 0.0035, 0.002, 0.006]


def test_calibration_recovers_a_mixed_step_correction_under_chunked_prefill():
    """With prompts split over steps the mixed-step term is still found (8 ms), from the whole batches."""
    from driftsim.validation.server_steps import StepCorrection, count_knots
    from driftsim.validation.calibration import calibrate_server

    cost = linear_cost(overhead_s=0.01, per_decode_seq_s=0.001)
    knots, added = count_knots(16), SERVER_ADDED
    eng, trace, real, _ = _chunking_replay(StepCorrection(cost, knots, added, prefill_step_s=0.008))
    fit = calibrate_server(real, trace, cost=cost, engine=eng)
    assert fit["steps_recovered"]["consistent"] == fit["steps_recovered"]["all"] > 300
    assert fit["prefill_step_s"] == pytest.approx(0.008, abs=5e-4)
    assert fit["prefill_factor"] == pytest.approx(1.0, abs=0.01)  # its prefill work runs as the profile says,
    assert fit["mixed_factor"] == pytest.approx(1.0, abs=0.01)  # alone and beside decodes
    for k, v in zip(fit["knots"], fit["values_s"]):
        assert v == pytest.approx(added[knots.index(k)], abs=2e-4), (k, fit)


@pytest.mark.parametrize("factor, mixed", [(0.8, 1.5), (1.3, 1.3)])
def test_calibration_recovers_a_server_whose_prefills_run_at_another_speed(factor, mixed):
    """A server whose prefill work takes ``factor`` times the profile's on an idle engine and ``mixed``
    times beside decoding sequences, plus 5 ms on every mixed step: the factor is found on the
    prefill-only steps, the mixed factor and the constant on the mixed ones, beside the decode
    correction, and the calibrated model times a prefill-only step, a mixed step and a decode run as
    that server does."""
    from driftsim.costmodel.batch import StepBatch
    from driftsim.validation.calibration import calibrate_server, calibrated, fitted_calibration
    from driftsim.validation.server_steps import StepCorrection, count_knots

    cost = linear_cost(overhead_s=0.01, per_decode_seq_s=0.001)
    eng = EngineConfig(max_num_seqs=16, max_num_batched_tokens=512, block_size=16, num_gpu_blocks=2000,
                       max_model_len=1024, fast_forward=False)
    knots, added = count_knots(16), SERVER_ADDED
    server = StepCorrection(cost, knots, added, prefill_step_s=0.005, prefill_factor=factor, mixed_factor=mixed)
    rng = np.random.default_rng(5)  # sparse arrivals (an idle engine prefills each), then a burst
    sparse = np.cumsum(rng.uniform(1.0, 2.0, 20))
    burst = sparse[-1] + 1 + np.cumsum(rng.exponential(0.01, 50))
    trace = make_trace([(float(t), int(rng.integers(16, 480)), int(rng.integers(10, 60)))
                        for t in np.concatenate([sparse, burst])])
    real = simulate_replay(trace, cost=server, engine=eng).requests.rename({"generated_tokens": "completion_tokens"})
    real = real.with_columns(pl.col("status").cast(pl.String), pl.col("arrival_s").alias("released_s"),
                             pl.col("arrival_s").alias("sent_s"))
    fit = calibrate_server(real, trace, cost=cost, engine=eng)
    assert fit["prefill_factor"] == pytest.approx(factor, abs=0.01), fit
    assert fit["mixed_factor"] == pytest.approx(mixed, abs=0.01), fit
    assert fit["prefill_step_s"] == pytest.approx(0.005, abs=5e-4), fit
    assert fit["prefill_steps"] - fit["mixed_steps"] >= 8 and fit["mixed_steps"] >= 8
    model, _ = calibrated(cost, eng, {**fitted_calibration({**fit, "ttft_err": None, "tpot_err": None})})
    for b in (StepBatch(prefill_tokens=300, prefill_seqs=1, prefill_attn_tokens=45150),
              StepBatch(prefill_tokens=200, prefill_seqs=2, prefill_attn_tokens=20100, decode_seqs=6,
                        decode_ctx_tokens=900)):
        rest = StepBatch(decode_seqs=b.decode_seqs, decode_ctx_tokens=b.decode_ctx_tokens)
        # what the prefill adds to the step, as the server adds it (the decode part is the decode fit's)
        assert model.step_time(b) - model.step_time(rest) == pytest.approx(
            server.step_time(b) - server.step_time(rest), rel=0.02), b
    assert np.all(model.decode_run_times(5, 700, 3) == model.inner.decode_run_times(5, 700, 3)
                  + model.correction(5))  # decode runs: no prefill, the factor never touches them


def test_calibration_recovers_a_known_correction_and_the_admission_model():
    from driftsim.validation.server_steps import StepCorrection, count_knots
    from driftsim.validation.calibration import calibrate_server

    cost = linear_cost(overhead_s=0.01, per_decode_seq_s=0.001)
    base = EngineConfig(max_num_seqs=16, max_num_batched_tokens=512, block_size=16, num_gpu_blocks=2000,
                        max_model_len=1024)
    knots = count_knots(16)
    assert knots == [0, 1, 2, 4, 8, 16]
    added = SERVER_ADDED  # the "server": its own step time per batch size
    for asynch in (False, True):
        eng = EngineConfig(**{**base.__dict__, "async_scheduling": asynch})
        trace, real = _server_replay(StepCorrection(cost, knots, added), eng, seed=int(asynch))
        fit = calibrate_server(real, trace, cost=cost, engine=base)
        got = dict(zip(fit["knots"], fit["values_s"]))
        assert 0 not in got and {1, 2, 16} <= set(got)  # no decode-free step has a duration; knots with data kept
        for k, v in got.items():
            assert v == pytest.approx(added[knots.index(k)], abs=2e-4), (k, got)
        assert fit["mean_abs_rel_err"] < 0.01 < fit["profile_mean_abs_rel_err"]
        assert abs(fit["prefill_step_s"]) < 5e-4  # this server adds nothing to mixed steps
        assert fit["prefill_factor"] == pytest.approx(1.0, abs=0.01)  # nor to prefill work
        assert fit["async_scheduling"] is asynch, fit["ttft_err"]


def test_calibration_recovers_a_known_prefill_step_correction():
    """A server that adds 8 ms to every mixed step: the fit finds it on the steps with a prefill,
    the decode correction is unchanged, and a prefill-only step (an idle engine) gets none of it."""
    from driftsim.costmodel.batch import StepBatch
    from driftsim.validation.server_steps import StepCorrection, count_knots, fit_step_correction, observed_steps
    from driftsim.validation.calibration import calibrated

    cost = linear_cost(overhead_s=0.01, per_decode_seq_s=0.001)
    eng = EngineConfig(max_num_seqs=16, max_num_batched_tokens=512, block_size=16, num_gpu_blocks=2000,
                       max_model_len=1024)
    knots, added = count_knots(16), SERVER_ADDED
    _, real = _server_replay(StepCorrection(cost, knots, added, prefill_step_s=0.008), eng)
    steps = observed_steps(real)
    fit = fit_step_correction(steps, cost, max_num_seqs=16)
    assert fit["prefill_steps"] >= 20
    assert fit["prefill_step_s"] == pytest.approx(0.008, abs=5e-4)
    for k, v in zip(fit["knots"], fit["values_s"]):
        assert v == pytest.approx(added[knots.index(k)], abs=2e-4), (k, fit)
    few = fit_step_correction(steps, cost, max_num_seqs=16, min_prefill_steps=10**6)
    assert few["prefill_step_s"] == 0.0 and few["prefill_factor"] == 1.0
    # too few prefill steps of either kind: a factor measured elsewhere (the probes) for both
    given = fit_step_correction(steps, cost, max_num_seqs=16, min_prefill_steps=10**6, prefill_factor=1.3)
    assert (given["prefill_factor"], given["mixed_factor"], given["prefill_factor_from"]) == (1.3, 1.3, "given")
    model, _ = calibrated(cost, eng, {"correction": {k: fit[k] for k in ("knots", "values_s", "prefill_step_s")}})
    mixed = StepBatch(prefill_tokens=100, prefill_seqs=1, prefill_attn_tokens=5050, decode_seqs=4, decode_ctx_tokens=400)
    alone = StepBatch(prefill_tokens=100, prefill_seqs=1, prefill_attn_tokens=5050)
    decode = StepBatch(decode_seqs=4, decode_ctx_tokens=400)
    assert model.step_time(mixed) - cost.step_time(mixed) == pytest.approx(
        model.step_time(decode) - cost.step_time(decode) + fit["prefill_step_s"])
    assert model.step_time(alone) - cost.step_time(alone) == pytest.approx(model.correction(0))


def test_calibration_never_makes_a_decode_step_cheaper_with_more_sequences():
    """Steps measured at a few batch sizes can say that 4 decodes take less than 2 (a server whose 4-sequence
    steps ran 3 ms faster than its 2-sequence ones): the fitted correction pools such knots (isotonic,
    weighted by their steps) instead of reproducing the dip, so the corrected model stays non-decreasing
    in the decode count, and knots that obey physics keep their values."""
    from driftsim.costmodel.batch import StepBatch
    from driftsim.validation.server_steps import StepCorrection, count_knots, fit_step_correction, observed_steps

    cost = linear_cost(overhead_s=0.01, per_decode_seq_s=0.001)
    eng = EngineConfig(max_num_seqs=16, max_num_batched_tokens=512, block_size=16, num_gpu_blocks=2000,
                       max_model_len=1024)
    knots, dip = count_knots(16), [0.003, 0.003, 0.004, 0.0, 0.004, 0.006]
    _, real = _server_replay(StepCorrection(cost, knots, dip), eng)
    fit = fit_step_correction(observed_steps(real), cost, max_num_seqs=16)
    model = StepCorrection(cost, fit["knots"], fit["values_s"])
    times = [model.step_time(StepBatch(decode_seqs=k, decode_ctx_tokens=150 * k)) for k in range(1, 17)]
    assert all(b >= a for a, b in zip(times, times[1:])), times
    got = dict(zip(fit["knots"], fit["values_s"]))
    assert got[1] == pytest.approx(0.003, abs=2e-4) and got[16] == pytest.approx(0.006, abs=2e-4)  # untouched
    server = StepCorrection(cost, knots, dip)
    assert server.step_time(StepBatch(decode_seqs=4, decode_ctx_tokens=600)) < server.step_time(
        StepBatch(decode_seqs=2, decode_ctx_tokens=300))  # the server itself did dip


def test_calibration_never_subtracts_from_a_mixed_step():
    """A server whose mixed steps ran shorter than the profile's decode-only estimate would give a negative
    mixed-step constant, i.e. adding a prefill to decoding sequences would shorten their step: kept at 0."""
    from driftsim.validation.server_steps import StepCorrection, count_knots, fit_step_correction, observed_steps

    cost = linear_cost(overhead_s=0.01, per_decode_seq_s=0.001)
    eng = EngineConfig(max_num_seqs=16, max_num_batched_tokens=512, block_size=16, num_gpu_blocks=2000,
                       max_model_len=1024)
    _, real = _server_replay(StepCorrection(cost, count_knots(16), SERVER_ADDED, prefill_step_s=-0.004), eng)
    fit = fit_step_correction(observed_steps(real), cost, max_num_seqs=16)
    assert fit["mixed_steps"] >= 8 and fit["prefill_step_s"] == 0.0


def test_calibration_follows_a_correction_that_grows_past_the_last_well_seen_batch():
    """A server adding 1.5 ms per decoding sequence, seen mostly at 1-8 sequences and only now and then at
    10-30 (too rarely for knots 16 and 32, 22 steps together): one knot at the largest batch seen takes them,
    so the correction keeps growing there instead of staying flat at 8, whose value would otherwise
    average every larger batch's excess."""
    from driftsim.validation.server_steps import fit_step_correction, predicted

    cost = linear_cost(overhead_s=0.01, per_decode_seq_s=0.001)
    seqs = np.concatenate([np.repeat([1, 2, 4, 8], 60), np.repeat(np.arange(10, 31, 2), 2)])
    steps = pl.DataFrame({"decode_seqs": seqs, "decode_ctx_tokens": 200 * seqs, "prefill_seqs": 0,
                          "prefill_tokens": 0, "prefill_attn_tokens": 0})
    steps = steps.with_columns(duration_s=pl.Series(predicted(steps, cost) + 0.0015 * seqs))
    fit = fit_step_correction(steps, cost, max_num_seqs=32)
    assert fit["knots"] == [1, 2, 4, 8, 30], fit  # 16 and 32 too thin alone, pooled at the largest batch
    for k, v in zip(fit["knots"], fit["values_s"]):
        assert v == pytest.approx(0.0015 * k, abs=3e-4), (k, fit)
    assert fit["mean_abs_rel_err"] < 0.02


def test_microbatch_intake_gap_lets_the_first_request_start_alone():
    """A batch sent as concurrent HTTP requests reaches the engine one by one: the first request
    runs its prefill step alone and the rest join the next step, so its first token comes first."""
    trace = make_trace([(0.0, 200, 20)] * 4)
    base = EngineConfig(mode="microbatch", max_num_seqs=8, max_num_batched_tokens=1024, block_size=16,
                        num_gpu_blocks=400, max_model_len=512, batch_size=4, batch_wait_s=0.0)
    together = simulate_replay(trace, cost=linear_cost(), engine=base).requests
    assert together["first_token_s"].n_unique() == 1  # one generate(): one prefill step for all four
    staggered = simulate_replay(trace, cost=linear_cost(), engine=replace(base, batch_intake_gap_s=1e-4)).requests
    ft = staggered.sort("request_id")["first_token_s"].to_list()
    assert ft[0] < ft[1] == ft[2] == ft[3]
    assert staggered["delivered_s"].n_unique() == 1  # still handed back together, at the batch's end
    assert staggered["finish_s"].max() == staggered["delivered_s"][0]


def test_replay_engine_takes_the_median_send_gap_within_real_batches():
    engine = EngineConfig(mode="microbatch", max_num_seqs=8, max_num_batched_tokens=256, block_size=16,
                          num_gpu_blocks=400, max_model_len=512)
    real = pl.DataFrame({"batch": [0, 0, 0, 1, 1, None], "sent_s": [1.0, 1.0003, 1.0007, 5.0, 5.0004, None]})
    assert replay_engine(engine, real).batch_intake_gap_s == pytest.approx(0.0004)
    assert replay_engine(replace(engine, mode="continuous"), real).batch_intake_gap_s == 0.0
    assert replay_engine(engine, real.with_columns(pl.lit(0).alias("batch")).head(1)).batch_intake_gap_s == 0.0
