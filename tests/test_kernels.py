"""Profiles from measured kernels: the AIConfigurator source, the composer, the
token-table cost model, the build and the bundled kernel-composed profiles.

The kernel tables come from the ``kernels`` extra (aiconfigurator-core), which
tests/setup.sh installs; without it these tests fail with the install hint
rather than skip.
"""

from __future__ import annotations

import importlib.metadata
import json
import tomllib
from dataclasses import replace

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import driftsim
from driftsim.capacity.plan import _gpus_per_replica
from driftsim.cli.main import app
from driftsim.costmodel.batch import StepBatch
from driftsim.costmodel.kernels import aiconfigurator
from driftsim.costmodel.kernels.aiconfigurator import AIConfiguratorSource, data_root
from driftsim.costmodel.kernels.architecture import load_architecture
from driftsim.costmodel.kernels.build import HOST, build_profile, kernel_source
from driftsim.costmodel.kernels.compose import IterationBatch, IterationComposer
from driftsim.costmodel.kernels.source import KernelDataError, KernelSource
from driftsim.costmodel.profiles import PROFILE_DIR, ProfileError, list_profiles, load_profile
from driftsim.costmodel.tokentable import TokenTableCostModel
from driftsim.sim.scenario import build_engine, load_scenario
from tests.factories import random_trace

LLAMA = "meta-llama/Llama-3.1-8B"
KERNEL_PROFILES = [n for n in list_profiles() if n.endswith("-kernels")]
runner = CliRunner()


@pytest.fixture(scope="module")
def h100() -> AIConfiguratorSource:
    return AIConfiguratorSource("h100")


# ---- the source: interpolate inside the grid, refuse outside ---------------

def test_gemm_at_a_measured_point_is_the_measured_median_and_between_points_lies_between(h100):
    table = pl.read_parquet(data_root() / "h100_sxm/gemm/vllm/0.24.0/gemm_perf.parquet").filter(
        (pl.col("gemm_dtype") == "bfloat16") & (pl.col("n") == 4096) & (pl.col("k") == 4096))
    at = {m: table.filter(pl.col("m") == m)["latency"].median() * 1e-3 for m in (1024, 1280)}
    assert h100.gemm_time(1024, 4096, 4096) == pytest.approx(at[1024], rel=1e-12)
    mid = h100.gemm_time(1152, 4096, 4096)
    assert min(at.values()) <= mid <= max(at.values())
    assert isinstance(h100, KernelSource)


@pytest.mark.parametrize("call, words", [
    (lambda s: s.gemm_time(40_000, 4096, 4096), "outside the measured m range"),
    (lambda s: s.gemm_time(16, 100_000, 4096), "outside the measured range"),
    (lambda s: s.generation_attention_time(2048, 60_000, 32, 8, 128), "not measured around this point"),
    (lambda s: s.context_attention_time(1, 40_000, 32, 8, 128), "outside the measured range"),
    (lambda s: s.allreduce_time(1 << 20, 3), "measured only for 2, 4, 8 GPUs"),
])
def test_a_question_outside_the_grid_is_refused_with_what_is_covered(h100, call, words):
    with pytest.raises(KernelDataError, match=words):
        call(h100)


def test_unmeasured_kv_heads_are_split_into_measured_groups_of_the_same_work(h100):
    # 16 KV heads are not in the decode table; 16/16 heads over batch b == 8/8 heads over batch 2b
    assert h100.generation_attention_time(4, 512, 16, 16, 128) == h100.generation_attention_time(8, 512, 8, 8, 128)


def test_an_unknown_gpu_lists_the_covered_ones():
    with pytest.raises(KernelDataError, match="a100, h100, h200, l4, l40s"):
        kernel_source("b300")


