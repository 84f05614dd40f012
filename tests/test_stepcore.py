"""The compiled lone-replica core against the Python engine it mirrors: the same results, bit for bit.

:mod:`driftsim.sim.stepcore` runs a lone fed replica in C. The Python engine
(``EngineConfig(compiled_core=False)``) is the reference; step-by-step Python
(``fast_forward=False``) is checked too, as the fast-forward tests check it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftsim.admission.controller import AdmissionConfig
from driftsim.costmodel.batch import StepBatch
from driftsim.costmodel.profiles import list_profiles, load_profile
from driftsim.costmodel.roofline import RooflineCostModel
from driftsim.sim import compiled_feed, stepcore
from driftsim.sim.config import EngineConfig, GatewayConfig
from driftsim.sim.policies import POLICIES, Sjf
from driftsim.sim.prefix_cache import block_keys
from driftsim.sim.closed_loop import ClosedLoop, closed_loop_sends, simulate_closed_loop
from driftsim.sim.run import simulate
from driftsim.sim.sessions import session_sends, simulate_sessions
from driftsim.traces.synth import LengthDist, TenantLoad, generate
from driftsim.traces.schema import REQUEST_SCHEMA
from driftsim.traces.stream import TraceStream
from tests.conftest import STRICT
from tests.factories import linear_cost, make_trace, random_trace, table_cost, with_prefix_ids

pytestmark = pytest.mark.skipif(stepcore.library() is None and not STRICT,
                                reason="driftsim.sim._stepcore is not built (no C compiler at install)")


def test_the_core_is_built_where_the_suite_is_strict():
    # CI installs with gcc: a missing build there would hide every other test in this file
    assert stepcore.library() is not None


@pytest.fixture
def compiled_runs(monkeypatch) -> list[int]:
    """How many runs took the compiled core."""
    seen: list[int] = []
    original = compiled_feed.run_compiled

    def counting(*args, **kwargs):
        seen.append(1)
        return (yield from original(*args, **kwargs))

    monkeypatch.setattr("driftsim.sim.run.run_compiled", counting)
    return seen


def _random_batches(rng: np.random.Generator, n: int):
    for _ in range(n):
        decode = int(rng.integers(0, 400))
        prefill = int(rng.integers(0, 8192)) if rng.random() < 0.6 or decode == 0 else 0
        seqs = int(rng.integers(1, 9)) if prefill else 0
        yield StepBatch(prefill_tokens=prefill, prefill_seqs=seqs,
                        prefill_attn_tokens=float(rng.integers(0, 4 * 10**7)) if prefill else 0.0,
                        decode_seqs=decode, decode_ctx_tokens=int(rng.integers(decode, decode * 8000 + 1)))


@pytest.mark.parametrize("name", list_profiles())
def test_every_bundled_profile_times_steps_in_c_as_in_python(name):
    cost = load_profile(name).cost_model
    form = stepcore.formula_of(cost)
    assert form is not None, f"{name}: its cost model has no formula the compiled core can run"
    for b in _random_batches(np.random.default_rng(len(name)), 400):
        c = stepcore.step_time(form, float(b.prefill_tokens), b.prefill_attn_tokens, float(b.prefill_seqs),
                               float(b.decode_seqs), float(b.decode_ctx_tokens))
        assert c == cost.step_time(b), (name, b)


@pytest.mark.parametrize("make", [linear_cost, table_cost], ids=["linear", "linear-decode-table"])
def test_linear_forms_time_steps_in_c_as_in_python(make):
    cost = make()
    form = stepcore.formula_of(cost)
    # the decode table's knots are hit exactly, between and beyond
    batches = [StepBatch(decode_seqs=d, decode_ctx_tokens=d * 300) for d in range(1, 300)]
    for b in [*batches, *_random_batches(np.random.default_rng(5), 300)]:
        c = stepcore.step_time(form, float(b.prefill_tokens), b.prefill_attn_tokens, float(b.prefill_seqs),
                               float(b.decode_seqs), float(b.decode_ctx_tokens))
        assert c == cost.step_time(b), b


def test_a_subclass_that_changes_step_time_keeps_the_python_engine():
    base = load_profile("a100-llama-3.1-8b").cost_model

    class Slower(RooflineCostModel):
        def step_time(self, batch):
            return 2 * super().step_time(batch)

    slower = Slower(base.gpu, base.model, compute_efficiency=base.compute_efficiency,
                    memory_efficiency=base.memory_efficiency, overhead_s=base.overhead_s)
    assert stepcore.formula_of(base) is not None
    assert stepcore.formula_of(slower) is None


def _same(a: dict, b: dict) -> bool:
    """Equal summaries, NaN equal to NaN (a tenant with nothing completed has NaN latencies)."""
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


ENGINE_POLICIES = ["fifo", "priority", "sjf", "aging", "edf", "las", "srpt"]  # keyed: they can order an engine
GATEWAY_POLICIES = ["fifo", "priority", "sjf", "aging", "edf"]  # static keys: a capped gateway's queue in the core


def _with_priorities_and_slos(trace: pl.DataFrame, seed: int) -> pl.DataFrame:
    """Priorities 1-3 (some missing) and end-to-end SLOs (some missing: EDF falls back to its tenant's)."""
    rng = np.random.default_rng(seed + 1)
    n = trace.height
    prio = np.where(rng.random(n) < 0.2, 0, rng.integers(1, 4, n))
    slo = np.where(rng.random(n) < 0.3, np.nan, rng.uniform(1, 60, n))
    return trace.with_columns(pl.Series("priority", prio).cast(REQUEST_SCHEMA["priority"]).replace(0, None),
                              pl.Series("slo_e2e_s", slo).cast(REQUEST_SCHEMA["slo_e2e_s"]).fill_nan(None))


def _with_max_tokens(trace: pl.DataFrame, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    caps = rng.integers(1, 200, trace.height)
    keep = rng.random(trace.height) < 0.3
    return trace.with_columns(pl.Series("max_tokens", np.where(keep, caps, 0)).cast(REQUEST_SCHEMA["max_tokens"])
                              .replace(0, None))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 200), rate=st.floats(0.5, 300), seed=st.integers(0, 2**31), seqs=st.integers(1, 64),
       budget=st.sampled_from([64, 256, 2048, 4096]), blocks=st.integers(40, 2000), block_size=st.sampled_from([1, 7, 16]),
       chunked=st.booleans(), reserve=st.booleans(), max_len=st.sampled_from([300, 1024, 4096]),
       cost=st.sampled_from(["linear", "table", "roofline", "token-table"]), capped=st.booleans(),
       burst=st.booleans(), rows_per_push=st.sampled_from([1, 3, 64, compiled_feed.BLOCK]), async_sched=st.booleans(),
       replicas=st.sampled_from([1, 1, 2, 3]), router=st.sampled_from(["round_robin", "least_outstanding", "prefix_affinity"]),
       policy=st.sampled_from([None, None, *ENGINE_POLICIES]), id_tokens=st.sampled_from([None, None, 1, 10, 16, 32]),
       gateway_cap=st.sampled_from([None, None, 1, 2, 5]), gateway_policy=st.sampled_from(GATEWAY_POLICIES))
