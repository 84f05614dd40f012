"""Hand-computed cases for the continuous-batching engine model."""

from __future__ import annotations

import math

import pytest

from driftsim.costmodel.batch import StepBatch, chunk_attn_tokens
from driftsim.sim.config import EngineConfig
from driftsim.sim.run import simulate
from tests.factories import RecordingCost, linear_cost, make_engine, make_request, make_trace, table_cost


def prefill_time(cost, n, computed=0):
    return cost.step_time(
        StepBatch(prefill_tokens=n, prefill_seqs=1, prefill_attn_tokens=chunk_attn_tokens(computed, n))
    )


def run_engine(core, t=0.0):
    """Step an engine to completion, checking KV accounting after every commit."""
    done = {}
    while core.has_work():
        ends = core.plan(t)
        for req, ft in core.commit(len(ends)):
            done[req.request_id] = (req, ft)
        t = float(ends[-1])
        held = sum(r.blocks for r in core.prefilling) + core.decode_blocks_held()
        assert core.used_blocks == held, "used blocks must equal the blocks the running requests hold"
        assert 0 <= core.used_blocks <= core.total_blocks
        assert core.kv.used + core.kv.free_blocks == core.kv.total
    return done, t


def test_single_request_ttft_is_its_prefill_step():
    cost = linear_cost()
    core = make_engine(cost)
    core.add(make_request(0, 100, 1))
    done, end = run_engine(core)
    req, finish = done[0]
    assert req.first_token_s == pytest.approx(prefill_time(cost, 100), abs=0)
    assert finish == req.first_token_s


def test_single_request_decode_steps_follow_context():
    cost = linear_cost()
    core = make_engine(cost)
    core.add(make_request(0, 100, 5))
    done, end = run_engine(core)
    expected = prefill_time(cost, 100)
    for ctx in (101, 102, 103, 104):  # 4 decode steps after the prefill produced token 1
        expected += cost.step_time(StepBatch(decode_seqs=1, decode_ctx_tokens=ctx))
    assert done[0][1] == pytest.approx(expected, rel=1e-12)
    assert core.steps == 5


def test_two_requests_share_the_prefill_step():
    cost = RecordingCost(linear_cost())
    core = make_engine(cost)
    core.add(make_request(0, 100, 3))
    core.add(make_request(1, 50, 2))
    done, _ = run_engine(core)
    first = cost.batches[0]
    assert (first.prefill_tokens, first.prefill_seqs, first.decode_seqs) == (150, 2, 0)
    assert done[0][0].first_token_s == done[1][0].first_token_s
    # step 2: both decode; request 1 finishes there
    assert cost.batches[1] == StepBatch(decode_seqs=2, decode_ctx_tokens=101 + 51)
    assert done[1][1] < done[0][1]


def test_chunked_prefill_spreads_a_long_prompt_over_steps():
    cost = RecordingCost(linear_cost())
    core = make_engine(cost, max_num_batched_tokens=64, max_num_seqs=64)
    core.add(make_request(0, 150, 1))
    done, _ = run_engine(core)
    chunks = [b.prefill_tokens for b in cost.batches]
    assert chunks == [64, 64, 22]
    expected = prefill_time(cost.inner, 64, 0)
    expected += prefill_time(cost.inner, 64, 64)
    expected += prefill_time(cost.inner, 22, 128)
    assert done[0][0].first_token_s == pytest.approx(expected, rel=1e-12)


def test_no_chunking_waits_for_a_budget_that_fits_the_prompt():
    cost = RecordingCost(linear_cost())
    core = make_engine(cost, max_num_batched_tokens=128, max_num_seqs=4, chunked_prefill=False, max_model_len=128)
    core.add(make_request(0, 100, 3))
    core.add(make_request(1, 100, 3))
    run_engine(core)
    # the second prompt does not fit the 128-token budget beside the first one
    assert [b.prefill_tokens for b in cost.batches[:2]] == [100, 100]
    assert cost.batches[1].decode_seqs == 1


