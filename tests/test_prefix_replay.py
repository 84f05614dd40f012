"""Prefix identity and sessions on the real side: the prompts a replay sends share exactly the
prefixes the trace names, session turns are sent closed-loop, and the prefix cache's hit rate is
set real beside simulated (the real engine itself: tests/test_prefix_engine.py)."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import polars as pl

from driftsim.profiling.gateway import ReplayGateway, StreamingClient
from driftsim.profiling.prompts import FIRST_ID, prompt_ids, replay_seed, trace_prompt_ids
from driftsim.profiling.server_facts import ServerFacts, engine_config
from driftsim.profiling.trace_replay import replay_requests
from driftsim.sim.policies import make_policy
from driftsim.traces.synth import LengthDist, TenantLoad, generate
from driftsim.validation.levels import compare_engine, sim_prefix_hits
from driftsim.validation.replay_sim import simulate_replay
from tests.factories import linear_cost
from tests.test_validation import MockEngine, client_for


def _prompt(rid, n, ids, bt=16, seed=0):
    return trace_prompt_ids(rid, n, ids, bt, vocab_size=8192, seed=seed)


def test_equal_prefix_ids_give_equal_tokens_and_the_rest_differs():
    a, b = _prompt(1, 70, [11, 12, 13]), _prompt(2, 90, [11, 12, 99])
    assert len(a) == 70 and len(b) == 90
    assert a[:32] == b[:32]  # the first two ids are equal: 2 x 16 tokens
    assert a[32:48] != b[32:48]  # the third differs
    assert a[48:70] != b[48:70]  # each request's own tokens
    assert min(a + b) >= FIRST_ID and max(a + b) < 8192


def test_the_last_id_may_be_cut_short_by_the_prompt_and_ids_do_not_depend_on_the_request():
    short, full = _prompt(1, 40, [5, 6, 7]), _prompt(9, 48, [5, 6, 7])
    assert short == full[:40]  # 2.5 blocks of the same ids


def test_without_prefix_ids_the_prompt_is_the_random_one_and_seeds_salt_every_token():
    assert _prompt(3, 50, None) == prompt_ids(3, 50, vocab_size=8192, seed=0)
    s1, s2 = replay_seed(0, 0, 0), replay_seed(0, 0, 1)
    assert s1 != s2 and replay_seed(0, 0, 0) == s1
    x, y = _prompt(1, 32, [5, 6], seed=s1), _prompt(1, 32, [5, 6], seed=s2)
    assert sum(u == v for u, v in zip(x, y)) < 4  # another replay shares no block with this one


def _shared_trace(n=12, *, turns=None, think_s=0.0, seed=3) -> pl.DataFrame:
    load = TenantLoad("t", 50.0, input=LengthDist.constant(40), output=LengthDist.constant(3), system_prompts=2,
                      system_prompt_tokens=64, turns=turns, think_s=think_s)
    return generate([load], num_requests=n, seed=seed)


class _Recorder(MockEngine):
    """The mock engine, keeping every prompt it was sent and when."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.prompts: list[list[int]] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/completions":
            self.prompts.append(json.loads(request.content)["prompt"])
        return await super().__call__(request)


def _replay(trace: pl.DataFrame, engine) -> ReplayGateway:
    gw = ReplayGateway(replay_requests(trace), policy=make_policy("fifo"), vocab_size=8192, seed=1,
                       client=StreamingClient(client_for(engine), model="tiny", clock=lambda: 0.0))
    asyncio.run(gw.run())
    return gw


def test_a_replay_sends_prompts_sharing_the_system_prompt_the_trace_names():
    trace = _shared_trace()
    engine = _Recorder()
    _replay(trace, engine)
    assert len(engine.prompts) == trace.height
    sent = {tuple(p) for p in engine.prompts}
    heads: dict[tuple, set] = {}
    for rid, n, ids in trace.select("request_id", "input_tokens", "prefix_ids").iter_rows():
        expected = trace_prompt_ids(rid, n, ids, 16, vocab_size=8192, seed=1)
        assert tuple(expected) in sent  # sent as token ids, exactly
        heads.setdefault(tuple(ids), set()).add(tuple(expected[:64]))
    assert len(heads) == 2 and all(len(h) == 1 for h in heads.values())  # one head per system prompt
    assert len({h for hs in heads.values() for h in hs}) == 2  # and the two differ
    assert len({p[64:] for p in sent}) == trace.height  # each request's own tokens are its own


