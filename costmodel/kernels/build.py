"""A profile from measured kernels: sample batches, compose their times, fit
driftsim's token-table step-time model to them, score the
fit on held-out batches, and write the profile TOML with its provenance.

Deterministic: the batches come from one seeded ``numpy.random.Generator``,
the fit is a non-negative least-squares solve, and the TOML is written in a
fixed order, so the same tables, model, GPU and seed give the same bytes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import nnls

from driftsim.costmodel.hardware import GpuSpec, ModelArch
from driftsim.costmodel.kernels.aiconfigurator import AIConfiguratorSource
from driftsim.costmodel.kernels.architecture import load_architecture
from driftsim.costmodel.kernels.compose import HostOverhead, IterationBatch, IterationComposer
from driftsim.costmodel.kernels.source import KernelDataError, KernelSource
from driftsim.costmodel.kernels.transfer import TransferredSource
from driftsim.costmodel.kv import KvCapacity
from driftsim.costmodel.roofline import RooflineCostModel
from driftsim.costmodel.tokentable import TokenTableCostModel

# Knots of the token table. Between 128 and 2048 tokens they are quarter- to half-octave apart: the
# measured GEMM times step at tile and wave boundaries between powers of two, and with vLLM's 2048-token
# budget on A100, L40S and L4 every prefill step lies there (octave knots left L4 prefill at 9.5 % P90).
TOKEN_KNOTS = (1, 2, 4, 8, 16, 32, 64, 128, 192, 256, 384, 512, 640, 768, 1024, 1280, 1536, 2048, 3072, 4096,
               6144, 8192)
PHASES = ("decode", "prefill", "mixed")
# Host-side time per step and per scheduled sequence, and the small kernels' time per layer: BLIS's
# (inference-sim/inference-sim, Apache-2.0) trained-physics step-time model, fitted by simulating 15 real
# vLLM serving runs on H100 SXM and matching their mean TTFT and E2E latency. Its roofline corrections stand
# for the GEMMs and attention, which the tables time here instead; its per-layer term stands for what the
# tables leave out (launches, norms and the other small kernels), so it is taken with the two overheads.
HOST = HostOverhead(
    per_step_s=126.024825e-6, per_seq_s=4.41684444e-6, per_layer_s=32.09546717e-6,
    source="BLIS trained-physics coefficients (github.com/inference-sim/inference-sim, Apache-2.0, commit "
           "f90a1e3a6787da17c2cd463dab6fb2660b1b1760, defaults.yaml trained_physics_coefficients.beta_coeffs, "
           "iteration 29): beta7 = 126.024825 us per step (constant per-step overhead: CUDA synchronisation, "
           "sampler invocation, logging), beta6 = 4.41684444 us per request in the step's batch (scheduling "
           "and dispatch: queue management, attention metadata, token id lookup) and beta5 = 32.09546717 us per "
           "layer (per-layer overhead: kernel launches, norms; the small kernels the measured tables do not "
           "hold), fitted jointly with its roofline terms by simulating 15 vLLM serving runs on NVIDIA H100 80GB "
           "HBM3 (the inference-sim vLLM fork with step tracing; its version is not stated) and matching their "
           "mean TTFT and E2E latency; applied unchanged to every GPU and model; BLIS's roofline corrections "
           "stand for the GEMMs and attention, which the tables time, and are not added")
# Datasheet numbers of each GPU, for KV capacity (memory) and the roofline comparison.
GPU_SPECS = {
    "a100": GpuSpec("NVIDIA A100 SXM 80GB", 312e12, 2039e9, 85_899_345_920),
    "h100": GpuSpec("NVIDIA H100 SXM 80GB", 989e12, 3350e9, 85_520_809_984),
    "h200": GpuSpec("NVIDIA H200 SXM 141GB", 989e12, 4800e9, 150_754_820_096),
    "l40s": GpuSpec("NVIDIA L40S", 362e12, 864e9, 48_305_799_168),
    "l4": GpuSpec("NVIDIA L4", 121e12, 300e9, 24_153_423_872),
}
TRANSFERRED = {"l4": "l40s"}  # GPU without measured tables -> the measured card of its generation
# The spec-derived profiles' guessed roofline parameters, for "what the old profiles missed".
ROOFLINE_GUESSES = {
    "a100": dict(compute_efficiency=0.6, memory_efficiency=0.85, overhead_s=0.001, per_seq_overhead_s=1e-5),
    "h100": dict(compute_efficiency=0.5, memory_efficiency=0.8, overhead_s=0.001, per_seq_overhead_s=1e-5),
    "l4": dict(compute_efficiency=0.5, memory_efficiency=0.8, overhead_s=0.005, per_seq_overhead_s=2e-5),
}
# `vllm serve`'s engine settings as vLLM 0.32.0 chooses them on a CUDA GPU for a dense generation model
# (paths under vllm/ of the vllm 0.32.0 wheel). The batch limits depend on the card (SERVE_BATCH_LIMITS);
# these do not:
#  - block_size 16: config/cache.py:72 (DEFAULT_BLOCK_SIZE) and :345 (taken when --block-size is not given);
#  - gpu_memory_utilization 0.92: config/cache.py:102;
#  - chunked prefill and prefix caching on: engine/arg_utils.py:2987-2994 and :3021-3022 take
#    model_config.is_chunked_prefill_supported / is_prefix_caching_supported, true for a generative
#    decoder (config/model.py:2211-2218 and :2271-2273);
#  - async scheduling on: config/vllm.py:1585-1644 turns it on unless the model pools, speculative
#    decoding of an unsupported kind is set, the executor does not support it, or pipeline parallelism
#    runs on the V1 runner. One GPU runs the uni-process executor and tensor parallelism the
#    multiprocessing one (config/parallel.py:1035-1046); both support it (v1/executor/uniproc_executor.py:157,
#    v1/executor/multiproc_executor.py:565), so it is on for every bundled kernel profile, TP ones included.
# max_model_len is not vLLM's (vLLM takes the model's context length, 131,072 tokens for Llama 3.1); see
# engine_defaults().
ENGINE_DEFAULTS = dict(block_size=16, max_model_len=8192, gpu_memory_utilization=0.92, chunked_prefill=True,
                       prefix_caching=True, async_scheduling=True)
SERVE_VLLM = "0.32.0"


@dataclass(frozen=True)
class BatchLimits:
    """vLLM's default per-step limits for `vllm serve` on one kind of card, and the source line saying so."""

    max_num_batched_tokens: int  # tokens per step
    max_num_seqs: int  # sequences per step
    rule: str  # the vLLM source that sets them


