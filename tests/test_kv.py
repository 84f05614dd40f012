"""The KV block manager: counts, vLLM's null block, and ``used + free == total`` after every engine step."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftsim.sim.config import EngineConfig
from driftsim.sim.engine import EngineCore, admitted_prompt_tokens
from driftsim.sim.kv import NULL_BLOCKS, KvBlocks, cdiv
from driftsim.sim.policies import make_policy
from tests.factories import linear_cost, make_request


def test_a_server_reporting_n_blocks_holds_kv_in_n_minus_the_null_block():
    kv = KvBlocks(10)
    assert NULL_BLOCKS == 1
    assert (kv.total, kv.used, kv.free_blocks) == (9, 0, 9)


def test_allocate_and_free_move_blocks_between_used_and_free():
    kv = KvBlocks(10)
    assert kv.can_allocate(9) and not kv.can_allocate(10)
    kv.allocate(6)
    assert (kv.used, kv.free_blocks) == (6, 3)
    assert kv.can_allocate(3) and not kv.can_allocate(4)
    kv.free(4)
    assert (kv.used, kv.free_blocks) == (2, 7)


def test_fewer_than_two_blocks_is_refused():
    with pytest.raises(ValueError, match="null block"):
        KvBlocks(1)


def test_cdiv_rounds_tokens_up_to_whole_blocks():
    assert [cdiv(n, 16) for n in (0, 1, 16, 17, 32)] == [0, 1, 1, 2, 2]


def test_admitted_prompt_tokens_chunks_only_with_chunked_prefill():
    assert admitted_prompt_tokens(100, 300, chunked=False) == 100
    assert admitted_prompt_tokens(100, 30, chunked=True) == 30
    assert admitted_prompt_tokens(100, 30, chunked=False) is None
    assert admitted_prompt_tokens(30, 30, chunked=False) == 30


requests = st.lists(
    st.tuples(st.integers(0, 3), st.integers(1, 300), st.integers(1, 120)),  # (steps before it arrives, prompt, output)
    min_size=1, max_size=40,
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reqs=requests, seqs=st.integers(1, 16), extra=st.integers(0, 300), block_size=st.sampled_from([1, 4, 16]),
       chunked=st.booleans(), asynch=st.booleans(), reserve_full=st.booleans(), fast=st.booleans(),
       spare_blocks=st.integers(0, 40), keyed=st.booleans())
def test_used_plus_free_is_total_after_every_step(reqs, seqs, extra, block_size, chunked, asynch, reserve_full, fast,
                                                  spare_blocks, keyed):
    cfg = EngineConfig(max_num_seqs=seqs, max_num_batched_tokens=max(seqs, 512 if not chunked else seqs + extra),
                       block_size=block_size, chunked_prefill=chunked, async_scheduling=asynch,
                       reserve_full_prompt=reserve_full, fast_forward=fast, max_model_len=512)
    largest = max(cdiv(p + o, block_size) for _, p, o in reqs)
    num_blocks = largest + spare_blocks + NULL_BLOCKS  # every request fits alone; few blocks force preemptions
    core = EngineCore(config=cfg, cost=linear_cost(), num_blocks=num_blocks,
                      policy=make_policy("sjf") if keyed else None)
    pending = [(wait, make_request(i, p, o)) for i, (wait, p, o) in enumerate(reqs)]
    finished, t = 0, 0.0
    while pending or core.has_work():
        while pending and pending[0][0] == 0:
            core.add(pending.pop(0)[1])
        if pending:
            pending[0] = (pending[0][0] - 1, pending[0][1])
        if not core.has_work():
            continue
        ends = core.plan(t)
        finished += len(core.commit(len(ends)))
        t = float(ends[-1])
        kv = core.kv
        assert kv.used + kv.free_blocks == kv.total
        assert 0 <= kv.used <= kv.total
        held = sum(r.blocks for r in core.prefilling) + core.decode_blocks_held()
        assert kv.used == held, "used blocks must be the blocks the running requests hold"
    assert finished == len(reqs)
    assert core.kv.used == 0
