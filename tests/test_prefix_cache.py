"""Automatic prefix caching: block keys, the cached-block pool, the engine's use of it, and the workloads
that carry prefix identity. Hand-computed cases use blocks of 16 tokens."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftsim.sim.config import EngineConfig
from driftsim.sim.prefix_cache import BlockKeyMemo, PrefixCachedBlocks, block_keys
from driftsim.sim.run import simulate
from driftsim.traces import LengthDist, TenantLoad, TraceError, generate, load_trace, validate_trace, write_trace
from driftsim.traces.schema import REQUEST_SCHEMA
from tests.factories import RecordingCost, linear_cost, make_engine, make_request, make_trace

BS = 16


def _req(i: int, prompt: int, out: int, ids: list[int] | None, id_tokens: int = BS, arrival: float = 0.0):
    r = make_request(i, prompt, out, arrival)
    r.prefix_ids, r.prefix_id_tokens = ids, id_tokens
    return r


def _prefill_tokens_of_each_step(cost: RecordingCost) -> list[int]:
    return [b.prefill_tokens for b in cost.batches if b.prefill_tokens]


def _run_apart(prompt_a, ids_a, prompt_b, ids_b, **config):
    """Run request A to completion, then B alone; return B's prefill tokens per step and the engine."""
    cost = RecordingCost(linear_cost())
    core = make_engine(cost, block_size=BS, **config)
    t, _ = core.run_arrivals(0.0, [(0.0, _req(0, prompt_a, 4, ids_a))])
    cost.batches.clear()
    b = _req(1, prompt_b, 4, ids_b)
    core.run_arrivals(t, [(t, b)])
    return _prefill_tokens_of_each_step(cost), b, core


# --------------------------------------------------------------------------- keys
def test_block_keys_are_chained_and_stop_at_the_first_difference():
    a = block_keys([1, 2, 3, 4], BS, BS, 64)
    b = block_keys([1, 2, 3, 9], BS, BS, 64)
    c = block_keys([7, 2, 3, 4], BS, BS, 64)
    assert a[:3] == b[:3] and a[3] != b[3]
    assert not set(a) & set(c)  # a different first block changes every later key
    assert block_keys([1, 2, 3, 4], BS, BS, 64) == a  # deterministic


def test_block_keys_split_coarse_trace_blocks_into_engine_blocks():
    """A Mooncake id covers 512 tokens: 32 engine blocks of 16, each keyed by the ids up to it."""
    a = block_keys([5, 6], 512, BS, 1024)
    b = block_keys([5, 8], 512, BS, 1024)
    assert len(a) == 64
    assert a[:32] == b[:32] and not set(a[32:]) & set(b[32:])
    # a prompt ending inside the second id: only its full engine blocks get keys
    assert len(block_keys([5, 6], 512, BS, 600)) == 600 // BS
    # an engine block straddling two trace blocks (trace blocks of 24) is keyed by both ids
    x, y = block_keys([1, 2], 24, BS, 48), block_keys([1, 3], 24, BS, 48)
    assert x[0] == y[0] and x[1] != y[1]


# --------------------------------------------------------------------------- the pool
@given(ids=st.lists(st.integers(-(2**62), 2**62), max_size=12), id_tokens=st.sampled_from([BS, 24, 512]),
       prompts=st.lists(st.integers(1, 4096), min_size=1, max_size=6))
@settings(max_examples=60, deadline=None)
def test_remembered_block_keys_equal_computed_ones_for_every_prompt_length(ids, id_tokens, prompts):
    memo = BlockKeyMemo(BS, max_keys=40)  # small: some examples start the memo over
    for prompt in prompts:
        keys = memo(ids, id_tokens, prompt)
        assert keys == block_keys(ids, id_tokens, BS, prompt)
        keys.append(0)  # a new list each call: a caller's change never reaches the memo
        assert memo(ids, id_tokens, prompt) == block_keys(ids, id_tokens, BS, prompt)