def test_preemption_when_kv_runs_out_recomputes_and_completes():
    cost = RecordingCost(linear_cost())
    # 6 blocks of 16 tokens = 96 tokens; two sequences growing to 60 tokens each cannot both fit
    core = make_engine(cost, num_blocks=6, block_size=16, max_num_seqs=8, max_num_batched_tokens=64)
    core.add(make_request(0, 20, 40))
    core.add(make_request(1, 20, 40))
    done, _ = run_engine(core)
    assert core.preemptions >= 1
    victim = done[1][0]
    assert victim.preemptions >= 1 and done[0][0].preemptions == 0
    assert victim.generated == 40 and done[0][0].generated == 40
    # By hand: 6 reported blocks = 5 usable (vLLM's null block) = 80 token slots. Step 0 prefills both
    # 20-token prompts; at decode step k both contexts are 20 + k, so step 13 needs a third block each
    # (33 > 32 tokens): 6 > 5 blocks, and the later request is preempted having generated 13 tokens
    # (steps 0..12). The survivor's 4 blocks leave too few for the victim's 3 until it finishes at step 39,
    # so step 40 recomputes prompt + generated tokens, 20 + 13 = 33, as one fresh prefill from position 0.
    b = cost.batches
    assert [x.decode_seqs for x in b[1:13]] == [2] * 12 and b[13].decode_seqs == 1, "preempted at step 13"
    assert [x.prefill_tokens for x in b[1:40]] == [0] * 39, "no prefill while the survivor runs"
    assert b[40] == StepBatch(prefill_tokens=33, prefill_seqs=1, prefill_attn_tokens=chunk_attn_tokens(0, 33),
                              decode_seqs=0, decode_ctx_tokens=0), b[40]
    assert all(x.prefill_tokens == 0 for x in b[41:]) and len(b) == 41 + 26, "then 26 more decode steps (40 - 14)"
    # Every step by hand: decode step k (k >= 1) runs each sequence at context 20 + k; after the recompute
    # (which yields the victim's token 14) its decode step j runs at context 33 + j.
    expected = [StepBatch(prefill_tokens=40, prefill_seqs=2, prefill_attn_tokens=2 * chunk_attn_tokens(0, 20))]
    expected += [StepBatch(decode_seqs=2, decode_ctx_tokens=2 * (20 + k)) for k in range(1, 13)]
    expected += [StepBatch(decode_seqs=1, decode_ctx_tokens=20 + k) for k in range(13, 40)]
    expected += [StepBatch(prefill_tokens=33, prefill_seqs=1, prefill_attn_tokens=chunk_attn_tokens(0, 33))]
    expected += [StepBatch(decode_seqs=1, decode_ctx_tokens=33 + j) for j in range(1, 27)]
    assert b == expected
    # and when: the survivor (request 0) ends with step 39, the victim (request 1) with the last step; the
    # victim's first token stays the one of step 0 (a recompute does not send it again)
    ends = [sum(cost.inner.step_time(x) for x in expected[: i + 1]) for i in range(len(expected))]
    assert done[0][1] == pytest.approx(ends[39], rel=1e-12)
    assert done[1][1] == pytest.approx(ends[-1], rel=1e-12)
    assert done[1][0].first_token_s == done[0][0].first_token_s == pytest.approx(ends[0], rel=1e-12)
    assert victim.preemptions == 1


def test_one_of_the_reported_kv_blocks_is_vllms_null_block():
    """vLLM's block pool keeps one block out as its null block: two sequences of two 16-token blocks
    each (a one-block prompt growing into a second) run side by side on a server reporting 5 blocks, while
    one reporting 4 (3 usable) preempts."""
    for reported, preempts in ((5, False), (4, True)):
        core = make_engine(num_blocks=reported, block_size=16, max_num_seqs=8, max_num_batched_tokens=64)
        assert core.free_blocks == reported - 1
        core.add(make_request(0, 10, 20))
        core.add(make_request(1, 10, 20))
        run_engine(core)
        assert (core.preemptions > 0) == preempts
    core = make_engine(num_blocks=4, block_size=16)
    assert core.fits(make_request(0, 20, 28)) and not core.fits(make_request(1, 20, 29))
    with pytest.raises(ValueError, match="null block"):
        make_engine(num_blocks=1)


def test_max_num_seqs_caps_the_batch():
    cost = RecordingCost(linear_cost())
    core = make_engine(cost, max_num_seqs=3, max_num_batched_tokens=512)
    for i in range(7):
        core.add(make_request(i, 10, 5))
    run_engine(core)
    assert max(b.num_seqs for b in cost.batches) == 3