# vLLM 0.32.0 engine/arg_utils.py:2894-2952 (EngineArgs.get_batch_defaults, the OPENAI_API_SERVER entries,
# applied by _set_default_max_num_seqs_and_batched_tokens_args at :3097-3127): device memory is
# current_platform.get_device_total_memory() (platforms/cuda.py:801-804: NVML total memory of one GPU, in
# bytes; GiB_bytes = 2**30, utils/mem_constants.py:18), so a tensor-parallel group is classed by one card.
# The third class, >= 160 GiB per GPU (B200, B300: 16384 tokens, 1024 sequences, :2923-2932), has no card here.
_LARGE = "engine/arg_utils.py:2933-2942 (>= 70 GiB per GPU and 'a100' not in the device name: H100, H200)"
_OTHER = ("engine/arg_utils.py:2943-2952 (every other GPU; A100 80GB on purpose, by name, at :2930-2933: "
          "larger limits lowered its throughput, vLLM PR #17885)")
SERVE_BATCH_LIMITS = {
    "a100": BatchLimits(2048, 256, _OTHER),  # 80 GiB, but named A100
    "h100": BatchLimits(8192, 1024, _LARGE),  # 79.6 GiB (NVML)
    "h200": BatchLimits(8192, 1024, _LARGE),  # 141 GB = 140.4 GiB < 160 GiB
    "l40s": BatchLimits(2048, 256, _OTHER),  # 48 GB = 45 GiB
    "l4": BatchLimits(2048, 256, _OTHER),  # 24 GB = 22.5 GiB
}
ACTIVATION_RESERVE = 2_147_483_648  # B per GPU: the spec profiles' rounded guess of 2 GiB


@dataclass
class BuildResult:
    """A fitted model, its held-out errors and what it was built from."""

    model: TokenTableCostModel
    errors: dict[str, dict[str, float]]  # "fitted"/"roofline" -> "{phase}_median"/"{phase}_p90" -> fraction
    samples: int
    refused: int  # sampled batches outside the measured grid (not used)
    provenance: list[str] = field(default_factory=list)
    coverage: str = ""  # what the fitted batches reach against the engine's limits