def test_a_missing_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(aiconfigurator.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(KernelDataError, match=r"pip install 'driftsim\[kernels\]'"):
        AIConfiguratorSource("h100")


def test_l4_is_l40s_scaled_by_the_datasheet_ratios():
    l4, l40s = kernel_source("l4"), AIConfiguratorSource("l40s")
    ratio = l4.gemm_time(4096, 4096, 4096) / l40s.gemm_time(4096, 4096, 4096)
    assert ratio == pytest.approx(362 / 121)  # compute-bound
    assert l4.gemm_time(1, 4096, 4096) / l40s.gemm_time(1, 4096, 4096) == pytest.approx(864 / 300)  # memory-bound
    assert "transferred from NVIDIA L40S to NVIDIA L4" in l4.provenance()[0]


# ---- architectures ------------------------------------------------------------

@pytest.mark.parametrize("extra, words", [
    ({"num_local_experts": 8}, "mixture-of-experts"),
    ({"kv_lora_rank": 512}, "latent attention"),
    ({"sliding_window": 4096}, "sliding-window"),
])
def test_a_config_the_composer_cannot_model_is_refused_with_the_reason(tmp_path, extra, words):
    config = {"num_hidden_layers": 2, "hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 512,
              "vocab_size": 1000, **extra}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    with pytest.raises(KernelDataError, match=words):
        load_architecture(str(path))


def test_a_dense_config_json_reads_like_the_bundled_architecture(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32,
                                "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256,
                                "model_type": "llama", "tie_word_embeddings": False}))
    assert replace(load_architecture(str(path)), name=LLAMA) == load_architecture(LLAMA)


# ---- the composer ---------------------------------------------------------------

def test_decode_grows_with_batch_and_context_and_all_reduce_appears_only_with_tp(h100):
    one = IterationComposer(h100, load_architecture(LLAMA), tp=1, host=HOST)
    times = [one.time(IterationBatch(decode_ctx=(ctx,) * n)) for n, ctx in ((1, 512), (32, 512), (32, 4096))]
    assert times[0] < times[1] < times[2]
    assert one.breakdown(IterationBatch(decode_ctx=(512,)))["allreduce_s"] == 0.0
    four = IterationComposer(h100, load_architecture("meta-llama/Llama-3.1-70B"), tp=4, host=HOST)
    assert four.breakdown(IterationBatch(decode_ctx=(512,)))["allreduce_s"] > 0.0


def test_a_prefill_chunk_after_a_prefix_costs_more_attention_than_without(h100):
    c = IterationComposer(h100, load_architecture(LLAMA), tp=1, host=HOST)
    fresh = c.breakdown(IterationBatch(prefill_chunks=((0, 1024),)))
    after = c.breakdown(IterationBatch(prefill_chunks=((4096, 1024),)))
    assert after["prefill_attention_s"] > fresh["prefill_attention_s"]
    assert after["gemm_s"] == fresh["gemm_s"]


# ---- the token-table cost model -------------------------------------------------

TABLE = TokenTableCostModel(overhead_s=1e-3, token_knots=[1, 16, 256, 4096], token_cost_s=[1e-4, 2e-4, 3e-3, 5e-2],
                            per_token_s=1.2e-5, per_prefill_attn_s=1e-9, per_prefill_seq_s=1e-5,
                            per_prefill_step_s=2e-4, per_decode_seq_s=2e-6, per_decode_step_s=3e-4,
                            per_decode_ctx_token_s=3e-8)


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 5000), ctx=st.integers(0, 10**7), k=st.integers(1, 40))
def test_token_table_decode_runs_equal_single_steps_bit_for_bit(n, ctx, k):
    run = TABLE.decode_run_times(n, ctx, k)
    single = [TABLE.step_time(StepBatch(decode_seqs=n, decode_ctx_tokens=ctx + j * n)) for j in range(k)]
    assert run.tolist() == single


@settings(max_examples=80, deadline=None)
@given(p=st.integers(0, 20000), d=st.integers(0, 600), extra=st.integers(1, 5000),
       field=st.sampled_from(["prefill_tokens", "prefill_seqs", "prefill_attn_tokens", "decode_seqs",
                              "decode_ctx_tokens"]))
def test_token_table_is_non_decreasing_in_every_kind_of_work(p, d, extra, field):
    batch = StepBatch(prefill_tokens=p, prefill_seqs=min(p, 3), prefill_attn_tokens=p * p / 2, decode_seqs=d,
                      decode_ctx_tokens=d * 300)
    if batch.total_tokens == 0:
        return
    bigger = replace(batch, **{field: getattr(batch, field) + extra})
    assert TABLE.step_time(bigger) >= TABLE.step_time(batch) > 0


