"""A live request inside the simulator: the trace row plus mutable engine state.

Only requests in flight exist as objects; results live in columnar arrays
(:mod:`driftsim.sim.results`), so memory does not grow with finished requests.
"""

from __future__ import annotations


class SimRequest:
    """One request. Attribute names match :class:`driftsim.sim.policies.Queued`."""

    __slots__ = (
        # from the trace (fixed)
        "idx",  # row index into the trace / result columns
        "request_id",
        "arrival_s",  # s
        "tenant",
        "priority",  # lower is more urgent
        "input_tokens",
        "output_tokens",  # tokens the engine will generate (after max_tokens / max_model_len caps)
        "est_tokens",  # estimated total budget, tokens (for SJF and friends)
        "slo_e2e_s",
        # engine state
        "computed",  # tokens whose KV is computed (prefill progress)
        "generated",  # output tokens produced so far
        "blocks",  # KV blocks held while prefilling
        "prefill_target",  # tokens to compute before the next token is sampled
        "decode_entry_step",  # engine decode-step counter when this request entered decode
        "decode_entry_computed",  # computed tokens when it entered decode
        "decode_entry_generated",  # generated tokens when it entered decode
        "finish_g",  # decode-step counter value at which it completes (-1: not decoding)
        "epoch",  # bumped on preemption, invalidates stale heap entries
        "order",  # position in the engine's running order (admission sequence)
        "first_token_s",
        "scheduled_s",  # first time the engine scheduled it, s
        "preemptions",
        # prefix identity (None: none) and prefix-cache state
        "prefix_ids",  # ids of the prompt's blocks of prefix_id_tokens tokens each, chained (driftsim.sim.prefix_cache)
        "prefix_id_tokens",
        "block_keys",  # the engine's chained keys of the full prompt blocks, set at the first lookup
        "shared",  # keys of the cached blocks this request references, in block order
        "hashed_upto",  # prompt blocks before this one have been offered to the cache
        "hit_memo",  # (cache version, prefill target, hit blocks, free hit blocks) of the last lookup
        "cached_tokens",  # prompt tokens found in the prefix cache at the first admission (-1: not admitted)
    )

    def __init__(
        self,
        *,
        idx: int,
        request_id: int,
        arrival_s: float,
        tenant: str,
        priority: int,
        input_tokens: int,
        output_tokens: int,
        est_tokens: int,
        slo_e2e_s: float | None = None,
        prefix_ids: list[int] | None = None,
        prefix_id_tokens: int = 0,
    ) -> None:
        self.idx = idx
        self.request_id = request_id
        self.arrival_s = arrival_s
        self.tenant = tenant
        self.priority = priority
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.est_tokens = est_tokens
        self.slo_e2e_s = slo_e2e_s
        self.computed = 0
        self.generated = 0
        self.blocks = 0
        self.prefill_target = input_tokens
        self.decode_entry_step = self.decode_entry_computed = self.decode_entry_generated = self.finish_g = 0
        self.epoch = 0
        self.order = 0
        self.first_token_s = -1.0
        self.scheduled_s = -1.0
        self.preemptions = 0
        self.prefix_ids = prefix_ids
        self.prefix_id_tokens = prefix_id_tokens
        self.block_keys: list[int] | None = None
        self.shared: list[int] = []
        self.hashed_upto = 0
        self.hit_memo: tuple[int, int, int, int] | None = None
        self.cached_tokens = -1

    def __repr__(self) -> str:
        return f"SimRequest(id={self.request_id}, tenant={self.tenant!r}, in={self.input_tokens}, out={self.output_tokens})"


def kv_refusal(tokens: int, total_blocks: int) -> str:
    """Why a request whose whole sequence (``tokens``) can never hold its KV on one replica is refused."""
    return f"needs {tokens} tokens of KV, more than the {total_blocks} blocks one replica has"


def engine_output_tokens(prompt: int, output: int, max_tokens: int, max_model_len: int) -> tuple[int | None, bool, str]:
    """What the engine will generate for a trace row, as vLLM would: ``(tokens, capped, "")``, the
    output cut to the request's ``max_tokens`` (when > 0) and to what fits in ``max_model_len``;
    or ``(None, False, reason)`` when the prompt alone does not fit."""
    if prompt >= max_model_len:
        return None, False, f"prompt of {prompt} tokens does not fit max_model_len {max_model_len}"
    cap = max_model_len - prompt
    if max_tokens > 0:
        cap = min(cap, max_tokens)
    return (cap, True, "") if output > cap else (output, False, "")
