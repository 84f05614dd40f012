"""Cost models: the contract over every bundled profile, hand-computed numbers,
spec arithmetic, sanity targets, and profile-file errors."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftsim.costmodel import (
    CostModel,
    GpuSpec,
    KvCapacity,
    LinearCostModel,
    ModelArch,
    ProfileError,
    RooflineCostModel,
    StepBatch,
    batch_grid,
    chunk_attn_tokens,
    kv_capacity_blocks,
    linearize,
    linearize_profile,
    list_profiles,
    load_profile,
)
from driftsim.costmodel.profiles import PROFILE_DIR

PROFILES = list_profiles()
MODELS = {name: load_profile(name) for name in PROFILES}

LLAMA_8B = ModelArch(name="Llama-3.1-8B", num_layers=32, hidden_size=4096, num_heads=32, num_kv_heads=8,
                     intermediate_size=14336, vocab_size=128256, dtype_bytes=2)
QWEN_18B = ModelArch(name="Qwen1.5-1.8B", num_layers=24, hidden_size=2048, num_heads=16, num_kv_heads=16,
                     intermediate_size=5504, vocab_size=151936, dtype_bytes=2, qkv_bias=True)


def decode(n: int, ctx_each: int) -> StepBatch:
    return StepBatch(decode_seqs=n, decode_ctx_tokens=n * ctx_each)


def prefill(n: int, computed: int = 0) -> StepBatch:
    return StepBatch(prefill_tokens=n, prefill_seqs=1, prefill_attn_tokens=chunk_attn_tokens(computed, n))


def bits(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).view(np.uint64)


batches = st.builds(
    StepBatch,
    prefill_tokens=st.integers(0, 100_000),
    prefill_seqs=st.integers(0, 1_000),
    prefill_attn_tokens=st.floats(0, 1e10, allow_nan=False),
    decode_seqs=st.integers(0, 10_000),
    decode_ctx_tokens=st.integers(0, 10**8),
).filter(lambda b: b.total_tokens > 0)


# ---- the contract, over every bundled profile ------------------------------

def test_there_are_bundled_profiles_of_both_kinds():
    assert "l4-qwen1.5-1.8b-chat" in PROFILES
    kinds = {MODELS[n].cost_model.kind for n in PROFILES}
    assert kinds == {"linear", "roofline", "token-table"}


@pytest.mark.parametrize("name", PROFILES)
def test_profile_is_a_cost_model_and_never_claims_measured(name):
    profile = MODELS[name]
    assert isinstance(profile.cost_model, CostModel)
    # Spec-derived, or composed from published kernel measurements (which name their tables); never
    # "measured" on a real engine.
    assert profile.provenance["source"] in ("derived-from-spec", "measured-kernels", "transferred-kernels")
    assert profile.provenance["spec_sources"]
    d = profile.cost_model.describe()
    assert d["name"] == name and d["provenance"]["source"] == profile.provenance["source"]


@pytest.mark.parametrize("name", PROFILES)
@settings(max_examples=60, deadline=None)
@given(batch=batches)
def test_step_time_is_positive_and_finite(name, batch):
    t = MODELS[name].cost_model.step_time(batch)
    assert isinstance(t, float) and math.isfinite(t) and t > 0


@pytest.mark.parametrize("name", PROFILES)
@settings(max_examples=60, deadline=None)
@given(batch=batches, field=st.sampled_from(["prefill_tokens", "prefill_seqs", "prefill_attn_tokens",
                                               "decode_seqs", "decode_ctx_tokens"]),
       extra=st.integers(1, 10**6))
def test_step_time_is_monotone_in_every_dimension(name, batch, field, extra):
    cm = MODELS[name].cost_model
    bigger = replace(batch, **{field: getattr(batch, field) + extra})
    assert cm.step_time(bigger) >= cm.step_time(batch)


@pytest.mark.parametrize("name", [n for n in PROFILES if hasattr(MODELS[n].cost_model, "breakdown")])
@settings(max_examples=80, deadline=None)
@given(batch=batches)
def test_step_time_equals_its_breakdown_total_bit_for_bit(name, batch):
    cm = MODELS[name].cost_model
    assert bits(cm.step_time(batch)) == bits(cm.breakdown(batch)["total_s"])


@pytest.mark.parametrize("name", [n for n in PROFILES if hasattr(MODELS[n].cost_model, "decode_step_time")])
@settings(max_examples=80, deadline=None)
@given(num_seqs=st.one_of(st.integers(0, 512), st.integers(0, 2**30)),
       ctx=st.one_of(st.integers(0, 10**6), st.integers(0, 2**52), st.integers(2**53, 2**62)))
def test_decode_step_time_equals_step_time_bit_for_bit(name, num_seqs, ctx):
    cm = MODELS[name].cost_model
    batch = StepBatch(decode_seqs=num_seqs, decode_ctx_tokens=ctx)
    assert bits(cm.decode_step_time(num_seqs, ctx)) == bits(cm.step_time(batch))


@pytest.mark.parametrize("name", PROFILES)
@settings(max_examples=80, deadline=None)
@given(num_seqs=st.one_of(st.integers(0, 512), st.integers(0, 2**30)),
       ctx=st.one_of(st.integers(0, 10**6), st.integers(0, 2**52), st.integers(2**53, 2**62)),
       k=st.integers(0, 40))
def test_decode_run_times_equal_step_time_bit_for_bit(name, num_seqs, ctx, k):
    cm = MODELS[name].cost_model
    runs = cm.decode_run_times(num_seqs, ctx, k)
    assert runs.dtype == np.float64 and runs.shape == (k,)
    one_by_one = [cm.step_time(StepBatch(decode_seqs=num_seqs, decode_ctx_tokens=ctx + j * num_seqs))
                  for j in range(k)]
    assert np.array_equal(bits(runs), bits(one_by_one))


@pytest.mark.parametrize("name", PROFILES)
def test_kv_capacity_is_positive_and_holds_a_few_full_sequences(name):
    profile = MODELS[name]
    d = profile.engine_defaults
    blocks = profile.kv_capacity_blocks()
    assert blocks == profile.cost_model.kv_capacity_blocks(d["block_size"])
    assert blocks * d["block_size"] >= 4 * d["max_model_len"]
    # More memory, more blocks; smaller blocks, (about) proportionally more.
    assert profile.kv_capacity_blocks(gpu_memory_utilization=0.95) > blocks
    assert profile.kv_capacity_blocks(block_size=d["block_size"] // 2) >= 2 * blocks


# ---- spec arithmetic -------------------------------------------------------

def test_published_parameter_counts():
    assert LLAMA_8B.num_params == 8_030_261_248
    assert QWEN_18B.num_params == 1_836_828_672


def test_kv_bytes_per_token():
    assert LLAMA_8B.kv_bytes_per_token == 131_072  # 2 x 32 layers x 8 heads x 128 x 2 B
    assert QWEN_18B.kv_bytes_per_token == 196_608  # 2 x 24 x 16 x 128 x 2 B


def test_flops_and_bytes():
    m = LLAMA_8B
    assert m.head_dim == 128
    assert m.attn_flops_per_token_pair == 4 * 32 * 4096
    assert m.lm_head_flops_per_token == 2 * 128256 * 4096
    assert m.flops_per_token == 2 * (m.num_params - m.embedding_params - 32 * 2 * 4096 - 4096)
    assert m.weight_bytes == 2 * m.num_params
    assert m.streamed_weight_bytes == m.weight_bytes - 2 * m.embedding_params
    tied = replace(m, tied_embeddings=True)
    assert tied.num_params == m.num_params - m.embedding_params
    assert tied.streamed_weight_bytes == tied.weight_bytes


def test_kv_capacity_formula_and_does_not_fit():
    gpu = GpuSpec("toy", peak_flops=1e12, mem_bandwidth=1e11, mem_bytes=20 * 2**30)
    free = 20 * 2**30 * 0.9 - LLAMA_8B.weight_bytes - 2**30
    expected = math.floor(free / (16 * 131_072))
    assert kv_capacity_blocks(gpu, LLAMA_8B, block_size=16, gpu_memory_utilization=0.9,
                              activation_reserve_bytes=2**30) == expected
    small = replace(gpu, mem_bytes=16 * 2**30)
    with pytest.raises(ValueError, match="does not fit"):
        kv_capacity_blocks(small, LLAMA_8B, block_size=16, gpu_memory_utilization=0.9,
                           activation_reserve_bytes=0)


def test_llama_8b_on_a100_holds_several_hundred_thousand_tokens():
    profile = MODELS["a100-llama-3.1-8b"]
    tokens = profile.kv_capacity_blocks(16, 0.9) * 16
    assert 300_000 < tokens < 600_000


def test_measured_num_gpu_blocks_wins_and_rescales():
    gpu = MODELS["a100-llama-3.1-8b"].gpu
    kv = KvCapacity(gpu=gpu, model=LLAMA_8B, gpu_memory_utilization=0.9, num_gpu_blocks=27_000,
                    measured_block_size=16, activation_reserve_bytes=0)
    assert kv.blocks(16) == 27_000
    assert kv.blocks(32) == 13_500
    # 0.05 more of the device is 0.05 * mem_bytes more pool
    grown = math.floor((27_000 * 16 * 131_072 + gpu.mem_bytes * (0.95 - 0.9)) / (16 * 131_072))
    assert kv.blocks(16, 0.95) == grown
    bare = KvCapacity(num_gpu_blocks=100, measured_block_size=16, gpu_memory_utilization=0.9)
    with pytest.raises(ValueError, match="needs gpu and model"):
        bare.blocks(16, 0.8)


# ---- the linear model by hand ----------------------------------------------

def test_linear_step_time_by_hand():
    cm = LinearCostModel(overhead_s=0.002, per_prefill_token_s=1e-4, per_prefill_attn_s=1e-8,
                         per_prefill_seq_s=5e-4, per_decode_seq_s=2e-4, per_decode_ctx_token_s=1e-6)
    b = StepBatch(prefill_tokens=100, prefill_seqs=2, prefill_attn_tokens=5050.0,
                  decode_seqs=10, decode_ctx_tokens=1000)
    # 0.002 + 0.01 + 0.0000505 + 0.001 + 0.002 + 0.001
    assert cm.step_time(b) == pytest.approx(0.0160505, rel=1e-12)
    assert cm.step_time(decode(1, 1)) == pytest.approx(0.002 + 2e-4 + 1e-6, rel=1e-12)
    assert cm.breakdown(b)["total_s"] == cm.step_time(b)
    # ctx 500, 510, 520 for 10 sequences
    np.testing.assert_allclose(cm.decode_run_times(10, 500, 3),
                               [0.002 + 2e-3 + 500e-6, 0.002 + 2e-3 + 510e-6, 0.002 + 2e-3 + 520e-6])
    assert cm.decode_run_times(10, 500, 0).shape == (0,)


def test_linear_rejects_bad_coefficients():
    with pytest.raises(ValueError, match="per_decode_seq_s"):
        LinearCostModel(overhead_s=0.001, per_decode_seq_s=-1e-6)
    with pytest.raises(ValueError, match="overhead_s"):
        LinearCostModel(overhead_s=0.0)
    with pytest.raises(ValueError, match="no KV capacity"):
        LinearCostModel(overhead_s=0.001).kv_capacity_blocks(16)


# ---- the roofline model ----------------------------------------------------

def test_roofline_by_hand():
    gpu = GpuSpec("toy", peak_flops=100e12, mem_bandwidth=1e12, mem_bytes=80 * 2**30)
    cm = RooflineCostModel(gpu, LLAMA_8B, compute_efficiency=0.5, memory_efficiency=0.8,
                           overhead_s=0.001, per_seq_overhead_s=1e-5)
    b = decode(4, 1000)
    memory = (LLAMA_8B.streamed_weight_bytes + 131_072 * (4000 + 4)) / 0.8e12
    compute = (LLAMA_8B.flops_per_token * 4 + LLAMA_8B.attn_flops_per_token_pair * 4000) / 50e12
    bd = cm.breakdown(b)
    assert bd["bound"] == "memory"
    assert bd["memory_s"] == pytest.approx(memory, rel=1e-12)
    assert bd["compute_s"] == pytest.approx(compute, rel=1e-12)
    assert bd["total_s"] == cm.step_time(b) == pytest.approx(0.001 + 4e-5 + memory, rel=1e-12)
    assert cm.breakdown(prefill(4096))["bound"] == "compute"


def test_sanity_targets():
    h100 = MODELS["h100-llama-3.1-8b"].cost_model
    assert 0.005 <= h100.step_time(decode(1, 128)) <= 0.008
    l4 = MODELS["l4-qwen1.5-1.8b-chat"].cost_model
    t1 = l4.step_time(decode(1, 128))
    assert 0.012 <= t1 <= 0.020
    assert l4.breakdown(decode(1, 128))["bound"] == "memory"
    # batching decode is cheap per token; long contexts cost KV reads
    assert l4.step_time(decode(32, 128)) < 2 * t1
    assert l4.step_time(decode(32, 1024)) > l4.step_time(decode(32, 128))
    # a 2048-token prefill is compute-bound and several decode steps long
    assert l4.breakdown(prefill(2048))["bound"] == "compute"
    assert l4.step_time(prefill(2048)) > 4 * t1


# ---- linearisation ---------------------------------------------------------

def test_linearize_recovers_a_linear_model_exactly():
    truth = LinearCostModel(overhead_s=0.004, per_prefill_token_s=3e-5, per_prefill_attn_s=2e-9,
                            per_prefill_seq_s=1e-4, per_decode_seq_s=5e-5, per_decode_ctx_token_s=4e-7)
    grid = batch_grid(max_num_seqs=256, max_num_batched_tokens=2048, max_model_len=2048)
    fit = linearize(truth, grid)
    assert fit.rel_err_max < 1e-6
    for key, value in truth.coefficients.items():
        assert fit.model.coefficients[key] == pytest.approx(value, rel=1e-4, abs=1e-15)


def test_bundled_linear_profile_is_the_fit_its_provenance_names():
    linear = MODELS["l4-qwen1.5-1.8b-chat-linear"]
    assert linear.provenance["derived_from"] == "l4-qwen1.5-1.8b-chat"
    fit = linearize_profile("l4-qwen1.5-1.8b-chat")
    for key, value in fit.model.coefficients.items():
        assert linear.cost_model.coefficients[key] == pytest.approx(value, rel=1e-6, abs=1e-15)
    assert fit.rel_err_mean == pytest.approx(linear.provenance["fit_rel_err_mean"], abs=1e-4)
    assert fit.rel_err_max == pytest.approx(linear.provenance["fit_rel_err_max"], abs=1e-4)
    assert fit.rel_err_mean < 0.10 and fit.rel_err_max < 0.40
    roof = MODELS["l4-qwen1.5-1.8b-chat"].cost_model
    for n, ctx in ((1, 128), (32, 512), (128, 1024)):
        assert linear.cost_model.step_time(decode(n, ctx)) == pytest.approx(roof.step_time(decode(n, ctx)),
                                                                           rel=0.06)
    assert linear.kv_capacity_blocks() == MODELS["l4-qwen1.5-1.8b-chat"].kv_capacity_blocks()


# ---- profile files ---------------------------------------------------------

DEFAULT_TEXT = (PROFILE_DIR / "l4-qwen1.5-1.8b-chat.toml").read_text()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    return path


def test_load_by_path_equals_load_by_name(tmp_path):
    path = write(tmp_path, DEFAULT_TEXT)
    by_path = load_profile(path)
    assert by_path.cost_model.step_time(decode(8, 300)) == \
        MODELS["l4-qwen1.5-1.8b-chat"].cost_model.step_time(decode(8, 300))


@pytest.mark.parametrize("old, new, message", [
    ("mem_bandwidth = 300e9", "", r"\[gpu\]\.mem_bandwidth: missing"),
    ("num_layers = 24", "num_layers = 24.5", r"\[model\]\.num_layers: expected an integer"),
    ('kind = "roofline"', 'kind = "forest"', r"\[cost_model\]\.kind: .*expected one of linear, roofline"),
    ("memory_efficiency = 0.8", "memory_efficiency = 1.8", r"\[cost_model\]\.memory_efficiency: must be <= 1"),
    ("overhead_s = 0.005", "overhead = 0.005", r"\[cost_model\]\.overhead: unknown key"),
    ('source = "derived-from-spec"', 'source = "guessed"', r"\[provenance\]\.source: expected one of"),
    ("gpu_memory_utilization = 0.70", "gpu_memory_utilization = 0.10", r"\[kv\]: .*does not fit"),
    ("max_num_seqs = 256", 'max_num_seqs = "many"', r"\[engine_defaults\]\.max_num_seqs: expected an integer"),
    ("[kv]", "[kv]\nnum_gpu_blocks = 100", r"\[kv\]\.num_gpu_blocks_block_size: missing"),
])
def test_bad_profile_errors_name_file_and_key(tmp_path, old, new, message):
    assert old in DEFAULT_TEXT
    path = write(tmp_path, DEFAULT_TEXT.replace(old, new, 1))
    with pytest.raises(ProfileError, match=message) as info:
        load_profile(path)
    assert str(path) in str(info.value)


def test_missing_table_and_bad_toml_and_unknown_name(tmp_path):
    start = DEFAULT_TEXT.index("[provenance]")
    with pytest.raises(ProfileError, match=r"bad.toml: \[provenance\]: missing table"):
        load_profile(write(tmp_path, DEFAULT_TEXT[:start]))
    with pytest.raises(ProfileError, match="not valid TOML"):
        load_profile(write(tmp_path, "[gpu\n"))
    with pytest.raises(ProfileError, match="unknown profile 'nope'.*l4-qwen1.5-1.8b-chat"):
        load_profile("nope")
    with pytest.raises(ProfileError, match="not found"):
        load_profile(tmp_path / "absent.toml")


def test_hostile_profile_files_are_clear_errors(tmp_path):
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe[gpu]\n")
    with pytest.raises(ProfileError, match="binary.toml: not UTF-8"):
        load_profile(binary)
    deep = tmp_path / "deep.toml"
    deep.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ProfileError, match="deep.toml"):
        load_profile(deep)
    folder = tmp_path / "folder.toml"
    folder.mkdir()
    with pytest.raises(ProfileError, match="folder.toml: is a folder"):
        load_profile(folder)


def test_measured_blocks_in_a_profile_win(tmp_path):
    text = DEFAULT_TEXT.replace("[kv]", "[kv]\nnum_gpu_blocks = 3000\nnum_gpu_blocks_block_size = 16", 1)
    profile = load_profile(write(tmp_path, text))
    assert profile.kv_capacity_blocks() == 3000
    assert profile.cost_model.kv_capacity_blocks(16) == 3000
    assert profile.kv_capacity_blocks(32) == 1500


# ---- the decode-sequence table of the linear model --------------------------

TABLED = dict(overhead_s=0.002, per_prefill_token_s=1e-4, per_prefill_attn_s=1e-8, per_prefill_seq_s=5e-4,
              per_decode_seq_s=7e-4, per_decode_ctx_token_s=1e-6,
              decode_seq_knots=[1, 4, 64], decode_seq_cost_s=[4e-3, 4.5e-3, 41e-3])
LINEAR_TEXT = (PROFILE_DIR / "l4-qwen1.5-1.8b-chat-linear.toml").read_text()
TABLE_LINES = "decode_seq_knots = [1, 4, 64]\ndecode_seq_cost_s = [4e-3, 4.5e-3, 41e-3]\n"


def test_decode_table_by_hand():
    cm = LinearCostModel(**TABLED)
    s = cm.decode_seqs_s
    assert s(0.0) == 0.0 and s(1.0) == 4e-3 and s(4.0) == 4.5e-3 and s(64.0) == 41e-3
    assert s(2.0) == pytest.approx(4e-3 + 0.5e-3 / 3, rel=1e-12)  # 1 -> 4: far cheaper per sequence, a kernel switch
    assert s(34.0) == pytest.approx(4.5e-3 + 36.5e-3 / 2, rel=1e-12)
    assert s(100.0) == pytest.approx(41e-3 + 36 * 7e-4, rel=1e-12)  # beyond the table: per_decode_seq_s each
    b = StepBatch(prefill_tokens=100, prefill_seqs=2, prefill_attn_tokens=5050.0, decode_seqs=4, decode_ctx_tokens=1000)
    assert cm.step_time(b) == pytest.approx(0.002 + 0.01 + 0.0000505 + 0.001 + 4.5e-3 + 0.001, rel=1e-12)
    assert cm.breakdown(b)["total_s"] == cm.step_time(b)
    assert s(1.0) > 3 * s(4.0) / 4  # what the table is for: one sequence alone costs far more than its share of 4
    assert cm.describe()["parameters"]["decode_seq_knots"] == [1, 4, 64]
    assert "decode_seq_knots" not in LinearCostModel(overhead_s=0.001).describe()["parameters"]


@settings(max_examples=150, deadline=None)
@given(num_seqs=st.one_of(st.integers(0, 80), st.sampled_from([1, 3, 4, 5, 63, 64, 65]), st.integers(0, 2**30)),
       ctx=st.one_of(st.integers(0, 10**6), st.integers(2**53, 2**62)), k=st.integers(0, 40))
def test_decode_table_keeps_decode_runs_bit_identical(num_seqs, ctx, k):
    cm = LinearCostModel(**TABLED)
    runs = cm.decode_run_times(num_seqs, ctx, k)
    one_by_one = [cm.step_time(StepBatch(decode_seqs=num_seqs, decode_ctx_tokens=ctx + j * num_seqs))
                  for j in range(k)]
    assert np.array_equal(bits(runs), bits(one_by_one))


@settings(max_examples=100, deadline=None)
@given(batch=batches)
def test_without_a_table_the_model_is_the_plain_formula_bit_for_bit(batch):
    """Profiles written before decode tables existed evaluate exactly as they did."""
    c = dict(overhead_s=0.002, per_prefill_token_s=1e-4, per_prefill_attn_s=1e-8, per_prefill_seq_s=5e-4,
             per_decode_seq_s=2e-4, per_decode_ctx_token_s=1e-6)
    expected = (c["overhead_s"] + c["per_prefill_token_s"] * float(batch.prefill_tokens)
                + c["per_prefill_attn_s"] * float(batch.prefill_attn_tokens)
                + c["per_prefill_seq_s"] * float(batch.prefill_seqs) + c["per_decode_seq_s"] * float(batch.decode_seqs)
                + c["per_decode_ctx_token_s"] * float(batch.decode_ctx_tokens))
    assert bits(LinearCostModel(**c).step_time(batch)) == bits(expected)


@settings(max_examples=60, deadline=None)
@given(batch=batches)
def test_decode_table_keeps_step_time_positive(batch):
    t = LinearCostModel(**{**TABLED, "decode_seq_cost_s": [0.0, 0.0, 0.0], "per_decode_seq_s": 0.0}).step_time(batch)
    assert math.isfinite(t) and t >= 0.002


@pytest.mark.parametrize("knots, costs, message", [
    ([1, 4], [1e-3], "same length"),
    ([4, 4], [1e-3, 2e-3], "strictly increasing"),
    ([0, 4], [1e-3, 2e-3], "integers >= 1"),
    ([1.5], [1e-3], "integers >= 1"),
    ([1], [-1e-3], "finite numbers >= 0"),
    ([1], [math.nan], "finite numbers >= 0"),
    ([1, 4], [4e-3, 2.5e-3], "non-decreasing"),  # more decode sequences cannot make a step cheaper
])
def test_decode_table_rejects_bad_tables(knots, costs, message):
    with pytest.raises(ValueError, match=message):
        LinearCostModel(overhead_s=0.001, decode_seq_knots=knots, decode_seq_cost_s=costs)


def test_profile_with_a_decode_table_loads_and_evaluates_it(tmp_path):
    path = write(tmp_path, LINEAR_TEXT.replace('kind = "linear"\n', 'kind = "linear"\n' + TABLE_LINES, 1))
    cm = load_profile(path).cost_model
    plain = MODELS["l4-qwen1.5-1.8b-chat-linear"].cost_model
    assert cm.decode_table == {"decode_seq_knots": [1, 4, 64], "decode_seq_cost_s": [4e-3, 4.5e-3, 41e-3]}
    assert plain.decode_seq_knots == ()  # the bundled profile has none and stays plain
    same = LinearCostModel(**plain.coefficients, decode_seq_knots=[1, 4, 64], decode_seq_cost_s=[4e-3, 4.5e-3, 41e-3])
    for b in (decode(1, 100), decode(3, 100), decode(300, 100), prefill(512), StepBatch(prefill_tokens=64, prefill_seqs=1,
                                                                                           decode_seqs=5, decode_ctx_tokens=500)):
        assert cm.step_time(b) == same.step_time(b)
    assert cm.step_time(prefill(512)) == plain.step_time(prefill(512))  # no decode sequences: the table adds nothing


@pytest.mark.parametrize("lines, message", [
    ("decode_seq_knots = [1, 4]\n", r"\[cost_model\]\.decode_seq_cost_s: missing"),
    ("decode_seq_cost_s = [1e-3]\n", r"\[cost_model\]\.decode_seq_knots: missing"),
    ("decode_seq_knots = [4, 1]\ndecode_seq_cost_s = [1e-3, 2e-3]\n", r"decode_seq_knots: must be strictly increasing"),
    ("decode_seq_knots = [1.0, 4.0]\ndecode_seq_cost_s = [1e-3, 2e-3]\n", r"decode_seq_knots: expected a non-empty list of integers"),
    ("decode_seq_knots = []\ndecode_seq_cost_s = []\n", r"decode_seq_knots: expected a non-empty list"),
    ("decode_seq_knots = [1, 4]\ndecode_seq_cost_s = [1e-3]\n", r"decode_seq_cost_s: expected one value per knot \(2\), got 1"),
    ("decode_seq_knots = [1]\ndecode_seq_cost_s = [-1e-3]\n", r"decode_seq_cost_s: expected a list of finite numbers >= 0"),
    ("decode_seq_knots = [1]\ndecode_seq_cost_s = 1e-3\n", r"decode_seq_cost_s: expected a list"),
])
def test_bad_decode_table_in_a_profile_names_the_key(tmp_path, lines, message):
    path = write(tmp_path, LINEAR_TEXT.replace('kind = "linear"\n', 'kind = "linear"\n' + lines, 1))
    with pytest.raises(ProfileError, match=message) as info:
        load_profile(path)
    assert str(path) in str(info.value)