def test_an_attention_floor_is_paid_once_per_step_that_has_that_phase():
    bare = TokenTableCostModel(**{**TABLE.coefficients, "per_prefill_step_s": 0.0, "per_decode_step_s": 0.0},
                               token_knots=TABLE.token_knots, token_cost_s=TABLE.token_cost_s)
    prefill = StepBatch(prefill_tokens=300, prefill_seqs=3, prefill_attn_tokens=15_000.0)
    decode = StepBatch(decode_seqs=40, decode_ctx_tokens=40_000)
    mixed = replace(prefill, decode_seqs=40, decode_ctx_tokens=40_000)
    for batch, floors in ((prefill, 2e-4), (decode, 3e-4), (mixed, 5e-4)):
        assert TABLE.step_time(batch) - bare.step_time(batch) == pytest.approx(floors, rel=1e-9)
    # the floor does not scale with the phase's size: more sequences add only their own terms
    more = replace(prefill, prefill_seqs=6)
    assert TABLE.step_time(more) - TABLE.step_time(prefill) == pytest.approx(3 * 1e-5, rel=1e-9)


def test_a_token_table_profile_without_the_floors_loads_with_them_at_zero_and_a_negative_one_is_named(tmp_path):
    text = (PROFILE_DIR / "h100-llama-3.1-8b-kernels.toml").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if not line.startswith(("per_prefill_step_s", "per_decode_step_s"))]
    old = tmp_path / "old.toml"
    old.write_text("\n".join(lines) + "\n")
    model = load_profile(old).cost_model
    assert model.per_prefill_step_s == 0.0 and model.per_decode_step_s == 0.0
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace("per_decode_step_s = ", "per_decode_step_s = -", 1))
    with pytest.raises(ProfileError, match="per_decode_step_s"):
        load_profile(bad)


def test_the_host_overhead_is_paid_per_step_and_per_scheduled_sequence(h100):
    c = IterationComposer(h100, load_architecture(LLAMA), tp=1, host=HOST)
    one = c.breakdown(IterationBatch(decode_ctx=(500,)))["host_s"]
    many = c.breakdown(IterationBatch(prefill_chunks=((0, 64),), decode_ctx=(500,) * 9))["host_s"]
    assert one == pytest.approx(HOST.per_step_s + HOST.per_seq_s)
    assert many - one == pytest.approx(9 * HOST.per_seq_s)
    assert HOST.per_seq_s > 0 and "inference-sim/inference-sim" in HOST.source


def test_every_layer_pays_its_small_kernels_whatever_the_batch(h100):
    """Norms, rotary, activation and the cache write are not in the tables: BLIS's per-layer time stands for
    their fixed part, once per layer of the step, the same for one decode as for a full prefill."""
    arch = load_architecture(LLAMA)
    c = IterationComposer(h100, arch, tp=1, host=HOST)
    bare = IterationComposer(h100, arch, tp=1, host=HOST.__class__(HOST.per_step_s, HOST.per_seq_s, HOST.source))
    for batch in (IterationBatch(decode_ctx=(500,)), IterationBatch(prefill_chunks=((0, 2048),), decode_ctx=(500,) * 9)):
        parts = c.breakdown(batch)
        assert parts["small_kernels_s"] == pytest.approx(arch.num_layers * 32.09546717e-6)
        assert parts["total_s"] - bare.breakdown(batch)["total_s"] == pytest.approx(parts["small_kernels_s"])
    assert "beta5 = 32.09546717 us per layer" in HOST.source


