"""A kernel source for a GPU without measured tables: another card's
measurements of the same architecture generation scaled by the two cards'
datasheet compute and bandwidth ratios.

Each kernel is judged compute- or memory-bound on the measured card by its
roofline (FLOPs / peak against bytes / bandwidth) and its time is scaled by
the matching ratio. Used for L4 from L40S (both Ada Lovelace, AD104/AD102).
"""

from __future__ import annotations

from driftsim.costmodel.hardware import GpuSpec
from driftsim.costmodel.kernels.source import KernelDataError, KernelSource


class TransferredSource:
    """``measured``'s kernel times scaled from card ``base`` to card ``target``."""

    def __init__(self, measured: KernelSource, *, base: GpuSpec, target: GpuSpec) -> None:
        self.measured, self.base, self.target = measured, base, target
        self.compute_ratio = base.peak_flops / target.peak_flops
        self.bandwidth_ratio = base.mem_bandwidth / target.mem_bandwidth

    def _scale(self, seconds: float, flops: float, nbytes: float) -> float:
        compute_bound = flops / self.base.peak_flops >= nbytes / self.base.mem_bandwidth
        return seconds * (self.compute_ratio if compute_bound else self.bandwidth_ratio)

    def gemm_time(self, m: int, n: int, k: int) -> float:
        return self._scale(self.measured.gemm_time(m, n, k), 2.0 * m * n * k, 2.0 * (m * k + k * n + m * n))

    def context_attention_time(self, batch, seq_len, num_heads, num_kv_heads, head_dim) -> float:
        t = self.measured.context_attention_time(batch, seq_len, num_heads, num_kv_heads, head_dim)
        flops = 2.0 * batch * num_heads * head_dim * seq_len * seq_len  # causal QK^T and PV
        nbytes = 2.0 * batch * seq_len * head_dim * (2 * num_heads + 2 * num_kv_heads)
        return self._scale(t, flops, nbytes)

    def generation_attention_time(self, batch, ctx_len, num_heads, num_kv_heads, head_dim) -> float:
        t = self.measured.generation_attention_time(batch, ctx_len, num_heads, num_kv_heads, head_dim)
        flops = 4.0 * batch * num_heads * head_dim * ctx_len
        nbytes = 2.0 * batch * ctx_len * head_dim * 2 * num_kv_heads
        return self._scale(t, flops, nbytes)

    def allreduce_time(self, message_bytes: int, tp: int) -> float:
        raise KernelDataError(f"--tp {tp}: no all-reduce measurements transfer to {self.target.name}; use --tp 1")

    def provenance(self) -> list[str]:
        return [f"transferred from {self.base.name} to {self.target.name}: compute-bound kernels x "
                f"{self.compute_ratio:.3f} (peak FLOP/s ratio), memory-bound x {self.bandwidth_ratio:.3f} "
                "(bandwidth ratio), datasheets", *self.measured.provenance()]