def test_compiled_runs_equal_the_python_engine(compiled_runs, n, rate, seed, seqs, budget, blocks, block_size, chunked,
                                               reserve, max_len, cost, capped, burst, rows_per_push, async_sched,
                                               replicas, router, policy, id_tokens, gateway_cap, gateway_policy):
    trace = random_trace(n, rate=rate, seed=seed, max_in=1200, max_out=500)
    if id_tokens is not None:  # prefix caching is on (the default): shared prompts, next turns, evictions
        trace = with_prefix_ids(trace, seed=seed, id_tokens=id_tokens)
    if capped:
        trace = _with_max_tokens(trace, seed)
    if burst:  # many arrivals at one instant, some at a step's end
        trace = trace.with_columns((pl.col("arrival_s") * 4).round(0) / 4)
    trace = _with_priorities_and_slos(trace, seed)
    # a policy in the engine (the gateway's queue, with a cap, in arrival order), else at the gateway
    placed = {"policy": gateway_policy} if policy is None else {"policy": policy, "placement": "engine"}
    gateway = GatewayConfig(router=router, max_outstanding=gateway_cap, **placed)
    model = {"linear": linear_cost, "table": table_cost,
             "roofline": lambda: load_profile("a100-llama-3.1-8b").cost_model,
             "token-table": lambda: load_profile("l4-qwen1.5-1.8b-chat-kernels").cost_model}[cost]()
    if not chunked:
        budget = max(budget, max_len)

    def run(**flags):
        engine = EngineConfig(max_num_seqs=seqs, max_num_batched_tokens=max(seqs, budget), block_size=block_size,
                              max_model_len=max_len, chunked_prefill=chunked, reserve_full_prompt=reserve,
                              async_scheduling=async_sched, **flags)
        return simulate(trace, cost=model, engine=engine, num_blocks=blocks, replicas=replicas, gateway=gateway)

    before = len(compiled_runs)  # the fixture lives across hypothesis' examples
    with pytest.MonkeyPatch.context() as patch:  # the core stops for rows at every push boundary
        patch.setattr(compiled_feed, "BLOCK", rows_per_push)
        fast = run()
    python, steps = run(compiled_core=False), run(fast_forward=False)
    assert len(compiled_runs) == before + 1, "only the default run may take the compiled core"
    assert fast.requests.equals(python.requests), "the compiled core must equal the Python engine bit for bit"
    assert fast.requests.equals(steps.requests), "and step-by-step execution"
    assert fast.replicas == python.replicas  # busy time, steps and preemptions too
    assert _same(fast.summary, python.summary)