def test_session_turns_are_sent_think_s_after_the_previous_turn_completes():
    trace = _shared_trace(9, turns=LengthDist.constant(3), think_s=0.05)
    engine = _Recorder(ttft_s=0.01, tpot_s=0.005)
    gw = _replay(trace, engine)
    recs = gw.records
    assert all(r.status == "ok" for r in recs)
    sessions = trace["session_id"].to_list()
    think = trace["think_s"].fill_null(0.0).to_list()
    checked = 0
    for i in range(1, trace.height):
        if sessions[i] == sessions[i - 1]:
            gap = recs[i].released_s - recs[i - 1].delivered_s
            assert gap >= think[i] - 1e-3, (i, gap, think[i])
            assert gap < think[i] + 0.05  # and not much later: the loop releases it then
            checked += 1
    assert checked >= 6


def _facts(**kw) -> ServerFacts:
    return ServerFacts(url="http://x", model="m", version=None, max_model_len=1024, num_gpu_blocks=512, block_size=16,
                       max_num_seqs=8, max_num_batched_tokens=512, **kw)


def test_the_simulated_engine_follows_the_servers_prefix_caching():
    assert engine_config(_facts(prefix_caching=False)).prefix_caching is False
    assert engine_config(_facts(prefix_caching=True)).prefix_caching is True
    assert engine_config(_facts()).prefix_caching is True  # not published: vLLM v1's default


def test_hit_rates_real_from_vllm_counters_beside_the_simulated_ones():
    trace = _shared_trace(20)
    sim = simulate_replay(trace, cost=linear_cost(), engine=engine_config(_facts(prefix_caching=True)))
    hits = sim_prefix_hits(sim.requests)
    assert hits["prefix_queries"] == int(trace["input_tokens"].sum())
    # two 64-token system prompts in 16-token blocks: every request after the first of its prompt finds 64 tokens
    firsts = len({tuple(x) for x in trace["prefix_ids"].to_list()})
    assert hits["prefix_hits"] == 64 * (trace.height - firsts)
    before = {"prefix_queries": 100.0, "prefix_hits": 10.0}
    after = {"prefix_queries": 1100.0, "prefix_hits": 610.0}
    e = compare_engine(before, after, sim)
    assert e["real"]["prefix_token_hit_rate"] == 0.6
    assert np.isclose(e["sim"]["prefix_token_hit_rate"], hits["prefix_hits"] / hits["prefix_queries"])
    off = simulate_replay(trace, cost=linear_cost(), engine=engine_config(_facts(prefix_caching=False)))
    assert sim_prefix_hits(off.requests)["prefix_hits"] == 0


def test_a_scenario_toml_is_a_validation_trace_and_its_errors_name_the_file(tmp_path):
    import pytest

    from driftsim.errors import ConfigError
    from driftsim.sim.scenario import build_trace, load_scenario
    from driftsim.validation.workload import load_base_trace

    path = "bench/prefix/sessions.toml"
    base = load_base_trace(path)
    assert base.equals(build_trace(load_scenario(path))[0])
    assert base["session_id"].n_unique() > 1 and base["prefix_ids"].is_not_null().all()
    bad = tmp_path / "bad.toml"
    bad.write_text('[workload]\nkind = "synthetic"\nnum_requests = "many"\n')
    with pytest.raises(ConfigError, match="bad.toml"):
        load_base_trace(bad)


def test_prefix_hit_rates_per_replay_leave_out_replays_without_counters():
    from driftsim.validation.levels import LevelResult, prefix_hit_rates

    lv = LevelResult(load=0.3, rate_rps=1.0, trace=_shared_trace(4))
    lv.engine = [{"real": {"prefix_token_hit_rate": 0.5}, "sim": {"prefix_token_hit_rate": 0.4}},
                 {"real": {}, "sim": {"prefix_token_hit_rate": 0.6}}]
    assert prefix_hit_rates(lv) == {"real": [0.5], "sim": [0.4, 0.6]}