def test_microbatch_requests_complete_with_their_batch():
    trace = make_trace([(0.0, 50, 10), (0.001, 60, 200), (0.002, 40, 30), (1.0, 30, 5)])
    cfg = EngineConfig(mode="microbatch", batch_size=8, batch_wait_s=0.01, batch_poll_s=0.005, max_model_len=4096)
    res = simulate(trace, cost=linear_cost(), engine=cfg, num_blocks=1000)
    df = res.requests.sort("request_id")
    finish = df["finish_s"].to_list()
    assert finish[0] == finish[1] == finish[2], "the first three share one batch"
    assert finish[3] > 1.0
    # the batch starts at the first poll after the wait expired with an empty queue: 0 + 2 polls of 5 ms
    assert df["scheduled_s"][0] == pytest.approx(0.01)
    assert res.replicas[0]["batches"] == 2


def test_rejects_prompt_longer_than_max_model_len_and_caps_output():
    trace = make_trace([(0.0, 5000, 10), (0.0, 100, 5000)])
    res = simulate(trace, cost=linear_cost(), engine=EngineConfig(max_model_len=4096), num_blocks=1000)
    df = res.requests.sort("request_id")
    assert df["status"].to_list() == ["rejected", "ok"]
    assert "max_model_len" in df["reason"][0]
    assert df["generated_tokens"][1] == 4096 - 100 and df["finish_reason"][1] == "length"


def test_rejects_request_larger_than_kv():
    trace = make_trace([(0.0, 1000, 1000)])
    res = simulate(trace, cost=linear_cost(), engine=EngineConfig(max_model_len=4096), num_blocks=10)
    assert res.requests["status"][0] == "rejected"
    assert "KV" in res.requests["reason"][0]


def test_arrival_during_fast_forward_joins_the_next_step():
    cost = linear_cost()
    trace = make_trace([(0.0, 10, 200), (0.5, 10, 3)])
    fast = simulate(trace, cost=cost, engine=EngineConfig(max_model_len=4096), num_blocks=1000)
    slow = simulate(trace, cost=cost, engine=EngineConfig(max_model_len=4096, fast_forward=False), num_blocks=1000)
    assert fast.requests.equals(slow.requests)
    second = fast.requests.filter(request_id=1)
    assert second["scheduled_s"][0] > 0.5 and math.isfinite(second["e2e_s"][0])


def test_fast_forward_is_exact_with_a_decode_table():
    """Decode runs at batch sizes on both sides of the table's knots (1, 4, 16) equal step-by-step execution."""
    cost = RecordingCost(table_cost())
    trace = make_trace([(0.01 * i, 10 + 7 * i, 40 + 31 * i) for i in range(20)])
    fast = simulate(trace, cost=cost, engine=EngineConfig(max_model_len=4096), num_blocks=1000)
    slow = simulate(trace, cost=table_cost(), engine=EngineConfig(max_model_len=4096, fast_forward=False),
                    num_blocks=1000)
    assert fast.requests.equals(slow.requests)
    sizes = {b.decode_seqs for b in cost.batches if b.prefill_tokens == 0}
    assert {1, 2, 4, 5, 16, 17} <= sizes, sorted(sizes)


def _sim(trace, cost, **engine):
    return simulate(trace, cost=cost, engine=EngineConfig(max_model_len=4096, **engine), num_blocks=1000).requests


def test_async_scheduling_runs_an_arrival_one_step_later_and_fast_forward_stays_exact():
    cost = linear_cost()
    trace = make_trace([(0.0, 10, 200), (0.5, 10, 3)])
    sync = _sim(trace, cost)
    fast = _sim(trace, cost, async_scheduling=True)
    slow = _sim(trace, cost, async_scheduling=True, fast_forward=False)
    assert fast.equals(slow)
    t_sync = sync.filter(request_id=1)["scheduled_s"][0]
    t_async = fast.filter(request_id=1)["scheduled_s"][0]
    # the step in progress at 0.5 ends at t_sync; vLLM had already scheduled the next one, a 1-sequence decode
    ctx = 10 + round((t_sync - prefill_time(cost, 10)) / cost.step_time(StepBatch(decode_seqs=1, decode_ctx_tokens=120)))
    assert t_async - t_sync == pytest.approx(cost.step_time(StepBatch(decode_seqs=1, decode_ctx_tokens=ctx)), rel=1e-3)
    assert fast.filter(request_id=0)["ttft_s"][0] == sync.filter(request_id=0)["ttft_s"][0]  # idle engine: no lag