def test_preemption_rejection_and_caps_are_exercised_and_equal(compiled_runs):
    # a small KV cache under a burst: requests are preempted (recompute), some never fit, some are capped
    trace = _with_max_tokens(random_trace(600, rate=400, seed=3, max_in=900, max_out=400), 3)
    engine = EngineConfig(max_num_seqs=48, max_num_batched_tokens=512, block_size=16, max_model_len=850)
    fast = simulate(trace, cost=linear_cost(), engine=engine, num_blocks=45)
    python = simulate(trace, cost=linear_cost(), engine=EngineConfig(**{**engine.__dict__, "compiled_core": False}),
                      num_blocks=45)
    assert compiled_runs
    assert fast.replicas[0]["preemptions"] > 0
    statuses = fast.requests["status"].value_counts()
    assert set(statuses["status"].to_list()) == {"ok", "rejected"}
    reasons = fast.requests["reason"].drop_nulls().to_list()
    assert any("max_model_len" in r for r in reasons) and any("tokens of KV" in r for r in reasons)
    assert (fast.requests["finish_reason"] == "length").any()
    assert fast.requests.equals(python.requests)
    assert fast.replicas == python.replicas


def test_async_scheduling_runs_in_the_core_with_its_lags(compiled_runs):
    # arrivals during steps wait a step in the inbox, finishers hold their slots one step longer: later
    # first tokens than synchronous scheduling, and the same as the Python engine's, bit for bit
    trace = _with_max_tokens(random_trace(800, rate=120, seed=9, max_in=700, max_out=300), 9)
    engine = EngineConfig(max_num_seqs=24, max_num_batched_tokens=512, block_size=16, max_model_len=1024,
                          async_scheduling=True)
    fast = simulate(trace, cost=linear_cost(), engine=engine, num_blocks=120)
    python = simulate(trace, cost=linear_cost(), engine=EngineConfig(**{**engine.__dict__, "compiled_core": False}),
                      num_blocks=120)
    sync = simulate(trace, cost=linear_cost(), engine=EngineConfig(**{**engine.__dict__, "async_scheduling": False}),
                    num_blocks=120)
    assert len(compiled_runs) == 2 and fast.engine_core == "compiled"
    assert fast.replicas[0]["preemptions"] > 0
    assert fast.requests.equals(python.requests)
    assert fast.replicas == python.replicas
    ok = fast.requests["status"] == "ok"
    assert fast.requests.filter(ok)["ttft_s"].mean() > sync.requests.filter(ok)["ttft_s"].mean()


