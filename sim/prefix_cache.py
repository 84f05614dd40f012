"""KV blocks with vLLM's automatic prefix caching: shared full blocks, an LRU free queue, eviction.

vLLM (``vllm/v1/core/block_pool.py``, ``kv_cache_manager.py``) names every
full block of a prompt by a chained hash (the parent block's hash and the
block's tokens). A new request's longest run of cached leading blocks is
reused: those tokens skip prefill, but the blocks are referenced (ref count)
and occupy KV. A block whose last reference goes away joins the tail of the
free queue and keeps its hash, so it can still be hit; an allocation takes
blocks from the head of the queue, evicting the hash of a cached one it
takes. The simulator keeps the same queue with one entry per cached block
and one per run of anonymous blocks (never hashed, or partial).

:class:`PrefixCachedBlocks` is a :class:`driftsim.sim.kv.KvBlocks`: ``used``,
``can_allocate``, ``allocate`` and ``free`` (of anonymous blocks) mean the
same, so the engine's counting is unchanged; it adds lookups, references and
hash registration. Free blocks behind the last queued cached block are kept
as a count only, so a run whose blocks are never hashed costs nothing more.

:func:`block_keys` turns a request's trace block ids (any block size) into
the engine's chained keys; :class:`BlockKeyMemo` remembers them per distinct ids.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from driftsim.sim.kv import KvBlocks

__all__ = ["BlockKeyMemo", "PrefixCachedBlocks", "block_keys"]

_ROOT = 0x5EED  # the chain's parent of the first block


def block_keys(ids: Sequence[int], id_tokens: int, block_size: int, prompt_tokens: int, salt: int = 0) -> list[int]:
    """Chained keys of the engine's full blocks, among the first ``prompt_tokens`` tokens, that ``ids`` identify.

    ``ids[m]`` names tokens ``[m * id_tokens, (m + 1) * id_tokens)`` of the
    sequence (the prompt, then its answer) given everything before them (equal id prefixes mean equal token
    prefixes, as Mooncake's ``hash_ids``). Engine block ``j`` (``block_size``
    tokens) is identified when it is full inside the prompt and inside what
    the ids cover; its key chains every id up to the one covering its last
    token, and ``j``, so two requests share key ``j`` exactly when their first
    ``(j + 1) * block_size`` tokens are equal. Python hashes of int tuples
    are the same in every process, so runs stay deterministic.
    """
    covered = min(len(ids) * id_tokens, prompt_tokens)
    n = covered // block_size
    keys: list[int] = []
    chain = hash((_ROOT, salt))
    if id_tokens == block_size:  # one id per engine block: the chain itself is the key
        for m in range(n):
            chain = hash((chain, ids[m]))
            keys.append(chain)
        return keys
    if id_tokens % block_size == 0:  # every id splits into whole engine blocks
        per_id = id_tokens // block_size
        for m in range(-(-n // per_id)):
            chain = hash((chain, ids[m]))
            keys.extend(hash((chain, j)) for j in range(m * per_id, min(n, (m + 1) * per_id)))
        return keys
    m_done = -1
    for j in range(n):
        m_end = ((j + 1) * block_size - 1) // id_tokens
        while m_done < m_end:
            m_done += 1
            chain = hash((chain, ids[m_done]))
        keys.append(hash((chain, j)))
    return keys


class BlockKeyMemo:
    """:func:`block_keys` remembered per distinct ``ids``: requests that share a system prompt carry
    the same ids, and hashing their chain again per request was the largest single cost prefix
    caching added to a run. A request's keys are the first ones of its ids' whole chain (keys do not
    depend on how far the prompt goes), so one entry serves every prompt length. It holds at most
    ``max_keys`` keys in all (about 40 bytes each) and starts over when full, so workloads whose ids
    never repeat (chat sessions) pay only the look-up."""

    __slots__ = ("block_size", "max_keys", "_held", "_keys")

    def __init__(self, block_size: int, max_keys: int = 1 << 18) -> None:
        self.block_size = block_size
        self.max_keys = max_keys
        self._held = 0  # keys stored
        self._keys: dict[tuple, list[int]] = {}

    def __call__(self, ids: Sequence[int], id_tokens: int, prompt_tokens: int) -> list[int]:
        """``block_keys(ids, id_tokens, block_size, prompt_tokens)``, a new list each call."""
        covered = len(ids) * id_tokens
        memo = (tuple(ids), id_tokens)
        keys = self._keys.get(memo)
        if keys is None:
            keys = block_keys(ids, id_tokens, self.block_size, covered)
            if self._held + len(keys) > self.max_keys:
                self._keys.clear()
                self._held = 0
            self._keys[memo] = keys
            self._held += len(keys)
        return keys[:min(covered, prompt_tokens) // self.block_size]


class PrefixCachedBlocks(KvBlocks):
    """One engine's KV blocks with prefix caching; see the module docstring.

    ``refs`` maps each cached block's key to its reference count (0: free,
    in the queue, still hittable). ``queue`` holds, oldest first, cached
    free blocks (key -> None) and runs of anonymous free blocks (marker ->
    count); ``queued`` counts the blocks in it. Free blocks beyond
    ``queued`` are anonymous and sit behind everything queued.
    """

    __slots__ = ("refs", "queue", "queued", "evictions", "version", "_marker")

    def __init__(self, num_blocks: int) -> None:
        super().__init__(num_blocks)
        self.refs: dict[int, int] = {}
        self.queue: OrderedDict[object, int | None] = OrderedDict()
        self.queued = 0
        self.evictions = 0  # cached blocks whose hash an allocation dropped
        self.version = 0  # bumped whenever a lookup's answer may change
        self._marker = 0

    # ------------------------------------------------------------------ lookups
    def lookup(self, keys: Sequence[int], max_blocks: int) -> tuple[int, int]:
        """The longest run of cached leading ``keys`` (at most ``max_blocks``), and how many of those
        are free (ref count 0: referencing them takes them out of the free blocks)."""
        get = self.refs.get
        hit = free = 0
        for key in keys[:max_blocks]:
            ref = get(key)
            if ref is None:
                break
            hit += 1
            if not ref:
                free += 1
        return hit, free

    def acquire(self, keys: Sequence[int]) -> None:
        """Reference cached blocks (a hit): a free one leaves the queue and counts as used."""
        refs, queue = self.refs, self.queue
        taken = 0
        for key in keys:
            ref = refs[key]
            if not ref:
                del queue[key]
                taken += 1
            refs[key] = ref + 1
        self.queued -= taken
        self.used += taken
        self.version += 1

    def register(self, key: int) -> bool:
        """Name a full block a request holds (and counts as used) by ``key``; False when another
        block already has that key (the request's copy stays anonymous)."""
        if key in self.refs:
            return False
        self.refs[key] = 1
        self.version += 1
        return True

    # ------------------------------------------------------------------ allocation and release
    def allocate(self, n: int) -> None:
        """Take ``n`` free blocks from the head of the queue, evicting the hash of each cached one."""
        self.used += n
        queue = self.queue
        if not n or not queue:
            return
        refs = self.refs
        evicted = taken = 0  # cached blocks and anonymous blocks taken from the queue
        while n and queue:
            marker = next(iter(queue))
            count = queue[marker]
            if count is None:  # a cached block: its hash goes
                del queue[marker]
                del refs[marker]
                evicted += 1
                n -= 1
            elif count <= n:
                del queue[marker]
                taken += count
                n -= count
            else:
                queue[marker] = count - n
                taken += n
                n = 0
        self.queued -= evicted + taken
        if evicted:
            self.evictions += evicted
            self.version += evicted

    def release(self, keys: Sequence[int], private: int) -> int:
        """Drop a request's blocks: ``private`` anonymous ones, then its cached ``keys`` last to first
        (vLLM frees a request's blocks in reverse, so its tail is evicted first). Returns the blocks
        that became free."""
        self.used -= private
        if not keys:
            return private
        refs, queue = self.refs, self.queue
        freed = 0
        for key in reversed(keys):
            ref = refs[key] - 1
            refs[key] = ref
            if not ref:
                if not freed:
                    # the free blocks not queued yet (those just given back among them) go in
                    # ahead of the newly free cached ones, as one anonymous run
                    tail = self.total - self.used - self.queued
                    if tail:
                        self._marker += 1
                        queue[("anon", self._marker)] = tail
                        self.queued += tail
                queue[key] = None
                freed += 1
        self.queued += freed
        self.used -= freed
        self.version += 1
        return private + freed

    def blocks_before_cached(self) -> int | None:
        """Free blocks an allocation takes before it evicts a cached one (None: it never does)."""
        blocks = 0
        for count in self.queue.values():
            if count is None:
                return blocks
            blocks += count
        return None

    @property
    def cached_blocks(self) -> int:
        """Blocks with a hash (in use or free)."""
        return len(self.refs)

    def referenced(self) -> int:
        """Sum of reference counts (for invariant checks: zero once every request is gone)."""
        return sum(self.refs.values())
