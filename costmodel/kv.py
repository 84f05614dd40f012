"""KV-cache capacity: how many blocks of ``block_size`` tokens the engine gets.

vLLM sizes its KV cache once at start-up:
``requested = total_memory * gpu_memory_utilization``; the KV pool is what is
left of it after weights, the activation peak of a profiling forward pass and
non-torch allocations (CUDA graphs, cuBLAS workspaces). The pool is cut into
blocks of ``block_size`` tokens. :func:`kv_capacity_blocks` does the same
arithmetic from spec numbers; :class:`KvCapacity` also accepts the block count
a real server reported (``vllm:cache_config_info`` ``num_gpu_blocks``), which
wins whenever it is present.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from driftsim.costmodel.hardware import GpuSpec, ModelArch


def _check_block_size(block_size: int) -> None:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")


def _check_utilization(gpu_memory_utilization: float) -> None:
    if not (isinstance(gpu_memory_utilization, (int, float)) and 0 < gpu_memory_utilization <= 1):
        raise ValueError(
            f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization!r}"
        )


def kv_capacity_blocks(
    gpu: GpuSpec,
    model: ModelArch,
    *,
    block_size: int,
    gpu_memory_utilization: float,
    activation_reserve_bytes: int,
) -> int:
    """KV blocks that fit: floor((mem * util - weights - reserve) / (block_size * kv_bytes_per_token)).

    ``activation_reserve_bytes`` (B) stands for everything vLLM keeps out of
    the pool besides the weights: the activation peak and non-torch memory.

    Raises ValueError when the model (plus reserve) does not fit at all, i.e.
    when not even one block is left.
    """
    _check_block_size(block_size)
    _check_utilization(gpu_memory_utilization)
    if activation_reserve_bytes < 0:
        raise ValueError(f"activation_reserve_bytes must be >= 0, got {activation_reserve_bytes!r}")
    budget = gpu.mem_bytes * gpu_memory_utilization
    free = budget - model.weight_bytes - activation_reserve_bytes
    block_bytes = block_size * model.kv_bytes_per_token
    blocks = math.floor(free / block_bytes) if free > 0 else 0
    if blocks <= 0:
        raise ValueError(
            f"{model.name} does not fit on {gpu.name} at gpu_memory_utilization="
            f"{gpu_memory_utilization}: {gpu.mem_bytes} B x {gpu_memory_utilization} = "
            f"{budget:.0f} B budget, weights {model.weight_bytes} B, reserve "
            f"{activation_reserve_bytes} B leave {free:.0f} B for KV, less than one "
            f"block of {block_bytes} B"
        )
    return blocks


@dataclass(frozen=True, slots=True)
class KvCapacity:
    """Where a cost model's KV capacity comes from.

    Either spec numbers (``gpu``, ``model``, ``activation_reserve_bytes``) or a
    measured ``num_gpu_blocks`` (with the ``measured_block_size`` it was
    counted in), or both. ``gpu_memory_utilization`` is the engine setting this
    capacity is for; for a measured count it is the setting of the server that
    reported it.

    Rules of :meth:`blocks`:

    1. measured, same block size and utilisation: the measured count, as is;
    2. measured, other block size: the same pool of tokens re-cut, floored;
    3. measured, other utilisation: the pool grows or shrinks by
       ``mem_bytes * (new - old)`` (vLLM's non-KV memory does not depend on
       the setting), which needs ``gpu`` and ``model``;
    4. no measurement: :func:`kv_capacity_blocks` from spec numbers.
    """

    gpu: GpuSpec | None = None
    model: ModelArch | None = None
    gpu_memory_utilization: float = 0.9  # fraction of device memory the engine may use
    activation_reserve_bytes: int = 0  # activation peak + non-torch memory kept out of the pool, B
    num_gpu_blocks: int | None = None  # measured block count (vLLM num_gpu_blocks), blocks
    measured_block_size: int | None = None  # tokens per block of the measured count

    def __post_init__(self) -> None:
        _check_utilization(self.gpu_memory_utilization)
        if self.activation_reserve_bytes < 0:
            raise ValueError("activation_reserve_bytes must be >= 0")
        if self.num_gpu_blocks is not None:
            if isinstance(self.num_gpu_blocks, bool) or not isinstance(self.num_gpu_blocks, int) \
                    or self.num_gpu_blocks <= 0:
                raise ValueError(f"num_gpu_blocks must be a positive int, got {self.num_gpu_blocks!r}")
            if self.measured_block_size is None:
                raise ValueError("num_gpu_blocks needs the measured_block_size it was counted in")
            _check_block_size(self.measured_block_size)
        elif self.gpu is None or self.model is None:
            raise ValueError("KvCapacity needs either num_gpu_blocks or both gpu and model")

    @property
    def measured(self) -> bool:
        return self.num_gpu_blocks is not None

    def blocks(self, block_size: int, gpu_memory_utilization: float | None = None) -> int:
        """Number of KV blocks of ``block_size`` tokens at the given utilisation
        (default: this capacity's own). Returns an int > 0 or raises ValueError."""
        _check_block_size(block_size)
        util = self.gpu_memory_utilization if gpu_memory_utilization is None else gpu_memory_utilization
        _check_utilization(util)
        if self.num_gpu_blocks is None:
            assert self.gpu is not None and self.model is not None
            return kv_capacity_blocks(
                self.gpu, self.model, block_size=block_size, gpu_memory_utilization=util,
                activation_reserve_bytes=self.activation_reserve_bytes,
            )
        assert self.measured_block_size is not None
        tokens = self.num_gpu_blocks * self.measured_block_size
        if util == self.gpu_memory_utilization:
            if block_size == self.measured_block_size:
                return self.num_gpu_blocks
            return tokens // block_size
        if self.gpu is None or self.model is None:
            raise ValueError(
                f"num_gpu_blocks was measured at gpu_memory_utilization="
                f"{self.gpu_memory_utilization}; rescaling it to {util} needs gpu and model"
            )
        pool = tokens * self.model.kv_bytes_per_token + self.gpu.mem_bytes * (util - self.gpu_memory_utilization)
        blocks = math.floor(pool / (block_size * self.model.kv_bytes_per_token)) if pool > 0 else 0
        if blocks <= 0:
            raise ValueError(
                f"no KV block left at gpu_memory_utilization={util} (measured "
                f"{self.num_gpu_blocks} blocks at {self.gpu_memory_utilization})"
            )
        return blocks

    def describe(self) -> dict:
        return {
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "activation_reserve_bytes": self.activation_reserve_bytes,
            "num_gpu_blocks": self.num_gpu_blocks,
            "measured_block_size": self.measured_block_size,
        }