@pytest.mark.parametrize("policy", ENGINE_POLICIES)
def test_engine_policies_order_the_waiting_queue_and_pick_victims_in_the_core(compiled_runs, policy):
    # vLLM's priority scheduling: the waiting queue in the policy's order, the victim the one it ranks last
    trace = _with_priorities_and_slos(random_trace(900, rate=150, seed=5, max_in=700, max_out=300), 5)
    engine = EngineConfig(max_num_seqs=24, max_num_batched_tokens=512, block_size=16, max_model_len=1024)
    kw = dict(cost=linear_cost(), num_blocks=100, gateway=GatewayConfig(policy=policy, placement="engine"))
    fast = simulate(trace, engine=engine, **kw)
    python = simulate(trace, engine=EngineConfig(**{**engine.__dict__, "compiled_core": False}), **kw)
    fcfs = simulate(trace, engine=engine, cost=linear_cost(), num_blocks=100)
    assert len(compiled_runs) == 2 and fast.engine_core == "compiled"
    assert fast.replicas[0]["preemptions"] > 0
    assert fast.requests.equals(python.requests)
    assert fast.replicas == python.replicas
    if policy != "fifo":  # the order is the policy's: some request starts at another time than under FCFS
        assert not fast.requests["scheduled_s"].equals(fcfs.requests["scheduled_s"])


@pytest.mark.parametrize("async_sched", [False, True])
@pytest.mark.parametrize("router", ["round_robin", "least_outstanding"])
def test_replicas_behind_a_router_run_in_the_core(compiled_runs, router, async_sched):
    # bursts at one instant and arrivals on a grid that step ends hit: the router reads each replica's
    # requests in flight as the arrival process and the replicas' SimPy processes leave them
    trace = random_trace(1500, rate=90, seed=4, max_in=900, max_out=250)
    trace = trace.with_columns((pl.col("arrival_s") * 8).round(0) / 8)
    engine = EngineConfig(max_num_seqs=12, max_num_batched_tokens=384, block_size=16, max_model_len=1024,
                          async_scheduling=async_sched)
    kw = dict(cost=linear_cost(), num_blocks=90, replicas=3, gateway=GatewayConfig(router=router))
    fast = simulate(trace, engine=engine, **kw)
    python = simulate(trace, engine=EngineConfig(**{**engine.__dict__, "compiled_core": False}), **kw)
    assert compiled_runs and fast.engine_core == "compiled"
    assert fast.requests.equals(python.requests)
    assert fast.replicas == python.replicas
    served = fast.requests.filter(pl.col("status") == "ok")["replica"].value_counts()
    assert served.height == 3 and sum(r["preemptions"] for r in fast.replicas) > 0
    if router == "round_robin":  # the k-th request taken goes to replica k mod 3
        taken = fast.requests.filter(pl.col("status") != "rejected")["replica"].to_list()
        assert taken == [k % 3 for k in range(len(taken))]


@pytest.mark.parametrize("chunk_rows", [7, 257])
@pytest.mark.parametrize("mode", ["parquet", "summary"])
def test_streamed_results_equal_the_python_engine(tmp_path: Path, compiled_runs, mode, chunk_rows):
    trace = random_trace(3000, rate=60, seed=11, max_in=800, max_out=300)
    engine = EngineConfig(max_num_seqs=64, max_num_batched_tokens=1024, block_size=16, max_model_len=2048)
    out = {}
    for compiled in (True, False):
        kwargs = ({"results_path": tmp_path / f"{compiled}.parquet"} if mode == "parquet" else {"summary_only": True})
        out[compiled] = simulate(trace, cost=linear_cost(), engine=EngineConfig(**{**engine.__dict__,
                                 "compiled_core": compiled}), num_blocks=600, chunk_rows=chunk_rows, **kwargs)
    assert len(compiled_runs) == 1
    if mode == "parquet":
        assert pl.read_parquet(out[True].requests_path).equals(pl.read_parquet(out[False].requests_path))
    assert _same(out[True].summary, out[False].summary)