def test_element_wise_kernels_move_their_bytes_per_token_at_the_measured_streaming_bandwidth(h100):
    """A prefill of thousands of tokens moves gigabytes through norms, rotary, SiLU-and-mul and the cache
    write; the tables time none of it. Bytes per token and layer counted by hand for Llama-3.1-8B."""
    arch = load_architecture(LLAMA)
    # 2 norms x 4 x 4096 + rotary 2 x (4096 + 1024) + cache write 4 x 1024 + SiLU-and-mul 3 x 14336, bf16
    assert arch.elementwise_bytes_per_token_layer(1) == (32768 + 10240 + 4096 + 43008) * 2
    assert arch.elementwise_bytes_per_token_layer(2) == (32768 + 5120 + 2048 + 21504) * 2  # norms replicated
    c = IterationComposer(h100, arch, tp=1, host=HOST)
    weights = arch.layer_matmul_params * arch.dtype_bytes
    one_token = c.breakdown(IterationBatch(decode_ctx=(2,)))["gemm_s"] / arch.num_layers
    bandwidth = weights / one_token
    assert 0.6 * 3.35e12 < bandwidth < 3.35e12  # the H100's datasheet 3.35 TB/s, reached in part
    for n in (1, 512, 4096):
        parts = c.breakdown(IterationBatch(prefill_chunks=((0, n),)))
        assert parts["elementwise_s"] == pytest.approx(arch.num_layers * n * (32768 + 10240 + 4096 + 43008) * 2
                                                       / bandwidth)
    assert c.breakdown(IterationBatch(prefill_chunks=((0, 4096),)))["elementwise_s"] > 4e-3  # > 4 ms: not noise


def test_a_falling_token_table_is_rejected():
    with pytest.raises(ValueError, match="non-decreasing"):
        TokenTableCostModel(overhead_s=1e-3, token_knots=[1, 2], token_cost_s=[2e-3, 1e-3])


# ---- build and the bundled profiles ----------------------------------------------

def test_a_build_is_deterministic_and_loads_as_a_profile(tmp_path):
    first, result = build_profile(gpu="h100", model=LLAMA, samples=300, date="2026-12-05")
    second, _ = build_profile(gpu="h100", model=LLAMA, samples=300, date="2026-12-05")
    assert first == second
    path = tmp_path / "p.toml"
    path.write_text(first)
    profile = load_profile(path)
    assert profile.provenance["source"] == "measured-kernels"
    assert any("h100_sxm/gemm/vllm/0.24.0" in s for s in profile.provenance["spec_sources"])
    assert result.errors["fitted"]["decode_median"] < 0.05


def test_every_bundled_gpu_and_model_has_a_kernel_profile():
    assert len(KERNEL_PROFILES) == 29
    for gpu in ("a100", "h100", "h200", "l40s", "l4"):
        for model in ("llama-3.1-8b", "qwen2.5-7b", "qwen1.5-1.8b-chat", "mistral-7b-v0.3"):
            assert f"{gpu}-{model}-kernels" in KERNEL_PROFILES
    assert {"a100-llama-3.1-8b", "h100-llama-3.1-8b", "l4-qwen1.5-1.8b-chat"} <= set(list_profiles())


@pytest.mark.parametrize("name", KERNEL_PROFILES)
def test_a_bundled_kernel_profile_is_reproduced_by_rebuilding_it(name):
    bundled = tomllib.loads((PROFILE_DIR / f"{name}.toml").read_text())
    built_with = next(s for s in bundled["provenance"]["spec_sources"] if s.startswith("aiconfigurator-core"))
    assert built_with.split()[1] == importlib.metadata.version("aiconfigurator-core"), \
        f"{name} was built from {built_with.split()[:2]}; install that version (tests/setup.sh pins it)"
    gpu = name.split("-", 1)[0]
    model = bundled["model"]["name"]
    tp = bundled["engine_defaults"]["tensor_parallel_size"]
    text, _ = build_profile(gpu=gpu, model=model, tp=tp, date=bundled["provenance"]["date"])
    rebuilt = tomllib.loads(text)
    for key in ("heldout_error_fitted", "heldout_error_roofline"):
        for k, v in bundled["provenance"].get(key, {}).items():
            assert rebuilt["provenance"][key][k] == pytest.approx(v, abs=2e-4), (key, k)
    for k, v in bundled["cost_model"].items():
        if isinstance(v, float):
            assert rebuilt["cost_model"][k] == pytest.approx(v, rel=1e-6, abs=1e-15), k
    assert rebuilt["cost_model"]["token_cost_s"] == pytest.approx(bundled["cost_model"]["token_cost_s"], rel=1e-6)


@pytest.mark.parametrize("name", ["h100-llama-3.1-8b-kernels", "h100-llama-3.1-70b-tp4-kernels",
                                  "l4-qwen1.5-1.8b-chat-kernels"])