def test_pool_evicts_least_recently_freed_and_the_tail_of_a_request_first():
    kv = PrefixCachedBlocks(7)  # 6 usable
    for keys in (["a0", "a1"], ["b0", "b1"]):
        kv.allocate(2)
        assert all(kv.register(k) for k in keys)
    assert not kv.register("a0")  # a key names one block
    kv.release(["a0", "a1"], 0)
    kv.release(["b0", "b1"], 0)
    assert (kv.used, kv.free_blocks) == (0, 6)
    assert kv.lookup(["a0", "a1"], 9) == (2, 2)
    kv.allocate(3)  # 2 never-used blocks first, then A's last block
    assert kv.evictions == 1 and kv.lookup(["a0", "a1"], 9) == (1, 1)
    kv.acquire(["b0"])  # a hit takes b0 out of the free queue
    assert kv.used == 4
    kv.allocate(1)  # a0 is next; b1 before b0 was freed
    assert kv.lookup(["a0"], 9) == (0, 0) and kv.lookup(["b0", "b1"], 9) == (2, 1)
    kv.allocate(1)
    assert kv.lookup(["b0", "b1"], 9) == (1, 0) and kv.evictions == 3
    assert kv.used + kv.free_blocks == kv.total == 6


# --------------------------------------------------------------------------- the engine, by hand
def test_second_request_sharing_three_blocks_prefills_only_the_rest():
    steps, b, core = _run_apart(64, [1, 2, 3, 4], 64, [1, 2, 3, 99])
    assert steps == [64 - 48]
    assert b.cached_tokens == 48
    assert core.prefix_stats()["prefix_hit_tokens"] == 48


def test_a_prompt_found_whole_still_computes_its_last_token():
    # 49 tokens: 3 full blocks cached, the 1-token partial block computed
    steps, b, _ = _run_apart(49, [1, 2, 3, 4], 49, [1, 2, 3, 4])
    assert steps == [1] and b.cached_tokens == 48
    # 48 tokens, all in full cached blocks: vLLM caps the hit at prompt - 1 tokens, block-aligned,
    # so the last block is computed again
    steps, b, _ = _run_apart(48, [1, 2, 3], 48, [1, 2, 3])
    assert steps == [16] and b.cached_tokens == 32


def test_an_answer_is_cached_for_the_prompt_that_repeats_it():
    # A: 32-token prompt, 40-token answer; ids name 72 tokens. Its KV holds 32 + 40 - 1 = 71 computed
    # tokens (the last token is sampled, never computed): 4 full blocks, 2 of them the answer's.
    # B repeats A's prompt and answer, then asks more (100 tokens): 4 blocks cached, 36 computed.
    cost = RecordingCost(linear_cost())
    core = make_engine(cost, block_size=BS)
    a = _req(0, 32, 40, [1, 2, 3, 4, 5])
    t, _ = core.run_arrivals(0.0, [(0.0, a)])
    cost.batches.clear()
    b = _req(1, 100, 4, [1, 2, 3, 4, 5, 6, 7])
    core.run_arrivals(t, [(t, b)])
    assert _prefill_tokens_of_each_step(cost) == [100 - 64] and b.cached_tokens == 64
    # ids that stop at A's prompt leave its answer uncached: B finds the 2 prompt blocks only
    steps, b, _ = _run_apart(32, [1, 2], 100, [1, 2, 3, 4, 5, 6, 7])
    assert steps == [100 - 32] and b.cached_tokens == 32


def test_the_partial_last_block_is_never_shared():
    # A's third id covers only 8 tokens of its 40: that block is never cached, so B (same ids,
    # longer prompt) hits the two full blocks only
    steps, b, _ = _run_apart(40, [1, 2, 3], 56, [1, 2, 3, 4])
    assert steps == [56 - 32] and b.cached_tokens == 32


def test_requests_without_identity_or_with_caching_off_compute_everything():
    assert _run_apart(64, None, 64, None)[0] == [64]
    assert _run_apart(64, [1, 2, 3, 4], 64, [1, 2, 3, 4], prefix_caching=False)[0] == [64]
    assert _run_apart(64, [1, 2, 3, 4], 64, [1, 2, 3, 4], mode="microbatch")[0] == [64]


def test_cached_prefix_is_context_for_the_cost_model():
    """The uncached chunk attends over the cached prefix: the attention work of a 16-token chunk after 48."""
    cost = RecordingCost(linear_cost())
    core = make_engine(cost, block_size=BS)
    t, _ = core.run_arrivals(0.0, [(0.0, _req(0, 64, 2, [1, 2, 3, 4]))])
    cost.batches.clear()
    core.run_arrivals(t, [(t, _req(1, 64, 2, [1, 2, 3, 5]))])
    first = next(b for b in cost.batches if b.prefill_tokens)
    assert first.prefill_attn_tokens == 16 * 48 + 16 * 17 / 2