def sample_batches(rng: np.random.Generator, count: int, *, max_tokens: int, max_seqs: int,
                   max_ctx: int) -> list[tuple[str, IterationBatch]]:
    """``count`` batches of the three phases, shaped like a continuous-batching engine's steps."""
    out = []
    for i in range(count):
        phase = PHASES[i % 3]
        decode: tuple[int, ...] = ()
        chunks: tuple[tuple[int, int], ...] = ()
        if phase in ("decode", "mixed"):
            n = int(round(math.exp(rng.uniform(0, math.log(max_seqs - 1)))))
            mean = math.exp(rng.uniform(math.log(16), math.log(max_ctx)))
            decode = tuple(int(x) for x in np.clip(rng.uniform(0.5, 1.5, n) * mean, 2, max_ctx))
        if phase in ("prefill", "mixed"):
            budget = max_tokens - len(decode)
            seqs = 1 if phase == "mixed" else int(rng.integers(1, 5))
            sizes = np.exp(rng.uniform(math.log(16), math.log(max(17, budget // seqs)), seqs)).astype(int)
            prefix = np.where(rng.random(seqs) < 0.5, 0,
                              np.exp(rng.uniform(math.log(16), math.log(max_ctx), seqs)).astype(int))
            chunks = tuple((int(c), int(s)) for c, s in zip(prefix, sizes))
        out.append((phase, IterationBatch(prefill_chunks=chunks, decode_ctx=decode)))
    return out


def _features(batch: IterationBatch) -> list[float]:
    """Columns of the token-table model: 1, ramps of T between knots, A, Sp, [Sp>0], D, [D>0], C."""
    b = batch.step_batch()
    T = float(b.total_tokens)
    knots = (0,) + TOKEN_KNOTS
    ramps = [min(1.0, max(0.0, (T - lo) / (hi - lo))) for lo, hi in zip(knots, knots[1:])]
    return [1.0, *ramps, b.prefill_attn_tokens, b.prefill_seqs, float(b.prefill_seqs > 0), b.decode_seqs,
            float(b.decode_seqs > 0), b.decode_ctx_tokens]


def fit_token_table(batches: list[IterationBatch], times: np.ndarray, *, name: str = "kernels") -> TokenTableCostModel:
    """Non-negative least squares on relative error; the table's increments are >= 0, so it rises."""
    X = np.array([_features(b) for b in batches], dtype=float)
    scale = X.max(axis=0)
    scale[scale == 0] = 1.0
    coef, _ = nnls((X / scale) / times[:, None], np.ones_like(times), maxiter=10_000)
    coef = coef / scale
    n = len(TOKEN_KNOTS)
    table = [float(v) for v in np.cumsum(coef[1:1 + n])]
    slope = (table[-1] - table[-2]) / (TOKEN_KNOTS[-1] - TOKEN_KNOTS[-2])
    return TokenTableCostModel(overhead_s=max(float(coef[0]), 1e-6), token_knots=list(TOKEN_KNOTS),
                               token_cost_s=table, per_token_s=max(0.0, slope),
                               per_prefill_attn_s=float(coef[n + 1]), per_prefill_seq_s=float(coef[n + 2]),
                               per_prefill_step_s=float(coef[n + 3]), per_decode_seq_s=float(coef[n + 4]),
                               per_decode_step_s=float(coef[n + 5]), per_decode_ctx_token_s=float(coef[n + 6]),
                               name=name)


def relative_errors(model, batches: list[tuple[str, IterationBatch]], times: np.ndarray) -> dict[str, float]:
    """Median and P90 of |model - composed| / composed, per phase."""
    pred = np.array([model.step_time(b.step_batch()) for _, b in batches])
    err = np.abs(pred - times) / times
    phases = np.array([p for p, _ in batches])
    out = {}
    for phase in PHASES:
        sel = err[phases == phase]
        if len(sel):
            out[f"{phase}_median"] = float(np.median(sel))
            out[f"{phase}_p90"] = float(np.quantile(sel, 0.9))
    return out


def build(source: KernelSource, arch: ModelArch, *, gpu: str, tp: int, samples: int = 1200,
          seed: int = 0) -> BuildResult:
    """Sample up to the profile's engine limits, compose, fit on 80 %, score on the held-out 20 %."""
    engine = engine_defaults(gpu, arch, tp)
    max_tokens, max_seqs, max_ctx = engine["max_num_batched_tokens"], engine["max_num_seqs"], engine["max_model_len"]
    if max_tokens > TOKEN_KNOTS[-1]:
        raise KernelDataError(f"--gpu {gpu}: vLLM's max_num_batched_tokens {max_tokens} is past the token table's "
                              f"last knot {TOKEN_KNOTS[-1]}; the fit would extrapolate every larger step")
    composer = IterationComposer(source, arch, tp=tp, host=HOST)
    rng = np.random.default_rng(seed)
    kept, times, refused, reasons = [], [], 0, {}
    for phase, batch in sample_batches(rng, samples, max_tokens=max_tokens, max_seqs=max_seqs, max_ctx=max_ctx):
        try:
            times.append(composer.time(batch))
        except KernelDataError as exc:
            refused += 1
            reasons.setdefault(phase, str(exc))
            continue
        kept.append((phase, batch))
    for phase in PHASES:
        have = sum(p == phase for p, _ in kept)
        if have < max(10, samples // 30):
            raise KernelDataError(f"only {have} sampled {phase} batches lie inside the measured grid "
                                  f"(first refusal: {reasons.get(phase)})")
    coverage = _coverage(composer, [b for _, b in kept], engine, refused=refused, samples=samples)
    y = np.array(times)
    order = rng.permutation(len(kept))
    cut = int(0.8 * len(kept))
    train, test = order[:cut], order[cut:]
    model = fit_token_table([kept[i][1] for i in train], y[train])
    held = [kept[i] for i in test]
    errors = {"fitted": relative_errors(model, held, y[test])}
    if gpu in ROOFLINE_GUESSES and tp == 1:
        roofline = RooflineCostModel(GPU_SPECS[gpu], arch, **ROOFLINE_GUESSES[gpu])
        errors["roofline"] = relative_errors(roofline, held, y[test])
    return BuildResult(model=model, errors=errors, samples=len(kept), refused=refused,
                       provenance=source.provenance(), coverage=coverage)


def _coverage(composer: IterationComposer, kept: list[IterationBatch], engine: dict, *, refused: int,
              samples: int) -> str:
    """What the fitted batches reach against the engine's limits; refuses a fit that stops short of them.

    The measured decode-attention table thins out as batch x context grows, so a full batch of
    ``max_num_seqs`` sequences is measured only up to some mean context; the probe finds it (by bisection,
    through the same composer) so the profile says where its model extrapolates instead of leaving it silent.
    """
    max_tokens, max_seqs, max_ctx = engine["max_num_batched_tokens"], engine["max_num_seqs"], engine["max_model_len"]
    top_tokens = max(sum(n for _, n in b.prefill_chunks) + len(b.decode_ctx) for b in kept)
    top_seqs = max(len(b.decode_ctx) for b in kept)
    if top_tokens < max_tokens // 2 or top_seqs < max_seqs // 2:
        raise KernelDataError(f"the batches inside the measured grid reach {top_tokens} tokens and {top_seqs} decode "
                              f"sequences per step, short of half the engine's limits ({max_tokens} tokens, "
                              f"{max_seqs} sequences)")

    def measured(ctx: int) -> bool:
        try:
            composer.time(IterationBatch(decode_ctx=(ctx,) * max_seqs))
            return True
        except KernelDataError:
            return False

    if measured(max_ctx):
        reach = f"decode steps of {max_seqs} sequences are measured up to the full max_model_len {max_ctx}"
    elif not measured(2):
        reach = f"decode steps of {max_seqs} sequences are not measured at any context"
    else:
        lo, hi = 2, max_ctx  # measured(lo), not measured(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if measured(mid) else (lo, mid)
        reach = (f"decode steps of {max_seqs} sequences are measured only up to a mean context of {lo} tokens "
                 f"(the measured decode-attention table thins out as batch x context grows); larger ones were "
                 f"refused, and the fitted model, not the tables, prices them: linear in context tokens")
    return (f"sampled up to the engine's limits ({max_tokens} tokens, {max_seqs} sequences, contexts up to "
            f"{max_ctx} tokens); {refused} of {samples} sampled batches lay outside the measured kernel grid and "
            f"were refused (no kernel time is extrapolated past the tables); fitted batches reach {top_tokens} tokens and {top_seqs} decode "
            f"sequences per step; {reach}")


def group_gpu(gpu: str, tp: int) -> GpuSpec:
    """The replica's GPU spec: a TP group of ``tp`` cards counts as one device with ``tp`` times the resources."""
    spec = GPU_SPECS[gpu]
    if tp == 1:
        return spec
    return GpuSpec(f"{tp}x {spec.name} (tensor parallel)", spec.peak_flops * tp, spec.mem_bandwidth * tp,
                   spec.mem_bytes * tp)


def check_fits(gpu: str, arch: ModelArch, tp: int) -> None:
    """Refuse a model whose weights leave no KV cache on the group."""
    util = ENGINE_DEFAULTS["gpu_memory_utilization"]
    kv = KvCapacity(gpu=group_gpu(gpu, tp), model=arch, gpu_memory_utilization=util,
                    activation_reserve_bytes=ACTIVATION_RESERVE * tp)
    try:
        kv.blocks(ENGINE_DEFAULTS["block_size"], util)
    except ValueError as exc:
        raise KernelDataError(f"--tp {tp}: {arch.name} does not fit on {tp} x {gpu}: {exc}") from None


def engine_defaults(gpu: str, arch: ModelArch, tp: int) -> dict:
    """`vllm serve`'s settings on ``gpu`` (ENGINE_DEFAULTS and SERVE_BATCH_LIMITS), in the profile's key order.

    max_model_len: vLLM would take the model's whole context length; a profile sets 8192 instead, halved
    (to 2048 at least) until the KV cache holds four full sequences, so the bundled runs' requests fit and
    one long request cannot take the whole cache.
    """
    limits = SERVE_BATCH_LIMITS[gpu]
    out = {"block_size": ENGINE_DEFAULTS["block_size"], "max_num_seqs": limits.max_num_seqs,
           "max_num_batched_tokens": limits.max_num_batched_tokens} | ENGINE_DEFAULTS
    kv = KvCapacity(gpu=group_gpu(gpu, tp), model=arch, gpu_memory_utilization=out["gpu_memory_utilization"],
                    activation_reserve_bytes=ACTIVATION_RESERVE * tp)
    tokens = kv.blocks(out["block_size"], out["gpu_memory_utilization"]) * out["block_size"]
    while out["max_model_len"] > 2048 and tokens < 4 * out["max_model_len"]:
        out["max_model_len"] //= 2
    return out


def profile_toml(result: BuildResult, *, name: str, gpu: str, arch: ModelArch, tp: int, engine_version: str,
                 date: str) -> str:
    """The profile file's text (fixed key order, so builds are byte-identical)."""
    spec = group_gpu(gpu, tp)
    m = result.model
    s = json.dumps
    lines = [
        "# Built by `driftsim profiles build` from measured vLLM kernel tables; see [provenance].",
        f"name = {s(name)}",
        f"description = {s(f'{arch.name} bf16 on {spec.name}, vLLM {engine_version} kernels (composed, fitted)')}",
        "", "[gpu]", f"name = {s(spec.name)}", f"peak_flops = {spec.peak_flops!r}",
        f"mem_bandwidth = {spec.mem_bandwidth!r}", f"mem_bytes = {spec.mem_bytes}",
        "", "[model]", f"name = {s(arch.name)}",
        *[f"{k} = {getattr(arch, k)}" for k in ("num_layers", "hidden_size", "num_heads", "num_kv_heads",
                                                 "intermediate_size", "vocab_size", "dtype_bytes")],
        f"tied_embeddings = {str(arch.tied_embeddings).lower()}", f"qkv_bias = {str(arch.qkv_bias).lower()}",
        *([f"head_dim = {arch.head_dim_override}"] if arch.head_dim_override else []),
        "", "[cost_model]", 'kind = "token-table"',
        *[f"{k} = {v!r}" for k, v in m.coefficients.items()],
        f"token_knots = {list(m.token_knots)}",
        f"token_cost_s = [{', '.join(repr(v) for v in m.token_cost_s)}]",
        "", "[kv]", f"activation_reserve_bytes = {ACTIVATION_RESERVE * tp}",
        "", "[engine_defaults]",
        f"# `vllm serve` {SERVE_VLLM} on this GPU (see engine_defaults in [provenance]), except max_model_len:",
        "# vLLM takes the model's context length; here 8192, halved (to 2048 at least) until the KV cache",
        "# holds four full sequences.",
        *[f"{k} = {_toml_value(v)}" for k, v in engine_defaults(gpu, arch, tp).items()],
        f"tensor_parallel_size = {tp}",
        "", "[provenance]", f"source = {s('transferred-kernels' if gpu in TRANSFERRED else 'measured-kernels')}",
        f"date = {s(date)}",
        f"notes = {s(_notes(result, tp))}",
        f"engine = {s(f'vLLM {engine_version}')}",
        f"engine_defaults = {s(_engine_note(gpu, tp))}",
        f"fit_coverage = {s(result.coverage)}",
        f"host_overhead = {s(HOST.source)}",
        "spec_sources = [", *[f"    {s(line)}," for line in result.provenance],
        f"    {s('GPU datasheet numbers (memory for KV capacity): ' + spec.name)},", "]",
        f"fit_samples = {result.samples}", f"fit_refused_outside_grid = {result.refused}",
    ]
    for which, errs in result.errors.items():
        lines += ["", f"[provenance.heldout_error_{which}]", *[f"{k} = {round(v, 5)!r}" for k, v in errs.items()]]
    return "\n".join(lines) + "\n"


def _toml_value(v) -> str:
    return str(v).lower() if isinstance(v, bool) else repr(v)


def _engine_note(gpu: str, tp: int) -> str:
    limits = SERVE_BATCH_LIMITS[gpu]
    return (f"vLLM {SERVE_VLLM}'s `vllm serve` defaults on {GPU_SPECS[gpu].name}: max_num_batched_tokens "
            f"{limits.max_num_batched_tokens} and max_num_seqs {limits.max_num_seqs} from vllm/{limits.rule}; block "
            "size 16 (config/cache.py:72), gpu_memory_utilization 0.92 (config/cache.py:102), chunked prefill and "
            "prefix caching on (engine/arg_utils.py:2987-3022), async scheduling on (config/vllm.py:1585-1644; "
            f"the {'multiprocessing executor of tensor parallelism supports it, v1/executor/multiproc_executor.py:565' if tp > 1 else 'uni-process executor supports it, v1/executor/uniproc_executor.py:157'})")


def _notes(result: BuildResult, tp: int) -> str:
    return (f"Step time composed from measured vLLM kernel times (GEMMs, prefill and decode attention"
            f"{', custom all-reduce' if tp > 1 else ''}, LM head) plus a host overhead per step and per scheduled sequence and a small-kernel time per layer, sampled over "
            f"{result.samples} batches inside the measured grid, and fitted (token-table form) by non-negative least squares on "
            "relative error (80 % of the batches; the error tables are on the other 20 %). Norms, rotary, "
            "activation, cache-write and sampling kernels are not in the tables: they are timed as the per-layer "
            "time plus their DRAM traffic per token (ModelArch.elementwise_bytes_per_token_layer) at the bandwidth "
            "the tables' one-token GEMMs reach streaming the layer's weights. KV capacity from datasheet memory; the "
            "activation reserve is the spec profiles' 2 GiB per GPU guess.")


def kernel_source(gpu: str, *, engine_version: str | None = None) -> KernelSource:
    """The measured source for ``gpu``, or the transferred one for a GPU without tables."""
    if gpu in TRANSFERRED:
        base = TRANSFERRED[gpu]
        return TransferredSource(AIConfiguratorSource(base, engine_version=engine_version),
                                 base=GPU_SPECS[base], target=GPU_SPECS[gpu])
    if gpu not in GPU_SPECS:
        raise KernelDataError(f"--gpu {gpu!r}: not covered; covered GPUs: {', '.join(sorted(GPU_SPECS))} "
                              f"({', '.join(f'{g} transferred from {b}' for g, b in TRANSFERRED.items())})")
    return AIConfiguratorSource(gpu, engine_version=engine_version)


def build_profile(*, gpu: str, model: str, tp: int = 1, engine_version: str | None = None, samples: int = 1200,
                  seed: int = 0, date: str, name: str | None = None) -> tuple[str, BuildResult]:
    """Everything `driftsim profiles build` does: (the profile TOML text, the build result)."""
    if tp < 1:
        raise KernelDataError(f"--tp {tp}: expected a positive tensor-parallel size")
    arch = load_architecture(model)
    source = kernel_source(gpu, engine_version=engine_version)
    check_fits(gpu, arch, tp)
    result = build(source, arch, gpu=gpu, tp=tp, samples=samples, seed=seed)
    version = getattr(source, "engine_version", None) or getattr(source.measured, "engine_version")
    short = arch.name.split("/")[-1].lower()
    name = name or f"{gpu}-{short}{f'-tp{tp}' if tp > 1 else ''}-kernels"
    text = profile_toml(result, name=name, gpu=gpu, arch=arch, tp=tp, engine_version=version, date=date)
    return text, result
