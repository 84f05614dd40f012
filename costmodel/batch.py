"""The one record the engine model hands the cost model: what a single
engine iteration computes. The cost model never sees scheduler internals."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StepBatch:
    """Work done by one engine iteration (one forward pass).

    A prefill chunk of ``n`` tokens of a sequence that already has ``c`` tokens
    computed attends over ``c+1 .. c+n`` positions; its contribution to
    ``prefill_attn_tokens`` is ``n*c + n*(n+1)/2``.
    """

    prefill_tokens: int = 0  # new prompt tokens computed this step (all sequences), tokens
    prefill_seqs: int = 0  # sequences that run a prefill chunk this step
    prefill_attn_tokens: float = 0.0  # sum over prefill tokens of the context each attends to, token-pairs
    decode_seqs: int = 0  # sequences that generate one token this step
    decode_ctx_tokens: int = 0  # sum of context lengths (tokens incl. the new one) over decode sequences

    @property
    def total_tokens(self) -> int:
        """Tokens processed this step (the engine's batched-token budget counts these)."""
        return self.prefill_tokens + self.decode_seqs

    @property
    def num_seqs(self) -> int:
        return self.prefill_seqs + self.decode_seqs


def chunk_attn_tokens(computed: int, chunk: int) -> float:
    """Attention work of a prefill chunk of ``chunk`` tokens after ``computed`` tokens."""
    return chunk * computed + chunk * (chunk + 1) / 2