def test_a_request_admitted_in_the_same_step_hits_blocks_scheduled_before_it():
    """vLLM caches a block when the step that computes it is scheduled: two requests with one prefix
    arriving together compute it once."""
    cost = RecordingCost(linear_cost())
    core = make_engine(cost, block_size=BS)
    a, b = _req(0, 64, 2, [1, 2, 3, 4]), _req(1, 64, 2, [1, 2, 3, 5])
    core.run_arrivals(0.0, [(0.0, a), (0.0, b)])
    assert _prefill_tokens_of_each_step(cost)[0] == 64 + 16
    assert (a.cached_tokens, b.cached_tokens) == (0, 48)


def test_lru_eviction_under_pressure_drops_the_oldest_prefix():
    """Room for one cached prompt: after A then B, a third prompt evicts A's blocks, and a repeat
    of B still hits while a repeat of A does not."""
    core = make_engine(num_blocks=1 + 10, block_size=BS, max_num_batched_tokens=2048)
    t = 0.0
    ids = {"A": [1, 2, 3, 4, 5], "B": [6, 7, 8, 9, 10], "C": [11, 12, 13, 14, 15]}
    for i, name in enumerate(["A", "B", "C"]):
        t, _ = core.run_arrivals(t, [(t, _req(i, 80, 2, ids[name]))])
    assert core.kv.evictions > 0
    again_b, again_a = _req(3, 80, 2, ids["B"]), _req(4, 80, 2, ids["A"])
    t, _ = core.run_arrivals(t, [(t, again_b)])
    t, _ = core.run_arrivals(t, [(t, again_a)])
    assert again_b.cached_tokens == 64 and again_a.cached_tokens == 0