@pytest.mark.parametrize("with_ids", [False, True])
def test_a_streamed_file_with_or_without_prefix_ids_takes_the_core(tmp_path: Path, compiled_runs, with_ids):
    # prefix caching is on (vLLM's default); the ids of a stream's chunks reach the core
    trace = random_trace(2000, rate=60, seed=12, max_in=800, max_out=300)
    if with_ids:
        trace = with_prefix_ids(trace, seed=12, id_tokens=16)
    columns = ["request_id", "arrival_s", "tenant", "input_tokens", "output_tokens"]
    trace.select(columns + (["prefix_ids", "prefix_block_tokens"] if with_ids else [])).write_parquet(tmp_path / "t.parquet")
    engine = EngineConfig(max_num_seqs=64, max_num_batched_tokens=1024, block_size=16, max_model_len=2048,
                          prefix_caching=True)
    out = {}
    for compiled in (True, False):
        out[compiled] = simulate(TraceStream(tmp_path / "t.parquet", chunk_rows=300), cost=linear_cost(),
                                 engine=EngineConfig(**{**engine.__dict__, "compiled_core": compiled}), num_blocks=600,
                                 results_path=tmp_path / f"{compiled}.parquet")
    assert len(compiled_runs) == 1
    fast = pl.read_parquet(out[True].requests_path)
    assert fast.equals(pl.read_parquet(out[False].requests_path))
    assert (fast["cached_tokens"].sum() > 0) == with_ids
    assert out[True].replicas == out[False].replicas


def test_block_keys_are_the_python_engine_s():
    # the core hashes ids as Python hashes int pairs, so its keys are block_keys' own
    rng = np.random.default_rng(5)
    for _ in range(300):
        ids = rng.integers(-2**63, 2**63 - 1, rng.integers(0, 12), dtype=np.int64).tolist()
        if rng.random() < 0.3:  # small ids, -1 among them (Python hashes -1 as -2)
            ids = rng.integers(-3, 3, len(ids)).tolist()
        id_tokens, block_size = int(rng.choice([1, 5, 16, 32, 100])), int(rng.choice([1, 7, 16]))
        tokens = int(rng.integers(0, 2000))
        assert stepcore.block_keys(ids, id_tokens, block_size, tokens) == block_keys(ids, id_tokens, block_size, tokens)


@pytest.mark.parametrize("replicas,async_sched", [(1, False), (1, True), (2, False), (2, True)])
def test_prefix_cache_hits_evictions_and_preemptions_in_the_core(compiled_runs, replicas, async_sched):
    # a small KV cache: shared prompts hit, freed blocks are evicted for new ones, decodes preempt
    trace = with_prefix_ids(random_trace(400, rate=40, seed=3, max_in=900, max_out=300), seed=3, id_tokens=16)
    engine = EngineConfig(max_num_seqs=32, max_num_batched_tokens=512, block_size=16, max_model_len=2048,
                          async_scheduling=async_sched)

    def run(**flags):
        return simulate(trace, cost=linear_cost(), engine=EngineConfig(**{**engine.__dict__, **flags}), num_blocks=150,
                        replicas=replicas, gateway=GatewayConfig(router="round_robin"))

    fast = run()
    python, steps = run(compiled_core=False), run(fast_forward=False)
    assert len(compiled_runs) == 1
    assert fast.requests.equals(python.requests) and fast.requests.equals(steps.requests)
    assert fast.replicas == python.replicas  # lookups, hit tokens and evictions too
    assert _same(fast.summary, python.summary)
    for r in fast.replicas:
        assert r["prefix_hit_tokens"] > 0 and r["prefix_evictions"] > 0 and r["preemptions"] > 0
    assert fast.requests["cached_tokens"].sum() > 0


