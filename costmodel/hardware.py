"""Spec-sheet descriptions of a GPU and of a decoder-only transformer, and the
quantities a cost model derives from them (parameters, bytes, FLOPs).

Everything here is arithmetic on published numbers; nothing is measured.
Units are in every field comment and property docstring.
"""

from __future__ import annotations

from dataclasses import dataclass


def _require_positive(owner: str, **values: float) -> None:
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{owner}.{key} must be a positive number, got {value!r}")


@dataclass(frozen=True, slots=True)
class GpuSpec:
    """One GPU as its spec sheet describes it."""

    name: str
    peak_flops: float  # dense fp16/bf16 tensor-core throughput (no sparsity), FLOP/s
    mem_bandwidth: float  # peak DRAM bandwidth, B/s
    mem_bytes: int  # total device memory the driver reports, B

    def __post_init__(self) -> None:
        _require_positive("GpuSpec", peak_flops=self.peak_flops, mem_bandwidth=self.mem_bandwidth)
        if isinstance(self.mem_bytes, bool) or not isinstance(self.mem_bytes, int) or self.mem_bytes <= 0:
            raise ValueError(f"GpuSpec.mem_bytes must be a positive int, got {self.mem_bytes!r}")


@dataclass(frozen=True, slots=True)
class ModelArch:
    """A Llama/Qwen-style decoder: attention with (grouped) K/V heads, a gated
    (SwiGLU) MLP of three matrices, RMSNorm before attention and MLP, a final
    norm, an input embedding and an LM head (tied or not).

    ``num_params`` counts every weight, norms and optional q/k/v biases
    included, so it matches the published totals exactly (Llama-3.1-8B:
    8,030,261,248; Qwen1.5-1.8B: 1,836,828,672).
    """

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int  # query heads
    num_kv_heads: int  # key/value heads (== num_heads without GQA)
    intermediate_size: int  # MLP inner width
    vocab_size: int
    dtype_bytes: int  # bytes per weight and per KV element (2 for fp16/bf16)
    tied_embeddings: bool = False  # LM head shares the input embedding matrix
    qkv_bias: bool = False  # q/k/v projections carry a bias (Qwen1.5, Qwen2)
    head_dim_override: int | None = None  # head size when != hidden_size // num_heads

    def __post_init__(self) -> None:
        for key in ("num_layers", "hidden_size", "num_heads", "num_kv_heads",
                    "intermediate_size", "vocab_size", "dtype_bytes"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"ModelArch.{key} must be a positive int, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"ModelArch.num_heads ({self.num_heads}) must be a multiple of "
                f"num_kv_heads ({self.num_kv_heads})"
            )
        if self.head_dim_override is None and self.hidden_size % self.num_heads:
            raise ValueError(
                f"ModelArch.hidden_size ({self.hidden_size}) is not a multiple of "
                f"num_heads ({self.num_heads}); give head_dim_override"
            )

    # ---- shapes -------------------------------------------------------
    @property
    def head_dim(self) -> int:
        """Size of one attention head, elements."""
        if self.head_dim_override is not None:
            return self.head_dim_override
        return self.hidden_size // self.num_heads

    @property
    def q_dim(self) -> int:
        """Width of all query heads together, elements."""
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of all key (or value) heads together, elements."""
        return self.num_kv_heads * self.head_dim

    # ---- parameters ---------------------------------------------------
    @property
    def layer_matmul_params(self) -> int:
        """Weights of one layer that take part in matrix products: q, k, v, o and
        the MLP's gate, up and down matrices."""
        h = self.hidden_size
        attention = h * self.q_dim + 2 * h * self.kv_dim + self.q_dim * h
        mlp = 3 * h * self.intermediate_size
        return attention + mlp

    @property
    def layer_params(self) -> int:
        """All weights of one layer: matrices, the two RMSNorm scales, q/k/v biases."""
        bias = (self.q_dim + 2 * self.kv_dim) if self.qkv_bias else 0
        return self.layer_matmul_params + 2 * self.hidden_size + bias

    @property
    def embedding_params(self) -> int:
        """The input embedding table (vocab x hidden)."""
        return self.vocab_size * self.hidden_size

    @property
    def lm_head_params(self) -> int:
        """Extra weights of the LM head: 0 when tied to the embedding."""
        return 0 if self.tied_embeddings else self.vocab_size * self.hidden_size

    @property
    def num_params(self) -> int:
        """Every weight: embedding + layers + final norm + LM head (if untied)."""
        return (self.embedding_params + self.num_layers * self.layer_params
                + self.hidden_size + self.lm_head_params)

    # ---- bytes --------------------------------------------------------
    @property
    def weight_bytes(self) -> int:
        """Memory the weights occupy on the GPU, B."""
        return self.num_params * self.dtype_bytes

    @property
    def streamed_weight_bytes(self) -> int:
        """Weight bytes one forward pass reads from DRAM, B.

        Every matrix, norm and bias is read once per step. The input embedding
        is a gather of a few rows, not a full read, so an untied embedding
        table is left out; a tied one is read whole by the LM head.
        """
        gathered = 0 if self.tied_embeddings else self.embedding_params
        return (self.num_params - gathered) * self.dtype_bytes

    def elementwise_bytes_per_token_layer(self, tp: int = 1) -> int:
        """DRAM bytes one token moves through a layer's element-wise kernels, on one GPU of ``tp``.

        Two fused residual-add + RMSNorms (read residual and input, write both: 4 x hidden each; replicated on
        every GPU), rotary embedding of q and k (read and write), the KV cache write (read k and v, write them
        to the cache) and SiLU-and-mul (read gate and up, write their product): the memory traffic between the
        GEMMs that a prefill of thousands of tokens pays per token.
        """
        q, kv, inter = self.q_dim // tp, self.kv_dim // tp, self.intermediate_size // tp
        return (8 * self.hidden_size + 2 * (q + kv) + 4 * kv + 3 * inter) * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """KV-cache size of one token: K and V, every layer, every KV head, B."""
        return 2 * self.num_layers * self.kv_dim * self.dtype_bytes

    # ---- FLOPs --------------------------------------------------------
    @property
    def layer_flops_per_token(self) -> int:
        """FLOPs of the transformer layers' matrix products for one token, FLOP.

        2 FLOPs (multiply + add) per matmul weight. Norms, activations,
        residual adds and rotary embeddings are O(hidden) per token and left out.
        """
        return 2 * self.num_layers * self.layer_matmul_params

    @property
    def lm_head_flops_per_token(self) -> int:
        """FLOPs of the LM head for one token whose logits are computed, FLOP."""
        return 2 * self.vocab_size * self.hidden_size

    @property
    def flops_per_token(self) -> int:
        """Matmul FLOPs of one token through layers and LM head, FLOP
        (~ 2 x non-embedding params + LM head). Attention score work is separate."""
        return self.layer_flops_per_token + self.lm_head_flops_per_token

    @property
    def attn_flops_per_token_pair(self) -> int:
        """FLOPs of one (query token, key position) pair, all layers, FLOP.

        ``4 * num_layers * num_heads * head_dim`` (= 4 * layers * hidden for
        most models). Why: per layer and per query head the score q.k costs
        head_dim multiply-adds (2 * head_dim FLOPs) and the weighted sum of V
        another 2 * head_dim. Grouped K/V heads do not reduce it: every query
        head does its own products. Softmax (a few FLOPs per head per pair)
        is left out. Causality is not halved here: the caller counts only the
        pairs that are computed (``StepBatch.prefill_attn_tokens`` already
        sums n*c + n*(n+1)/2 per chunk).
        """
        return 4 * self.num_layers * self.q_dim
