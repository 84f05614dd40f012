"""More work never makes a step cheaper: every bundled profile (whatever TOML
files ``costmodel/profiles/`` holds when the tests run) and every fitted model
has a step time non-decreasing in each kind of work a StepBatch carries."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftsim.costmodel.batch import StepBatch, chunk_attn_tokens
from driftsim.costmodel.fit import fit_measurements
from driftsim.costmodel.profiles import PROFILE_DIR, load_profile
from driftsim.profiling.measurements import empty_row, phase_of, to_frame

BUNDLED = sorted(PROFILE_DIR.glob("*.toml"))


@st.composite
def batches(draw) -> StepBatch:
    """A batch an engine could run: prefill chunks after some computed tokens, decodes with their contexts."""
    seqs = draw(st.integers(0, 8))
    chunk = draw(st.integers(1, 2048)) if seqs else 0
    prior = draw(st.integers(0, 8192))
    decodes = draw(st.integers(0, 256))
    ctx_each = draw(st.integers(1, 8192)) if decodes else 0
    return StepBatch(prefill_tokens=seqs * chunk, prefill_seqs=seqs,
                     prefill_attn_tokens=seqs * chunk_attn_tokens(prior, chunk),
                     decode_seqs=decodes, decode_ctx_tokens=decodes * ctx_each)


def more_work(b: StepBatch, kind: str, n: int) -> StepBatch:
    """``b`` with ``n`` more units of one kind of work (the rest unchanged)."""
    fields = dict(prefill_tokens=b.prefill_tokens, prefill_seqs=b.prefill_seqs,
                  prefill_attn_tokens=b.prefill_attn_tokens, decode_seqs=b.decode_seqs,
                  decode_ctx_tokens=b.decode_ctx_tokens)
    if kind == "decode_seq_with_ctx":  # one more decoding sequence, with its context
        fields["decode_seqs"] += n
        fields["decode_ctx_tokens"] += n * max(1, b.decode_ctx_tokens // max(1, b.decode_seqs))
    elif kind == "prefill_chunk":  # a longer chunk: more tokens, each attending to the ones before
        fields["prefill_tokens"] += n
        fields["prefill_seqs"] = max(1, b.prefill_seqs)
        fields["prefill_attn_tokens"] += chunk_attn_tokens(b.prefill_tokens, n)
    else:
        fields[kind] += n
    return StepBatch(**fields)


KINDS = ("prefill_tokens", "prefill_attn_tokens", "prefill_seqs", "decode_seqs", "decode_ctx_tokens",
         "decode_seq_with_ctx", "prefill_chunk")


def assert_monotone(cm, batch: StepBatch, kind: str, n: int) -> None:
    bigger = more_work(batch, kind, n)
    t0, t1 = cm.step_time(batch), cm.step_time(bigger)
    assert t1 >= t0 * (1 - 1e-12), f"{kind} +{n}: {batch} takes {t0} s, {bigger} takes {t1} s"


def test_the_profile_folder_is_not_empty():
    assert BUNDLED, f"no profiles in {PROFILE_DIR}"


@pytest.mark.parametrize("path", BUNDLED, ids=[p.stem for p in BUNDLED])
@settings(max_examples=300, deadline=None)
@given(batch=batches(), kind=st.sampled_from(KINDS), n=st.integers(1, 512))
def test_bundled_profiles_never_get_cheaper_with_more_work(path, batch, kind, n):
    assert_monotone(load_profile(path).cost_model, batch, kind, n)


def engine_with_a_kernel_switch(b: StepBatch, rng) -> float:
    """A measured-looking engine whose 1-3 decode sequences are slower than 4 (a slower matrix-vector
    path), plus noise: a fit that follows it point by point would make more work cheaper."""
    d = b.decode_seqs
    seq_cost = (4.9e-3 if 0 < d < 4 else 0.0) + 8e-4 * d
    t = 2e-3 + 3e-5 * b.prefill_tokens + 2e-9 * b.prefill_attn_tokens + 4e-4 * b.prefill_seqs \
        + seq_cost + 2e-7 * b.decode_ctx_tokens
    return t * float(np.exp(rng.normal(0, 0.02)))


def kernel_switch_rows(seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for pid in range(72):
        kind = ("prefill", "decode", "mixed")[pid % 3]
        for step in range(6):
            d = int(rng.integers(1, 64)) if kind != "prefill" else 0
            n = int(rng.integers(16, 1024)) if kind != "decode" else 0
            b = StepBatch(prefill_tokens=n, prefill_seqs=int(n > 0), prefill_attn_tokens=chunk_attn_tokens(0, n),
                          decode_seqs=d, decode_ctx_tokens=d * int(rng.integers(16, 1000)))
            if kind == "decode" and pid % 2:  # small batches well covered, so a free table would dip
                b = StepBatch(decode_seqs=int(rng.integers(1, 9)), decode_ctx_tokens=int(rng.integers(16, 4000)))
            r = empty_row()
            r.update(source="synthetic", point_id=pid, point_kind=kind, step=step,
                     phase=phase_of(b.prefill_tokens, b.decode_seqs),
                     step_time_s=engine_with_a_kernel_switch(b, rng), prefill_tokens=b.prefill_tokens,
                     prefill_seqs=b.prefill_seqs, prefill_attn_tokens=float(b.prefill_attn_tokens),
                     decode_seqs=b.decode_seqs, decode_ctx_tokens=b.decode_ctx_tokens,
                     num_tokens=b.total_tokens, wait_s=0.0)
            rows.append(r)
    return rows


@pytest.fixture(scope="module")
def kernel_switch_fit():
    return fit_measurements(to_frame(kernel_switch_rows()), decode_knots=(1, 2, 4, 8))


def test_a_fit_to_an_engine_whose_small_batches_are_slow_keeps_its_table_non_decreasing(kernel_switch_fit):
    model, report = kernel_switch_fit
    costs = model.decode_seq_cost_s
    assert model.decode_seq_knots == (1, 2, 4, 8)
    assert all(b >= a for a, b in zip(costs, costs[1:])), costs
    # the table still follows the switch: one sequence costs far more than a quarter of four
    assert costs[0] > 0.5 * costs[2], costs
    assert report.errors["linear"]["decode"].mdape < 0.10


@settings(max_examples=300, deadline=None)
@given(batch=batches(), kind=st.sampled_from(KINDS), n=st.integers(1, 512))
def test_fitted_models_never_get_cheaper_with_more_work(kernel_switch_fit, batch, kind, n):
    assert_monotone(kernel_switch_fit[0], batch, kind, n)