# --------------------------------------------------------------------------- invariants
def _shared_prefix_trace(n: int, seed: int, *, groups: int = 3, max_in: int = 300, max_out: int = 60,
                         gap_s: float = 0.02) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(gap_s, n))
    inp = rng.integers(20, max_in, n)
    out = rng.integers(1, max_out, n)
    group = rng.integers(0, groups, n)
    ids = [[int(g) * 1000 + m for m in range(-(-int(p) // BS))] for g, p in zip(group, inp)]
    return make_trace(list(zip(arrivals, inp, out)), tenants=[f"t{g}" for g in group],
                      prefix_ids=ids, prefix_block_tokens=[BS] * n)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), num_blocks=st.integers(24, 80), chunk=st.sampled_from([32, 64, 512]),
       async_scheduling=st.booleans())
def test_kv_never_exceeds_capacity_and_every_reference_returns(seed, num_blocks, chunk, async_scheduling):
    trace = _shared_prefix_trace(30, seed)
    core = make_engine(num_blocks=num_blocks, block_size=BS, max_num_batched_tokens=chunk, max_num_seqs=8,
                       max_model_len=num_blocks * BS, async_scheduling=async_scheduling)
    reqs = []
    for i, row in enumerate(trace.iter_rows(named=True)):
        r = _req(i, row["input_tokens"], row["output_tokens"], row["prefix_ids"], arrival=row["arrival_s"])
        if core.fits(r):
            reqs.append((row["arrival_s"], r))
    kv = core.kv
    t, k = 0.0, 0
    while k < len(reqs) or core.has_work():
        while k < len(reqs) and reqs[k][0] <= t:
            core.add(reqs[k][1])
            k += 1
        if not core.has_work():
            t = reqs[k][0]
            continue
        ends = core.plan(t)
        core.commit(len(ends))
        t = float(ends[-1])
        assert 0 <= kv.used <= kv.total and kv.used + kv.free_blocks == kv.total
        held = sum(len(r.shared) for r in core.running.values())
        assert kv.referenced() == held, "every reference belongs to a running request"
    assert kv.used == 0 and kv.referenced() == 0
    assert all(r.generated == r.output_tokens for _, r in reqs)


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_fast_forward_stays_exact_with_the_cache_on(async_scheduling):
    trace = _shared_prefix_trace(200, 3, groups=6, max_out=300, gap_s=0.005)

    def run(ff: bool) -> pl.DataFrame:
        engine = EngineConfig(max_model_len=1024, block_size=BS, max_num_seqs=16, max_num_batched_tokens=256,
                              fast_forward=ff, async_scheduling=async_scheduling)
        return simulate(trace, cost=linear_cost(), engine=engine, num_blocks=80).requests

    fast = run(True)
    assert fast.equals(run(False))
    assert fast["cached_tokens"].sum() > 0 and fast["preemptions"].sum() > 0  # hits and pressure both happen


def test_prefix_identity_with_caching_off_gives_the_results_of_no_identity():
    with_ids = _shared_prefix_trace(150, 5)
    without = with_ids.with_columns(pl.lit(None, dtype=REQUEST_SCHEMA["prefix_ids"]).alias("prefix_ids"),
                                    pl.lit(None, dtype=pl.Int64).alias("prefix_block_tokens"))
    engine = EngineConfig(max_model_len=2048, block_size=BS, max_num_seqs=16, max_num_batched_tokens=256)
    off = simulate(with_ids, cost=linear_cost(), engine=EngineConfig(**{**engine.__dict__, "prefix_caching": False}),
                   num_blocks=120).requests
    none = simulate(without, cost=linear_cost(), engine=engine, num_blocks=120).requests
    on = simulate(with_ids, cost=linear_cost(), engine=engine, num_blocks=120).requests
    assert off.equals(none)
    assert on["cached_tokens"].sum() > 0 and on["ttft_s"].mean() < off["ttft_s"].mean()


def test_summary_reports_hits_per_tenant_and_replica():
    trace = _shared_prefix_trace(150, 7)
    engine = EngineConfig(max_model_len=2048, block_size=BS, max_num_seqs=16, max_num_batched_tokens=256)
    res = simulate(trace, cost=linear_cost(), engine=engine, num_blocks=120)
    req, summary = res.requests.filter(pl.col("status") == "ok"), res.summary
    for tenant, g in summary["tenants"].items():
        part = req.filter(tenant=tenant)
        assert g["prefix_cached_tokens"] == part["cached_tokens"].sum()
        assert g["prefix_token_hit_rate"] == part["cached_tokens"].sum() / part["input_tokens"].sum()
        assert g["prefix_request_hit_rate"] == (part["cached_tokens"] > 0).mean()
    replica = summary["replicas"][0]
    assert replica["prefix_hit_tokens"] >= req["cached_tokens"].sum()  # re-admissions after preemption add
    assert replica["prefix_lookups"] >= req.height and replica["prefix_evictions"] >= 0


# --------------------------------------------------------------------------- workloads
def _mooncake(tmp_path, records) -> str:
    path = tmp_path / "mooncake.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_mooncake_hash_ids_become_prefix_ids_of_512_tokens(tmp_path):
    path = _mooncake(tmp_path, [
        {"timestamp": 0, "input_length": 1000, "output_length": 5, "hash_ids": [1, 2]},
        {"timestamp": 9, "input_length": 600, "output_length": 5, "hash_ids": [1, 3]},
    ])
    df = load_trace(path)
    assert df["prefix_ids"].to_list() == [[1, 2], [1, 3]]
    assert df["prefix_block_tokens"].to_list() == [512, 512]
    for suffix in ("csv", "parquet"):
        assert load_trace(write_trace(df, tmp_path / f"t.{suffix}")).equals(df)


@pytest.mark.parametrize("record, field, expected", [
    ({"input_length": 10, "hash_ids": [1, 2]}, "hash_ids", "no more blocks than the prompt and its answer hold"),
    ({"input_length": 600, "hash_ids": ["x", 2]}, "hash_ids", "a list of integer block ids"),
    ({"input_length": 600, "hash_ids": 7}, "hash_ids", "a list of integer block ids"),
])
def test_bad_prefix_ids_name_the_file_row_and_field(tmp_path, record, field, expected):
    path = _mooncake(tmp_path, [{"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [1, 2]},
                                {"timestamp": 5, "output_length": 5, **record}])
    with pytest.raises(TraceError) as err:
        load_trace(path)
    assert (err.value.row, err.value.field) == (2, field) and expected in str(err.value)
    assert "mooncake.jsonl" in str(err.value)


def test_validate_trace_checks_prefix_ids_against_the_prompt():
    # 32 + 4 tokens hold 3 blocks of 16 (ids past the prompt name the answer's): a fourth id is too many
    trace = make_trace([(0.0, 32, 4)], prefix_ids=[[1, 2, 3, 4]], prefix_block_tokens=[16])
    with pytest.raises(TraceError, match="row 1, field 'prefix_ids'"):
        validate_trace(trace)
    with pytest.raises(TraceError, match="prefix_block_tokens"):
        validate_trace(make_trace([(0.0, 32, 4)], prefix_ids=[[1]], prefix_block_tokens=[None]))
    validate_trace(make_trace([(0.0, 33, 4)], prefix_ids=[[1, 2, 3]], prefix_block_tokens=[16]))


def test_synthetic_system_prompts_share_prefix_ids_with_zipf_popularity():
    tenant = TenantLoad("a", 50.0, input=LengthDist.constant(100), output=LengthDist.constant(10),
                        system_prompts=4, system_prompt_tokens=200, system_prompt_zipf=1.2)
    other = TenantLoad("b", 50.0, input=LengthDist.constant(100), output=LengthDist.constant(10))
    df = generate([tenant, other], num_requests=2000, seed=3)
    validate_trace(df)
    assert df.equals(generate([tenant, other], num_requests=2000, seed=3))
    a, b = df.filter(tenant="a"), df.filter(tenant="b")
    assert (a["input_tokens"] == 300).all() and (b["input_tokens"] == 100).all()
    assert b["prefix_ids"].null_count() == b.height
    prompts = a["prefix_ids"].list.first().value_counts(sort=True)
    assert prompts.height == 4 and (a["prefix_ids"].list.len() == 200 // 16).all()
    counts = prompts["count"].to_list()
    assert counts == sorted(counts, reverse=True) and counts[0] > 2 * counts[-1]
    # the lengths of the other tenant are the same as without system prompts
    plain = generate([TenantLoad("a", 50.0, input=LengthDist.constant(100), output=LengthDist.constant(10)), other],
                     num_requests=2000, seed=3)
    assert plain["arrival_s"].equals(df["arrival_s"])


def test_synthetic_system_prompt_arguments_are_checked():
    with pytest.raises(ValueError, match="together"):
        TenantLoad("a", 1.0, input=LengthDist.constant(1), output=LengthDist.constant(1), system_prompts=3)
    with pytest.raises(ValueError, match="system_prompt_zipf"):
        TenantLoad("a", 1.0, input=LengthDist.constant(1), output=LengthDist.constant(1), system_prompts=3,
                   system_prompt_tokens=64, system_prompt_zipf=-1.0)


# --------------------------------------------------------------------------- sessions
def _chat(turns=LengthDist.uniform(1, 5), think_s=2.0, **kw) -> TenantLoad:
    return TenantLoad("chat", 2.0, input=LengthDist.uniform(20, 200), output=LengthDist.uniform(20, 200),
                      turns=turns, think_s=think_s, **kw)


def test_synthetic_sessions_carry_the_conversation_into_each_prompt():
    df = generate([_chat(system_prompts=2, system_prompt_tokens=300)], num_requests=300, seed=1)
    validate_trace(df)
    for (sid,), s in df.group_by("session_id"):
        rows = s.sort("turn")
        assert rows["turn"].to_list() == list(range(1, rows.height + 1))
        assert rows["arrival_s"].n_unique() == 1 and rows["think_s"][0] == 0.0
        inp, out, ids = rows["input_tokens"].to_list(), rows["output_tokens"].to_list(), rows["prefix_ids"].to_list()
        for k in range(1, rows.height):
            assert inp[k] > inp[k - 1] + out[k - 1]  # history, then a new input
            assert ids[k][: len(ids[k - 1])] == ids[k - 1]  # the earlier prompt is a prefix of the later one
        assert all(len(x) == -(-(n + o) // 16) for x, n, o in zip(ids, inp, out))  # through the answer


def test_session_turns_are_sent_after_the_previous_answer_plus_think_time():
    from driftsim.sim.sessions import simulate_sessions

    df = generate([_chat()], num_requests=120, seed=2)
    engine = EngineConfig(max_model_len=8192, block_size=BS)
    res = simulate_sessions(df, cost=linear_cost(), engine=engine, num_blocks=2000)
    req = res.requests.join(df.select("request_id", "session_id", "turn", "think_s",
                                      pl.col("arrival_s").alias("start_s")), on="request_id")
    assert res.summary["sessions"]["turns"] == df.height and (req["status"] == "ok").all()
    for (sid,), s in req.group_by("session_id"):
        s = s.sort("turn")
        sent, finish, think = s["arrival_s"].to_list(), s["finish_s"].to_list(), s["think_s"].to_list()
        assert sent[0] == s["start_s"][0]
        for k in range(1, s.height):
            assert sent[k] == max(s["start_s"][k], finish[k - 1] + think[k])
    # the later turns find their history cached
    later = req.filter(pl.col("turn") > 1)
    assert (later["cached_tokens"] > 0).mean() > 0.9


def test_many_sessions_run_once_and_the_fast_forward_stays_exact():
    from driftsim.sim.sessions import session_sends, simulate_sessions

    # sessions whose turns wait on each other's answers through a shared, busy engine: one run settles them
    chat = TenantLoad("chat", 6.0, input=LengthDist.uniform(20, 400), output=LengthDist.uniform(20, 300),
                      turns=LengthDist.uniform(1, 6), think_s=1.0)
    df = generate([chat], num_requests=1500, seed=5)
    kw = dict(cost=linear_cost(), num_blocks=1500)
    fast = simulate_sessions(df, engine=EngineConfig(max_model_len=8192, block_size=BS, max_num_seqs=32), **kw)
    slow = simulate_sessions(df, engine=EngineConfig(max_model_len=8192, block_size=BS, max_num_seqs=32,
                                                     fast_forward=False), **kw)
    assert fast.requests.equals(slow.requests)
    req = fast.requests
    session = df["session_id"].fill_null(-1).to_numpy()
    rule = session_sends(df["arrival_s"].to_numpy(), session, df["think_s"].to_numpy(), req["finish_s"].to_numpy())
    assert req["arrival_s"].to_list() == rule.tolist()


@pytest.mark.parametrize("turns, field, expected", [
    ([1, 1], "turn", "turns of a session in increasing order"),
    ([2, 1], "turn", "turns of a session in increasing order"),
    ([1, None], "turn", "a turn number where session_id is given"),
])
def test_turns_going_back_in_time_are_refused_with_their_row(tmp_path, turns, field, expected):
    trace = make_trace([(0.0, 10, 5), (1.0, 10, 5)], session_id=[7, 7], turn=turns, think_s=[0.0, 1.0])
    with pytest.raises(TraceError) as err:
        validate_trace(trace)
    assert (err.value.row, err.value.field) == (2, field) and expected in str(err.value)
    path = tmp_path / "t.csv"
    trace.with_columns(pl.col("prefix_ids").cast(pl.List(pl.String)).list.join(" ")).write_csv(path)
    with pytest.raises(TraceError) as err:
        load_trace(path)
    assert (err.value.row, err.value.field) == (2, field) and "t.csv" in str(err.value)


def test_negative_think_time_is_refused():
    trace = make_trace([(0.0, 10, 5), (1.0, 10, 5)], session_id=[7, 7], turn=[1, 2], think_s=[0.0, -1.0])
    with pytest.raises(TraceError, match="row 2, field 'think_s'"):
        validate_trace(trace)


# --------------------------------------------------------------------------- routing
def test_prefix_affinity_routes_shared_prefixes_to_the_replica_that_holds_them():
    from driftsim.sim.config import GatewayConfig

    trace = _shared_prefix_trace(300, 11, groups=4, gap_s=0.01)
    engine = EngineConfig(max_model_len=2048, block_size=BS, max_num_seqs=16, max_num_batched_tokens=512)

    def run(router: str):
        return simulate(trace, cost=linear_cost(), engine=engine, num_blocks=400, replicas=2,
                        gateway=GatewayConfig(router=router))

    affinity, spread = run("prefix_affinity"), run("least_outstanding")
    assert affinity.requests.equals(run("prefix_affinity").requests)  # deterministic
    ok = affinity.requests.filter(pl.col("status") == "ok")
    assert ok.height == trace.height
    # a prefix group mostly stays where its blocks are (a request dispatched before the group's first
    # blocks were scheduled may land elsewhere)
    grouped = ok.join(trace.select("request_id", g=pl.col("prefix_ids").list.first()), on="request_id")
    on_modal = grouped.group_by("g").agg((pl.col("replica") == pl.col("replica").mode().first()).mean().alias("f"))
    assert (on_modal["f"] > 0.9).all(), on_modal
    hit = lambda res: res.summary["overall"]["prefix_token_hit_rate"]  # noqa: E731
    assert hit(affinity) > hit(spread)


def test_a_streamed_run_refuses_sessions_rather_than_sending_them_open_loop(tmp_path):
    from driftsim.sim.config import ConfigError
    from driftsim.sim.scenario import load_scenario
    from driftsim.sim.scenario_stream import run_scenario_streamed

    path = write_trace(generate([_chat()], num_requests=40, seed=4), tmp_path / "chat.parquet")
    scenario = load_scenario(None, {"name": "chat", "profile": "a100-llama-3.1-8b",
                                    "engine": {"mode": "continuous", "max_model_len": 8192},
                                    "workload": {"kind": "trace", "path": str(path)}})
    with pytest.raises(ConfigError, match="multi-turn sessions"):
        run_scenario_streamed(scenario, summary_only=True)
