"""KV-cache blocks of one engine, as counts.

vLLM's ``KVCacheManager`` hands blocks to requests from a ``BlockPool``; the
simulator needs only how many are taken. :class:`KvBlocks` answers "can I
allocate ``n`` blocks?" and keeps the count; it never picks a preemption
victim (the scheduler in :mod:`driftsim.sim.engine` does).

Invariant, after every step: ``used + free_blocks == total`` and
``0 <= used <= total``.
"""

from __future__ import annotations

#: KV blocks vLLM keeps out of its pool (``BlockPool.null_block``, vllm/v1/core/block_pool.py)
NULL_BLOCKS = 1


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for integers: blocks needed to hold ``a`` tokens at ``b`` per block."""
    return -(-a // b)


class KvBlocks:
    """The block counts of one engine's KV cache.

    ``num_blocks`` is what the server reports (``num_gpu_blocks``): vLLM's
    BlockPool keeps one of them (block 0) as its null block, never handed to
    a request, so ``total`` is one fewer.
    """

    __slots__ = ("total", "used")

    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 2:
            raise ValueError(f"num_blocks must be at least 2 (one is vLLM's null block), got {num_blocks}")
        self.total = num_blocks - NULL_BLOCKS
        self.used = 0

    @property
    def free_blocks(self) -> int:
        return self.total - self.used

    def can_allocate(self, n: int) -> bool:
        """Whether ``n`` more blocks are free."""
        return n <= self.total - self.used

    def allocate(self, n: int) -> None:
        """Take ``n`` blocks. Precondition: the scheduler checked :meth:`can_allocate` when it planned the step."""
        self.used += n

    def free(self, n: int) -> None:
        """Give back ``n`` blocks."""
        self.used -= n