def test_a_bundled_kernel_profile_simulates(name):
    profile = load_profile(name)
    trace = random_trace(60, rate=10.0, seed=0)
    result = driftsim.simulate(trace, cost=profile.cost_model,
                               engine=driftsim.EngineConfig(mode="continuous", max_num_seqs=64))
    assert result.requests.height == 60
    ttft = result.requests["ttft_s"].to_numpy()
    assert np.isfinite(ttft).all() and (ttft > 0).all()


# ---- the command ------------------------------------------------------------------

def test_profiles_build_writes_a_profile_and_prints_its_error(tmp_path):
    out = tmp_path / "p.toml"
    res = runner.invoke(app, ["profiles", "build", "--gpu", "a100", "--model", LLAMA, "--samples", "300",
                              "--out", str(out), "--date", "2026-12-05"])
    assert res.exit_code == 0, res.output
    assert "held-out error" in res.output and out.is_file()
    assert "coverage: sampled up to the engine's limits (2048 tokens, 256 sequences" in " ".join(res.output.split())
    assert load_profile(out).name == "a100-llama-3.1-8b-kernels"


def test_profiles_build_on_an_uncovered_gpu_exits_2_naming_the_flag():
    res = runner.invoke(app, ["profiles", "build", "--gpu", "l40", "--model", LLAMA])
    assert res.exit_code == 2
    assert "--gpu 'l40'" in res.output and "covered GPUs" in res.output


def test_a_tensor_parallel_replica_is_priced_per_gpu_in_a_gpu_mix():
    assert _gpus_per_replica("h100-llama-3.1-70b-tp4-kernels") == 4
    assert _gpus_per_replica("h100-llama-3.1-8b") == 1
    group = load_profile("h100-llama-3.1-70b-tp4-kernels")
    assert group.gpu.mem_bytes == 4 * load_profile("h100-llama-3.1-8b-kernels").gpu.mem_bytes


# ---- the engine as `vllm serve` runs it on each GPU ---------------------------------

GIB = 2**30


def _vllm_serve_limits(device_name: str, device_memory: int) -> tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) of `vllm serve` by vLLM 0.32's rule
    (vllm/engine/arg_utils.py:2923-2952): one GPU's total memory in GiB, and 'a100' in its name."""
    if device_memory >= 160 * GIB:
        return 16384, 1024
    if device_memory >= 70 * GIB and "a100" not in device_name.lower():
        return 8192, 1024
    return 2048, 256


@pytest.mark.parametrize("gpu, limits", [("a100", (2048, 256)), ("h100", (8192, 1024)), ("h200", (8192, 1024)),
                                         ("l40s", (2048, 256)), ("l4", (2048, 256))])
def test_a_kernel_profile_batches_as_vllm_serve_does_on_its_gpu(gpu, limits):
    profiles = [load_profile(n) for n in KERNEL_PROFILES if n.split("-", 1)[0] == gpu]
    assert profiles
    for profile in profiles:
        d = profile.engine_defaults
        per_gpu = profile.gpu.mem_bytes // d["tensor_parallel_size"]  # vLLM classes a TP group by one card
        rule = _vllm_serve_limits(profile.gpu.name, per_gpu)
        assert (d["max_num_batched_tokens"], d["max_num_seqs"]) == rule == limits, profile.name
        assert d["block_size"] == 16 and d["gpu_memory_utilization"] == 0.92, profile.name
        assert f"max_num_batched_tokens {limits[0]} and max_num_seqs {limits[1]}" in profile.provenance["engine_defaults"]


def test_async_scheduling_is_on_for_the_gpu_kernel_profiles_and_off_for_cpu_and_spec_profiles():
    def engine(profile: str):
        scenario = load_scenario(overrides={"profile": profile, "engine": {"mode": "continuous"}})
        return build_engine(scenario, load_profile(profile))

    for name in KERNEL_PROFILES:
        eng = engine(name)
        assert eng.async_scheduling and eng.chunked_prefill and eng.prefix_caching, name
    spec = [n for n in list_profiles() if load_profile(n).provenance["source"] == "derived-from-spec"]
    assert len(spec) == 4
    tiny = str(PROFILE_DIR.parents[1] / "bench" / "prefix" / "tiny-cpu.toml")
    for name in [*spec, tiny]:
        assert "async_scheduling" not in load_profile(name).engine_defaults, name
        assert not engine(name).async_scheduling, name