@pytest.mark.parametrize("case", ["policy-subclass", "estimator", "observers", "cap", "horizon", "switched-off"])
def test_runs_outside_the_core_keep_the_python_engine(compiled_runs, monkeypatch, case):
    trace = random_trace(50, rate=20, seed=1, max_in=300, max_out=100)
    engine = dict(max_num_seqs=16, max_num_batched_tokens=512, block_size=16, max_model_len=1024)
    kwargs: dict = {}
    if case == "policy-subclass":  # its key may be anything: the core cannot know it
        monkeypatch.setitem(POLICIES, "sjf", type("Custom", (Sjf,), {}))
        kwargs["gateway"] = GatewayConfig(policy="sjf", placement="engine")
    elif case == "estimator":
        kwargs["admission"] = AdmissionConfig(estimator="driftsched")
    elif case == "observers":
        kwargs["observers"] = [lambda event: None]
    elif case == "cap":  # a capped gateway whose policy keeps state of its own
        kwargs["gateway"] = GatewayConfig(max_outstanding=4, policy="weighted")
    elif case == "horizon":
        kwargs["horizon_s"] = 1.0
    else:
        engine["compiled_core"] = False
    simulate(trace, cost=linear_cost(), engine=EngineConfig(**engine), num_blocks=400, **kwargs)
    assert not compiled_runs, f"{case}: the compiled core does not model this run"


@pytest.mark.parametrize("async_sched", [False, True])
def test_the_prefix_affinity_router_runs_in_the_core(compiled_runs, async_sched):
    # each replica's cache decides where a request goes: more of the prompts hit than behind round robin
    trace = with_prefix_ids(random_trace(900, rate=60, seed=8, max_in=900, max_out=200), seed=8, id_tokens=16,
                            prompts=6)
    engine = EngineConfig(max_num_seqs=16, max_num_batched_tokens=512, block_size=16, max_model_len=2048,
                          async_scheduling=async_sched)

    def run(router: str, **flags):
        return simulate(trace, cost=linear_cost(), engine=EngineConfig(**{**engine.__dict__, **flags}), num_blocks=400,
                        replicas=3, gateway=GatewayConfig(router=router))

    fast, python = run("prefix_affinity"), run("prefix_affinity", compiled_core=False)
    assert len(compiled_runs) == 1
    assert fast.requests.equals(python.requests) and fast.replicas == python.replicas
    spread = run("round_robin")
    assert fast.summary["overall"]["prefix_token_hit_rate"] > spread.summary["overall"]["prefix_token_hit_rate"]


@pytest.mark.parametrize("router", ["round_robin", "least_outstanding", "prefix_affinity"])
@pytest.mark.parametrize("async_sched", [False, True])
def test_a_capped_gateway_queues_in_its_policy_order_in_the_core(compiled_runs, router, async_sched):
    # identical requests at one instant on identical replicas: steps end together, and the order in
    # which the replicas wake decides which of them takes the gateway's next request
    burst = make_trace([(0.0, 200, 40)] * 30, tenants=["a"] * 30)
    later = random_trace(300, rate=30, seed=9, max_in=700, max_out=200).with_columns(pl.col("arrival_s") + 1.0,
                                                                                      pl.col("request_id") + 30)
    trace = _with_priorities_and_slos(pl.concat([burst, later]), 9)
    trace = with_prefix_ids(trace, seed=9, id_tokens=16)
    engine = EngineConfig(max_num_seqs=8, max_num_batched_tokens=512, block_size=16, max_model_len=2048,
                          async_scheduling=async_sched)
    gateway = GatewayConfig(router=router, max_outstanding=3, policy="priority")

    def run(**flags):
        return simulate(trace, cost=linear_cost(), engine=EngineConfig(**{**engine.__dict__, **flags}), num_blocks=300,
                        replicas=3, gateway=gateway)

    fast, python = run(), run(compiled_core=False)
    assert len(compiled_runs) == 1
    assert fast.requests.equals(python.requests) and fast.replicas == python.replicas
    assert _same(fast.summary, python.summary)
    waited = fast.requests.filter(pl.col("queue_wait_s") > 0.5)
    assert waited.height > 20  # held at the gateway, not in an engine: at most 3 in flight per replica
    first_burst = fast.requests.head(30).sort("scheduled_s")["replica"].head(9).value_counts()
    assert first_burst["count"].to_list() == [3, 3, 3]


