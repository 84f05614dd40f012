"""Plain, keyword-only configuration records for one simulation run.

Each record is frozen and validated on construction so a bad value fails
before any simulation starts, with the field name in the message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from driftsim.errors import ConfigError

__all__ = ["ConfigError", "EngineConfig", "GatewayConfig"]


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    """One engine replica (vLLM-like) and how it batches.

    ``mode="continuous"`` mirrors vLLM's iteration-level continuous batching;
    ``mode="microbatch"`` mirrors DriftSched's worker, which hands a whole
    micro-batch to one blocking ``generate()`` call.
    """

    mode: Literal["continuous", "microbatch"] = "continuous"
    max_num_seqs: int = 256  # sequences per iteration
    max_num_batched_tokens: int = 2048  # tokens per iteration (prefill + decode)
    block_size: int = 16  # tokens per KV block
    chunked_prefill: bool = True
    max_model_len: int = 2048  # prompt + output tokens per sequence
    gpu_memory_utilization: float = 0.9  # fraction of GPU memory vLLM may use
    num_gpu_blocks: int | None = None  # KV blocks; None = derive from the profile
    # micro-batch worker (DriftSched); the paper's experiment used 32 and 0.01 s
    batch_size: int = 32
    batch_wait_s: float = 0.01
    batch_poll_s: float = 0.005  # the worker re-checks an empty queue this often
    # 0: the batch is one blocking generate() (DriftSched), every request in the engine at once; > 0:
    # its requests reach the engine this far apart, in batch order, as when a gateway sends them as
    # concurrent HTTP requests to a server (validation measures it from the real sends)
    batch_intake_gap_s: float = 0.0
    # exact fast-forward over steps where nothing can change the batch
    fast_forward: bool = True
    # a lone replica fed the trace runs in the compiled core where it applies (FCFS in the engine, synchronous
    # scheduling, no prefix identity in use; see sim/stepcore.py), bit-identical to the Python engine;
    # False: always the Python engine, the reference
    compiled_core: bool = True
    # vLLM v1's async scheduling (the default of `vllm serve`): step k+1 is scheduled when step k
    # starts, so a request reaching the engine during step k runs from step k+2, and a slot or KV
    # freed by a request finishing in step k is reusable from step k+2 (see sim/engine.py)
    async_scheduling: bool = False
    # vLLM 0.32's scheduler_reserve_full_isl (on by default): a waiting or preempted request is
    # admitted only when its whole prompt (for a preempted one, everything it must recompute) fits
    # in the free KV blocks, not just its first chunk; off: only the chunk must fit (older vLLM)
    reserve_full_prompt: bool = True
    # vLLM's automatic prefix caching (on by default in vLLM v1): full prompt blocks of requests that
    # carry prefix identity are shared and kept, hittable, after their requests end, until evicted
    # least-recently-used (see sim/prefix_cache.py). Continuous mode only: a micro-batch worker
    # (DriftSched) runs without it
    prefix_caching: bool = True

    def __post_init__(self) -> None:
        _positive(self, "max_num_seqs", "max_num_batched_tokens", "block_size", "max_model_len", "batch_size")
        if self.mode not in ("continuous", "microbatch"):
            raise ConfigError(f"engine.mode: expected 'continuous' or 'microbatch', got {self.mode!r}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError(
                f"engine.gpu_memory_utilization: expected a fraction in (0, 1], got {self.gpu_memory_utilization}"
            )
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ConfigError(
                "engine.max_num_batched_tokens must be >= engine.max_num_seqs "
                f"(got {self.max_num_batched_tokens} < {self.max_num_seqs}), as vLLM requires"
            )
        if not self.chunked_prefill and self.max_num_batched_tokens < self.max_model_len:
            raise ConfigError(
                "engine.max_num_batched_tokens must be >= engine.max_model_len when chunked_prefill is off "
                f"(got {self.max_num_batched_tokens} < {self.max_model_len})"
            )
        if self.num_gpu_blocks is not None and self.num_gpu_blocks <= 0:
            raise ConfigError(f"engine.num_gpu_blocks: expected a positive integer, got {self.num_gpu_blocks}")
        if self.batch_wait_s < 0 or self.batch_poll_s <= 0:
            raise ConfigError("engine.batch_wait_s must be >= 0 and engine.batch_poll_s > 0")
        if not self.batch_intake_gap_s >= 0:
            raise ConfigError(f"engine.batch_intake_gap_s: expected seconds >= 0, got {self.batch_intake_gap_s}")


@dataclass(frozen=True, kw_only=True)
class GatewayConfig:
    """Admission in front of the replicas: per-tenant queues ordered by a policy.

    With ``max_outstanding`` unset every request is dispatched on arrival (a
    client talking straight to vLLM) and the policy never holds anything; set
    it to cap requests in flight per replica so the policy decides the order.
    ``placement="engine"`` instead orders each engine's own waiting queue by
    the policy (vLLM's ``priority`` scheduling generalised), with preemption
    of the running request the policy ranks last.
    """

    policy: str = "fifo"
    placement: Literal["gateway", "engine"] = "gateway"
    policy_params: dict[str, Any] = field(default_factory=dict)
    max_outstanding: int | None = None  # requests in flight per replica; None = no cap
    router: Literal["round_robin", "least_outstanding", "prefix_affinity"] = "least_outstanding"

    def __post_init__(self) -> None:
        if self.max_outstanding is not None and self.max_outstanding <= 0:
            raise ConfigError(f"gateway.max_outstanding: expected a positive integer, got {self.max_outstanding}")
        if self.placement not in ("gateway", "engine"):
            raise ConfigError(f"gateway.placement: expected 'gateway' or 'engine', got {self.placement!r}")
        if self.router not in ("round_robin", "least_outstanding", "prefix_affinity"):
            raise ConfigError("gateway.router: expected 'round_robin', 'least_outstanding' or 'prefix_affinity', "
                              f"got {self.router!r}")


def _positive(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"engine.{name}: expected a positive integer, got {value!r}")