# A fitted model's held-out error meets median <= 3 % and P90 <= 8 % (as fractions), except where named here:
# the Qwen1.5-1.8B-Chat profiles, whose attention-heavy steps the step totals cannot carry (PROFILING.md);
# each named miss keeps a ceiling just above its current value, so a worse fit still fails.
ERROR_MISSES = {
    "a100-qwen1.5-1.8b-chat-kernels": {"decode_median": 0.04, "decode_p90": 0.095},
    "h100-qwen1.5-1.8b-chat-kernels": {"prefill_median": 0.045, "prefill_p90": 0.09, "mixed_median": 0.035},
    "h200-qwen1.5-1.8b-chat-kernels": {"prefill_median": 0.045, "prefill_p90": 0.09, "mixed_median": 0.035},
    "l40s-qwen1.5-1.8b-chat-kernels": {"decode_median": 0.05, "decode_p90": 0.095, "mixed_median": 0.035},
    "l4-qwen1.5-1.8b-chat-kernels": {"decode_median": 0.05, "decode_p90": 0.1, "mixed_median": 0.035},
}


@pytest.mark.parametrize("name", KERNEL_PROFILES)
def test_a_kernel_profile_meets_its_held_out_error_target(name):
    errors = load_profile(name).provenance["heldout_error_fitted"]
    assert set(errors) == {f"{p}_{s}" for p in ("decode", "prefill", "mixed") for s in ("median", "p90")}
    for key, value in errors.items():
        ceiling = ERROR_MISSES.get(name, {}).get(key, 0.03 if key.endswith("median") else 0.08)
        assert value <= ceiling, (name, key, value)


def test_a_kernel_profile_fit_reaches_its_engine_limits_and_names_where_the_tables_stop():
    profile = load_profile("h100-llama-3.1-8b-kernels")
    coverage = profile.provenance["fit_coverage"]
    assert "sampled up to the engine's limits (8192 tokens, 1024 sequences" in coverage
    reached = [int(x) for x in coverage.split("fitted batches reach ")[1].split(" decode sequences")[0].split(" tokens and ")]
    assert reached[0] >= 4096 and reached[1] >= 512
    assert "decode steps of 1024 sequences are measured only up to a mean context of" in coverage


def test_simulate_on_a_kernel_profile_runs_vllm_serve_limits_and_flags_or_a_scenario_override_them(tmp_path):
    base = ["simulate", "--profile", "h100-llama-3.1-8b-kernels", "--num-prompts", "40", "--input-len", "128",
            "--output-len", "16", "--seed", "0"]
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    assert "max_num_seqs 1024, max_num_batched_tokens 8192, max_model_len 8192, async scheduling" in res.output
    res = runner.invoke(app, [*base, "--max-num-seqs", "64", "--max-num-batched-tokens", "2048",
                              "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    assert "max_num_seqs 64, max_num_batched_tokens 2048," in res.output
    scenario = load_scenario(overrides={"profile": "h100-llama-3.1-8b-kernels",
                                        "engine": {"mode": "continuous", "max_num_seqs": 128,
                                                   "async_scheduling": False}})
    eng = build_engine(scenario, load_profile("h100-llama-3.1-8b-kernels"))
    assert (eng.max_num_seqs, eng.max_num_batched_tokens, eng.async_scheduling) == (128, 8192, False)


def test_a_build_past_the_token_tables_last_knot_is_refused_not_extrapolated(monkeypatch):
    from driftsim.costmodel.kernels import build as kbuild

    monkeypatch.setitem(kbuild.SERVE_BATCH_LIMITS, "h100", kbuild.BatchLimits(16384, 1024, "a >= 160 GiB card"))
    with pytest.raises(KernelDataError, match="max_num_batched_tokens 16384 is past the token table's last knot 8192"):
        build_profile(gpu="h100", model=LLAMA, samples=300, date="2026-12-05")
