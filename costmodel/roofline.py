"""A step-level roofline cost model from spec numbers: an engine iteration
takes the larger of its compute time and its memory time, plus CPU overhead.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from driftsim.costmodel._runs import decode_run_ctx
from driftsim.costmodel.base import StepFormula
from driftsim.costmodel.batch import StepBatch
from driftsim.costmodel.hardware import GpuSpec, ModelArch
from driftsim.costmodel.kv import KvCapacity


class RooflineCostModel:
    """Time of one engine iteration from a GPU spec and a model architecture.

    With P = prefill_tokens, Sp = prefill_seqs, A = prefill_attn_tokens,
    D = decode_seqs, C = decode_ctx_tokens (see :class:`StepBatch`)::

        flops    = Lf*(P + D) + Hf*(Sp + D) + Af*(A + C)
        compute  = flops / (peak_flops * compute_efficiency)
        bytes    = W + kv*(C + A/tile + P + D)
        memory   = bytes / (mem_bandwidth * memory_efficiency)
        step     = overhead_s + per_seq_overhead_s*(Sp + D) + max(compute, memory)

    - ``Lf`` = ``model.layer_flops_per_token``: every token (prefill or
      decode) goes through every layer's matrices.
    - ``Hf`` = ``model.lm_head_flops_per_token``: logits are computed only
      for the last position of each scheduled sequence (vLLM's
      ``logits_indices``), not for every prefill token. For a 512-token
      prefill of Qwen1.5-1.8B counting the LM head per token would add ~25 %
      of FLOPs that are never spent.
    - ``Af`` = ``model.attn_flops_per_token_pair``; A and C are the numbers
      of (query, key) pairs actually computed, causal mask included.
    - ``W`` = ``model.streamed_weight_bytes``: every weight is read once per
      step whatever the batch (the untied input embedding is only gathered).
    - ``kv`` = ``model.kv_bytes_per_token``. KV reads: each decode sequence
      reads its whole context once (C). A prefill chunk reads its context
      once per query tile of ``prefill_query_tile`` tokens (FlashAttention
      streams K/V past each block of queries), which is A / tile token reads
      in total. KV writes: one entry per new token (P + D).
    - Activations are not counted as traffic (they are small next to the
      weights in decode, and prefill is compute-bound).

    The efficiencies fold in everything the ideal roofline ignores: tensor
    cores below peak on small or skinny matrices, power/clock limits, kernel
    gaps, attention kernels below bandwidth. ``overhead_s`` is the per-step
    CPU time not hidden behind the GPU (scheduler, input preparation, kernel
    launches in eager mode, sampling); ``per_seq_overhead_s`` the per-sequence
    part of it. A whole-step max() is optimistic against per-operator
    rooflines (sum of maxes); the efficiencies absorb that too.

    NOTE: :meth:`step_time` and :meth:`decode_run_times` run the very same
    expression (``_eval``) on float64, scalars in one and numpy arrays in the
    other; IEEE +, *, / and max give identical results elementwise, so fast-
    forwarded decode runs equal step-by-step ones bit for bit.
    """

    kind = "roofline"

    def __init__(
        self,
        gpu: GpuSpec,
        model: ModelArch,
        *,
        compute_efficiency: float,
        memory_efficiency: float,
        overhead_s: float,
        per_seq_overhead_s: float = 0.0,
        prefill_query_tile: int = 128,
        kv: KvCapacity | None = None,
        name: str = "roofline",
        provenance: dict | None = None,
    ) -> None:
        for key, value in (("compute_efficiency", compute_efficiency),
                           ("memory_efficiency", memory_efficiency)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise ValueError(f"RooflineCostModel.{key} must be in (0, 1], got {value!r}")
        for key, value in (("overhead_s", overhead_s), ("per_seq_overhead_s", per_seq_overhead_s)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value < 0:
                raise ValueError(f"RooflineCostModel.{key} must be a finite number >= 0, got {value!r}")
        if isinstance(prefill_query_tile, bool) or not isinstance(prefill_query_tile, int) \
                or prefill_query_tile <= 0:
            raise ValueError(f"RooflineCostModel.prefill_query_tile must be a positive int, got {prefill_query_tile!r}")
        self.gpu = gpu
        self.model = model
        self.compute_efficiency = float(compute_efficiency)
        self.memory_efficiency = float(memory_efficiency)
        self.overhead_s = float(overhead_s)
        self.per_seq_overhead_s = float(per_seq_overhead_s)
        self.prefill_query_tile = prefill_query_tile
        self.kv = kv if kv is not None else KvCapacity(gpu=gpu, model=model)
        self.name = name
        self.provenance = dict(provenance or {})
        # Constants of the formula, fixed once (float64).
        self._lf = float(model.layer_flops_per_token)
        self._hf = float(model.lm_head_flops_per_token)
        self._af = float(model.attn_flops_per_token_pair)
        self._flop_rate = float(gpu.peak_flops) * self.compute_efficiency
        self._w = float(model.streamed_weight_bytes)
        self._kvb = float(model.kv_bytes_per_token)
        self._tile = float(prefill_query_tile)
        self._byte_rate = float(gpu.mem_bandwidth) * self.memory_efficiency

    # The one formula; see the class docstring. Returns (compute, memory, overhead).
    def _parts(self, P: Any, A: Any, Sp: Any, D: Any, C: Any) -> tuple[Any, Any, Any]:
        compute = (self._lf * (P + D) + self._hf * (Sp + D) + self._af * (A + C)) / self._flop_rate
        memory = (self._w + self._kvb * (C + A / self._tile + P + D)) / self._byte_rate
        overhead = self.overhead_s + self.per_seq_overhead_s * (Sp + D)
        return compute, memory, overhead

    def _eval(self, P: Any, A: Any, Sp: Any, D: Any, C: Any, maximum: Callable[[Any, Any], Any]) -> Any:
        compute, memory, overhead = self._parts(P, A, Sp, D, C)
        return overhead + maximum(compute, memory)

    @staticmethod
    def _inputs(batch: StepBatch) -> tuple[float, float, float, float, float]:
        return (float(batch.prefill_tokens), float(batch.prefill_attn_tokens), float(batch.prefill_seqs),
                float(batch.decode_seqs), float(batch.decode_ctx_tokens))

    def step_time(self, batch: StepBatch) -> float:
        """Seconds one engine iteration running ``batch`` takes (> 0, finite)."""
        # NOTE: _parts and _eval written out (the simulator's hottest call); same operations, same order
        P, A, Sp = float(batch.prefill_tokens), float(batch.prefill_attn_tokens), float(batch.prefill_seqs)
        D, C = float(batch.decode_seqs), float(batch.decode_ctx_tokens)
        compute = (self._lf * (P + D) + self._hf * (Sp + D) + self._af * (A + C)) / self._flop_rate
        memory = (self._w + self._kvb * (C + A / self._tile + P + D)) / self._byte_rate
        overhead = self.overhead_s + self.per_seq_overhead_s * (Sp + D)
        return overhead + max(compute, memory)

    def decode_step_time(self, num_seqs: int, ctx_tokens: int) -> float:
        """``step_time(StepBatch(decode_seqs=num_seqs, decode_ctx_tokens=ctx_tokens))`` bit for bit,
        without building the batch (adding the zero prefill terms leaves a float unchanged)."""
        D, C = float(num_seqs), float(ctx_tokens)
        compute = (self._lf * D + self._hf * D + self._af * C) / self._flop_rate
        memory = (self._w + self._kvb * (C + D)) / self._byte_rate
        overhead = self.overhead_s + self.per_seq_overhead_s * D
        return overhead + max(compute, memory)

    def decode_run_times(self, num_seqs: int, ctx_tokens: int, k: int) -> np.ndarray:
        """Durations (s, float64[k]) of k pure-decode steps; element j equals
        ``step_time(StepBatch(decode_seqs=num_seqs, decode_ctx_tokens=ctx_tokens + j*num_seqs))``
        bit for bit."""
        ctx = decode_run_ctx(num_seqs, ctx_tokens, k)
        out = self._eval(0.0, 0.0, 0.0, float(num_seqs), ctx, np.maximum)
        return np.asarray(out, dtype=np.float64)

    def step_formula(self) -> StepFormula:
        """:meth:`step_time` for the compiled core (:class:`driftsim.costmodel.base.StepFormula`)."""
        return StepFormula("roofline", (self._lf, self._hf, self._af, self._flop_rate, self._w, self._kvb, self._tile,
                                        self._byte_rate, self.overhead_s, self.per_seq_overhead_s))

    def breakdown(self, batch: StepBatch) -> dict:
        """For reports: ``compute_s``, ``memory_s``, ``overhead_s`` (fixed + per
        sequence), ``bound`` ("compute" or "memory") and ``total_s``, which
        equals ``step_time(batch)``."""
        inputs = self._inputs(batch)
        compute, memory, overhead = self._parts(*inputs)
        return {
            "compute_s": compute,
            "memory_s": memory,
            "overhead_s": overhead,
            "bound": "compute" if compute > memory else "memory",
            "total_s": self._eval(*inputs, max),
        }

    def kv_capacity_blocks(self, block_size: int) -> int:
        """KV blocks of ``block_size`` tokens (see :class:`driftsim.costmodel.kv.KvCapacity`)."""
        return self.kv.blocks(block_size)

    @property
    def parameters(self) -> dict:
        return {
            "compute_efficiency": self.compute_efficiency,
            "memory_efficiency": self.memory_efficiency,
            "overhead_s": self.overhead_s,
            "per_seq_overhead_s": self.per_seq_overhead_s,
            "prefill_query_tile": self.prefill_query_tile,
        }

    def describe(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "gpu": self.gpu.name,
            "model": self.model.name,
            "parameters": self.parameters,
            "derived": {
                "layer_flops_per_token": self.model.layer_flops_per_token,
                "lm_head_flops_per_token": self.model.lm_head_flops_per_token,
                "attn_flops_per_token_pair": self.model.attn_flops_per_token_pair,
                "streamed_weight_bytes": self.model.streamed_weight_bytes,
                "kv_bytes_per_token": self.model.kv_bytes_per_token,
            },
            "kv": self.kv.describe(),
            "provenance": dict(self.provenance),
        }

    def __repr__(self) -> str:
        return (f"RooflineCostModel({self.gpu.name!r}, {self.model.name!r}, "
                + ", ".join(f"{k}={v!r}" for k, v in self.parameters.items()) + ")")
