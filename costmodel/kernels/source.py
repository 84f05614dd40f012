"""The one interface a source of measured kernel times satisfies.

A source answers for one GPU and one engine version; every time is in seconds
for one GPU of the tensor-parallel group. A question outside the measured
grid raises :class:`KernelDataError` naming what the grid covers: a source
interpolates, it never extrapolates.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from driftsim.errors import ConfigError


class KernelDataError(ConfigError):
    """The kernel tables are missing or do not cover the question asked."""


@runtime_checkable
class KernelSource(Protocol):
    """Measured kernel times of one GPU, interpolated inside their grid."""

    def gemm_time(self, m: int, n: int, k: int) -> float:
        """Seconds of a bf16 GEMM (m x k) @ (k x n)."""
        ...

    def context_attention_time(self, batch: int, seq_len: int, num_heads: int, num_kv_heads: int,
                               head_dim: int) -> float:
        """Seconds of causal prefill attention of ``batch`` sequences of ``seq_len`` tokens (one layer)."""
        ...

    def generation_attention_time(self, batch: int, ctx_len: int, num_heads: int, num_kv_heads: int,
                                  head_dim: int) -> float:
        """Seconds of decode attention of ``batch`` sequences with ``ctx_len`` cached tokens each (one layer)."""
        ...

    def allreduce_time(self, message_bytes: int, tp: int) -> float:
        """Seconds of one all-reduce of ``message_bytes`` over ``tp`` GPUs."""
        ...

    def provenance(self) -> list[str]:
        """One line per table read: package, version, path, engine version, kernel."""
        ...