@pytest.mark.parametrize("router", ["round_robin", "least_outstanding", "prefix_affinity"])
@pytest.mark.parametrize("async_sched", [False, True])
def test_replicas_waking_at_one_instant_take_the_gateway_s_queue_in_simpy_s_order(compiled_runs, router, async_sched):
    # every step lasts 0.25 s and arrivals fall on that grid: the replicas' steps end together, and
    # which one takes the capped gateway's next request is the order their wake-ups were scheduled in
    rng = np.random.default_rng(39)
    n = 120
    rows = list(zip((np.sort(rng.integers(0, 60, n)) * 0.25).tolist(), rng.integers(1, 64, n).tolist(),
                    rng.integers(1, 12, n).tolist()))
    trace = make_trace(rows).with_columns(pl.Series("priority", rng.integers(1, 4, n)).cast(REQUEST_SCHEMA["priority"]))
    cost = linear_cost(overhead_s=0.25, per_prefill_token_s=0.0, per_prefill_attn_s=0.0, per_prefill_seq_s=0.0,
                       per_decode_seq_s=0.0, per_decode_ctx_token_s=0.0)
    engine = EngineConfig(max_num_seqs=4, max_num_batched_tokens=64, block_size=16, max_model_len=1024,
                          async_scheduling=async_sched)
    kw = dict(cost=cost, num_blocks=200, replicas=3,
              gateway=GatewayConfig(router=router, max_outstanding=2, policy="priority"))
    fast = simulate(trace, engine=engine, **kw)
    python = simulate(trace, engine=EngineConfig(**{**engine.__dict__, "compiled_core": False}), **kw)
    assert len(compiled_runs) == 1
    assert fast.requests.equals(python.requests) and fast.replicas == python.replicas


@pytest.mark.parametrize("replicas,router,cap,async_sched", [
    (1, "least_outstanding", None, False), (1, "least_outstanding", 2, True), (3, "prefix_affinity", None, False),
    (3, "round_robin", 2, False), (2, "least_outstanding", None, True)])
def test_session_turns_are_sent_by_the_core(compiled_runs, replicas, router, cap, async_sched):
    # each later turn leaves think_s after the previous answer is delivered, its history cached
    chat = TenantLoad("chat", 8.0, input=LengthDist.uniform(20, 300), output=LengthDist.uniform(1, 200),
                      turns=LengthDist.uniform(1, 6), think_s=0.5, system_prompts=2, system_prompt_tokens=300)
    trace = generate([chat], num_requests=400, seed=4)
    engine = EngineConfig(max_num_seqs=8, max_num_batched_tokens=512, block_size=16, max_model_len=8192,
                          async_scheduling=async_sched)
    gateway = GatewayConfig(router=router, max_outstanding=cap, policy="sjf")

    def run(**flags):
        return simulate_sessions(trace, cost=linear_cost(), engine=EngineConfig(**{**engine.__dict__, **flags}),
                                 num_blocks=900, replicas=replicas, gateway=gateway)

    fast, python = run(), run(compiled_core=False)
    assert len(compiled_runs) == 1 and fast.engine_core == "compiled"
    assert fast.requests.equals(python.requests) and fast.replicas == python.replicas
    assert _same(fast.summary, python.summary)
    req = fast.requests
    sends = session_sends(trace["arrival_s"].to_numpy(), trace["session_id"].fill_null(-1).to_numpy(),
                          trace["think_s"].to_numpy(), req["finish_s"].to_numpy())
    held = req["arrival_s"].to_numpy() != trace["arrival_s"].to_numpy()
    assert held.sum() > 100  # later turns were sent in the run, not at their table times
    # a turn's send follows its predecessor's completion (delivered at or after it finished)
    assert (req["arrival_s"].to_numpy() >= sends).all()
    assert (req.filter(pl.col("cached_tokens") > 0).height > 200)