def test_async_scheduling_keeps_a_finisher_slot_for_one_more_step():
    cost = linear_cost()
    # two slots: A (5 tokens) and C (50) run; B waits for A's slot
    trace = make_trace([(0.0, 10, 5), (0.0, 10, 50), (0.0001, 10, 3)])
    sync = _sim(trace, cost, max_num_seqs=2)
    fast = _sim(trace, cost, max_num_seqs=2, async_scheduling=True)
    assert fast.equals(_sim(trace, cost, max_num_seqs=2, async_scheduling=True, fast_forward=False))
    a_done = sync.filter(request_id=0)["finish_s"][0]
    assert sync.filter(request_id=2)["scheduled_s"][0] == a_done
    # vLLM scheduled the step after A's last one before A's output freed its slot: C decodes alone first
    b_async = fast.filter(request_id=2)["scheduled_s"][0]
    assert fast.filter(request_id=0)["finish_s"][0] == a_done
    assert b_async == pytest.approx(a_done + cost.step_time(StepBatch(decode_seqs=1, decode_ctx_tokens=15)), rel=1e-9)


def test_async_scheduling_with_nothing_left_to_run_admits_at_once():
    cost = linear_cost()
    # one slot: B cannot join A's batch, and once A is done vLLM's pre-scheduled step is empty
    trace = make_trace([(0.0, 10, 5), (0.0001, 10, 3)])
    sync = _sim(trace, cost, max_num_seqs=1)
    fast = _sim(trace, cost, max_num_seqs=1, async_scheduling=True)
    assert fast.equals(sync)


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_microbatch_intake_gap_is_exact_under_fast_forward(async_scheduling):
    """Requests of a micro-batch reaching the engine one by one (batch_intake_gap_s) join between
    steps, and a fast-forwarded decode run is cut at each of them: stepping one by one agrees bit for bit."""
    cost = linear_cost()
    trace = make_trace([(0.0, 30, 300), (0.001, 10, 40), (0.002, 500, 5), (0.003, 10, 80)] * 2)
    kw = dict(mode="microbatch", batch_size=4, batch_wait_s=0.01, batch_intake_gap_s=0.05,
              async_scheduling=async_scheduling)
    fast = _sim(trace, cost, **kw)
    slow = _sim(trace, cost, fast_forward=False, **kw)
    assert fast.equals(slow)
    together = _sim(trace, cost, **{**kw, "batch_intake_gap_s": 0.0})
    assert not fast["first_token_s"].equals(together["first_token_s"])
    # the first request of each batch started alone, before the others came in
    for b in (fast.head(4), fast.tail(4)):
        assert b["first_token_s"][0] < b["first_token_s"][1:].min()


def test_reserve_full_prompt_admits_a_request_only_when_its_whole_prompt_fits():
    """vLLM 0.32 (scheduler_reserve_full_isl): a long prompt whose first chunk would fit but whose
    whole prompt does not waits until a running request frees its blocks; without it, the chunk is
    admitted at once. Fast-forwarded runs stay exact either way."""
    cost = linear_cost()
    trace = make_trace([(0.0, 100, 60), (0.01, 400, 5)])  # blocks of 16: 7 for the first, 25 for the second

    def run(reserve: bool, ff: bool = True):
        engine = EngineConfig(max_num_seqs=8, max_num_batched_tokens=128, block_size=16, max_model_len=512,
                              reserve_full_prompt=reserve, fast_forward=ff)
        return simulate(trace, cost=cost, engine=engine, num_blocks=28).requests

    full, chunk = run(True), run(False)
    assert full.equals(run(True, ff=False)) and chunk.equals(run(False, ff=False))
    first = full.filter(request_id=0)
    # whole prompt: 25 blocks > 28 - 7 held by the first request, so it waits for it to finish
    assert full.filter(request_id=1)["scheduled_s"][0] >= first["finish_s"][0]
    # first chunk only: 128 tokens = 8 blocks fit beside it at once
    assert chunk.filter(request_id=1)["scheduled_s"][0] < first["finish_s"][0]
    assert full["status"].to_list() == chunk["status"].to_list() == ["ok", "ok"]
