"""One vLLM iteration's time from measured kernel times.

Per layer, on one GPU of a tensor-parallel group of ``tp``: the four bf16
GEMMs of a dense decoder (QKV, output projection, gate/up, down) over all the
step's tokens with their columns or rows split ``tp`` ways, causal prefill
attention of the step's chunks, decode attention of its decode sequences,
and (tp > 1) two all-reduces of the layer's activations. Then the LM head
over the sampled tokens (one per sequence), the host-side overhead per
step and per scheduled sequence, and the layer's small kernels: a fixed
time per layer plus their memory traffic per token.

NOTE: norms, rotary embedding, the activation function, the KV cache write,
the embedding gather and sampling kernels are not in the tables. They are
timed as a fixed time per layer (launches and all: what they cost at the
few tokens of a decode step) plus their DRAM traffic per token
(``ModelArch.elementwise_bytes_per_token_layer``) at the bandwidth the same
tables show when a one-token GEMM streams the layer's weights: a prefill of
thousands of tokens moves gigabytes through them. A prefill chunk of ``n`` tokens
after ``c`` cached ones is timed as the measured prefill of the chunks'
mean total length scaled by the attention work ``n*c + n(n+1)/2`` it does;
the decode sequences as the measured decode of their mean context.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from driftsim.costmodel.batch import StepBatch, chunk_attn_tokens
from driftsim.costmodel.hardware import ModelArch
from driftsim.costmodel.kernels.source import KernelDataError, KernelSource

_LM_HEAD_MAX_N = 32768  # the LM head GEMM is timed in column slices no wider than this (inside every table)


@dataclass(frozen=True)
class IterationBatch:
    """One iteration's work, sequence by sequence."""

    prefill_chunks: tuple[tuple[int, int], ...] = ()  # (tokens already computed, chunk tokens) per prefill sequence
    decode_ctx: tuple[int, ...] = ()  # context length incl. the new token, per decode sequence, tokens

    def step_batch(self) -> StepBatch:
        """The aggregate the engine hands a cost model."""
        return StepBatch(prefill_tokens=sum(n for _, n in self.prefill_chunks),
                         prefill_seqs=len(self.prefill_chunks),
                         prefill_attn_tokens=float(sum(chunk_attn_tokens(c, n) for c, n in self.prefill_chunks)),
                         decode_seqs=len(self.decode_ctx), decode_ctx_tokens=sum(self.decode_ctx))


@dataclass(frozen=True)
class HostOverhead:
    """Host-side time per step and per scheduled sequence, seconds, with where it came from."""

    per_step_s: float
    per_seq_s: float
    source: str
    per_layer_s: float = 0.0  # the layer's small kernels (norms, rotary, activation, cache write), per layer


class IterationComposer:
    """Seconds of one iteration = measured kernels + host overhead (see the module docstring)."""

    def __init__(self, source: KernelSource, arch: ModelArch, *, tp: int, host: HostOverhead) -> None:
        for what, size in (("num_heads", arch.num_heads), ("num_kv_heads", arch.num_kv_heads),
                           ("intermediate_size", arch.intermediate_size)):
            if size % tp:
                raise KernelDataError(f"--tp {tp}: {arch.name} {what}={size} does not split evenly over {tp} GPUs")
        self.source, self.arch, self.tp, self.host = source, arch, tp, host

    def breakdown(self, batch: IterationBatch) -> dict[str, float]:
        """Seconds per part; ``total_s`` is the iteration's time."""
        a, tp = self.arch, self.tp
        tokens = sum(n for _, n in batch.prefill_chunks) + len(batch.decode_ctx)
        seqs = len(batch.prefill_chunks) + len(batch.decode_ctx)
        if tokens == 0:
            raise KernelDataError("an iteration needs at least one token")
        gemm = self._layer_gemms(tokens)
        comm = 2 * self.source.allreduce_time(tokens * a.hidden_size * 2, tp) if tp > 1 else 0.0
        parts = {
            "gemm_s": a.num_layers * gemm,
            "prefill_attention_s": a.num_layers * self._prefill_attention(batch.prefill_chunks),
            "decode_attention_s": a.num_layers * self._decode_attention(batch.decode_ctx),
            "allreduce_s": a.num_layers * comm,
            "lm_head_s": self._lm_head(seqs),
            "host_s": self.host.per_step_s + self.host.per_seq_s * seqs,
            "small_kernels_s": a.num_layers * self.host.per_layer_s,
            "elementwise_s": a.num_layers * tokens * a.elementwise_bytes_per_token_layer(tp) / self._stream_bandwidth,
        }
        parts["total_s"] = math.fsum(parts.values())
        return parts

    def time(self, batch: IterationBatch) -> float:
        return self.breakdown(batch)["total_s"]

    def _layer_gemms(self, tokens: int) -> float:
        a, tp, g = self.arch, self.tp, self.source.gemm_time
        return (g(tokens, (a.q_dim + 2 * a.kv_dim) // tp, a.hidden_size) + g(tokens, a.hidden_size, a.q_dim // tp)
                + g(tokens, 2 * a.intermediate_size // tp, a.hidden_size)
                + g(tokens, a.hidden_size, a.intermediate_size // tp))

    @functools.cached_property
    def _stream_bandwidth(self) -> float:
        """B/s this GPU reaches streaming memory: the layer's weights read by its GEMMs for one token (measured)."""
        return self.arch.layer_matmul_params // self.tp * self.arch.dtype_bytes / self._layer_gemms(1)

    def _heads(self) -> tuple[int, int, int]:
        return self.arch.num_heads // self.tp, self.arch.num_kv_heads // self.tp, self.arch.head_dim

    def _prefill_attention(self, chunks: tuple[tuple[int, int], ...]) -> float:
        if not chunks:
            return 0.0
        length = max(1, round(sum(c + n for c, n in chunks) / len(chunks)))
        work = sum(chunk_attn_tokens(c, n) for c, n in chunks)
        full = len(chunks) * length * (length + 1) / 2
        return self.source.context_attention_time(len(chunks), length, *self._heads()) * (work / full)

    def _decode_attention(self, ctx: tuple[int, ...]) -> float:
        if not ctx:
            return 0.0
        return self.source.generation_attention_time(len(ctx), max(2, round(sum(ctx) / len(ctx))), *self._heads())

    def _lm_head(self, sampled: int) -> float:
        cols = self.arch.vocab_size / self.tp
        slices = math.ceil(cols / _LM_HEAD_MAX_N)
        return slices * self.source.gemm_time(sampled, math.ceil(cols / slices), self.arch.hidden_size)