def test_sessions_whose_policy_keys_on_arrival_keep_the_python_engine(compiled_runs):
    trace = generate([TenantLoad("chat", 4.0, input=LengthDist.uniform(20, 100), output=LengthDist.uniform(1, 50),
                                 turns=LengthDist.uniform(2, 3), think_s=0.5)], num_requests=40, seed=1)
    simulate_sessions(trace, cost=linear_cost(), engine=EngineConfig(max_model_len=4096), num_blocks=400,
                      gateway=GatewayConfig(policy="aging", placement="engine"))
    assert not compiled_runs  # a turn's arrival, an aging key's input, is its send time


@pytest.mark.parametrize("replicas,cap,async_sched", [(1, None, False), (1, None, True), (3, 2, False)])
def test_a_closed_loop_runs_in_the_core(compiled_runs, replicas, cap, async_sched):
    # at most 6 requests in flight, the next sent 0.25 s after a slot frees, in table order
    trace = with_prefix_ids(random_trace(300, rate=100, seed=6, max_in=900, max_out=200), seed=6, id_tokens=16)
    loop = ClosedLoop(max_concurrency=6, think_s=0.25)
    engine = EngineConfig(max_num_seqs=8, max_num_batched_tokens=512, block_size=16, max_model_len=2048,
                          async_scheduling=async_sched)
    gateway = GatewayConfig(max_outstanding=cap, policy="priority")

    def run(**flags):
        return simulate_closed_loop(trace, loop, cost=linear_cost(), engine=EngineConfig(**{**engine.__dict__, **flags}),
                                    num_blocks=400, replicas=replicas, gateway=gateway)

    fast, python = run(), run(compiled_core=False)
    assert len(compiled_runs) == 1 and fast.engine_core == "compiled"
    assert fast.requests.equals(python.requests) and fast.replicas == python.replicas
    req = fast.requests
    sends = closed_loop_sends(trace["arrival_s"].to_numpy(), req["finish_s"].to_numpy(), loop)
    assert (req["arrival_s"].to_numpy() >= sends).all() and (req["arrival_s"].to_numpy() > trace["arrival_s"].to_numpy()).sum() > 200


@pytest.mark.parametrize("compiled", [True, False])
def test_prefix_affinity_sees_the_caches_as_step_by_step_runs_leave_them(compiled):
    # decode steps of a fast-forwarded run take free blocks and evict cached ones; a request routed during
    # the run must not find a block that the run's earlier steps have already evicted
    trace = with_prefix_ids(random_trace(87, rate=0.5, seed=13878, max_in=1200, max_out=500), seed=13878, id_tokens=1)
    engine = EngineConfig(max_num_seqs=29, max_num_batched_tokens=4096, block_size=7, max_model_len=4096,
                          chunked_prefill=False, compiled_core=compiled)
    kw = dict(cost=load_profile("a100-llama-3.1-8b").cost_model, num_blocks=178, replicas=3,
              gateway=GatewayConfig(router="prefix_affinity"))
    fast = simulate(trace, engine=engine, **kw)
    steps = simulate(trace, engine=EngineConfig(**{**engine.__dict__, "fast_forward": False}), **kw)
    assert fast.requests.equals(steps.requests)
    assert sum(r["prefix_evictions"] for r in fast.replicas) > 0


def test_prefix_ids_with_caching_off_take_the_core(compiled_runs):
    trace = with_prefix_ids(random_trace(50, rate=20, seed=1, max_in=300, max_out=100), seed=1, id_tokens=16)
    engine = EngineConfig(max_num_seqs=16, max_num_batched_tokens=512, block_size=16, max_model_len=1024,
                          prefix_caching=False)
    fast = simulate(trace, cost=linear_cost(), engine=engine, num_blocks=400)
    assert compiled_runs
    python = simulate(trace, cost=linear_cost(), engine=EngineConfig(**{**engine.__dict__, "compiled_core": False}),
                      num_blocks=400)
    assert fast.requests.equals(python.requests)
