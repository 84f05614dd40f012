"""Token-id prompts for replays: random per request, or sharing exactly the prefixes a trace names.

A replay sends prompts as token-id lists (the OpenAI completions API takes a
list of ints as ``prompt``), so no tokenizer round trip changes them and the
engine sees exactly the tokens built here.

- :func:`prompt_ids`: ``n`` random ids per request; random ids keep
  prefix caching from sharing blocks between requests.
- :func:`trace_prompt_ids`: a request carrying prefix identity (the trace's
  ``prefix_ids``, one id per ``prefix_block_tokens`` tokens) starts with the
  tokens of its ids, each id's tokens drawn from the id alone
  (:func:`block_ids_tokens`), then its own random tokens up to its length.
  Two requests whose first k ids are equal then have equal first
  k * ``prefix_block_tokens`` tokens, and differing ids give differing
  tokens: the engine's own block hashing (any block size) finds the very
  prefixes the trace says, as :func:`driftsim.sim.prefix_cache.block_keys`
  assumes.

Every id is drawn in ``[FIRST_ID, vocab_size)``, above the special tokens a
tokenizer puts first. ``seed`` salts everything: replays of one trace with
different seeds share no block, so each starts on a cold prefix cache as
its simulation does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Lowest token id drawn: the special tokens (BOS, EOS, chat markers) of a tokenizer sit below it.
FIRST_ID = 100
_BLOCK_STREAM = 0xB10C  # spawn-key tag of prefix-block streams, apart from the per-request ones


def prompt_ids(request_id: int, n: int, *, vocab_size: int, seed: int) -> list[int]:
    """A deterministic random token-id prompt of exactly ``n`` tokens (ids in [FIRST_ID, vocab_size))."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(int(request_id) & 0x7FFFFFFF,)))
    return rng.integers(FIRST_ID, max(FIRST_ID + 1, vocab_size), size=n).tolist()


def block_ids_tokens(block_id: int, n: int, *, vocab_size: int, seed: int) -> list[int]:
    """The ``n`` tokens of the trace block ``block_id``: a function of the id (and ``seed``) alone."""
    key = int(block_id) & 0xFFFFFFFFFFFFFFFF  # trace ids are Int64, maybe negative (Python hashes)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_BLOCK_STREAM, key)))
    return rng.integers(FIRST_ID, max(FIRST_ID + 1, vocab_size), size=n).tolist()


def trace_prompt_ids(request_id: int, input_tokens: int, prefix_ids: Sequence[int] | None,
                     prefix_block_tokens: int | None, *, vocab_size: int, seed: int) -> list[int]:
    """The prompt of one trace request: its prefix blocks' tokens, then its own, ``input_tokens`` in all.

    Without prefix identity it is :func:`prompt_ids`. The ids cover
    ``len(prefix_ids) * prefix_block_tokens`` tokens at most (the last id may
    be cut short by the prompt's end); the rest are the request's own.
    """
    if prefix_ids is None or not prefix_block_tokens:
        return prompt_ids(request_id, input_tokens, vocab_size=vocab_size, seed=seed)
    out: list[int] = []
    for bid in prefix_ids:
        if len(out) >= input_tokens:
            break
        take = min(prefix_block_tokens, input_tokens - len(out))
        out += block_ids_tokens(bid, prefix_block_tokens, vocab_size=vocab_size, seed=seed)[:take]
    own = input_tokens - len(out)
    if own:
        out += prompt_ids(request_id, own, vocab_size=vocab_size, seed=seed)
    return out


def replay_seed(seed: int, *salt: int) -> int:
    """A prompt seed of its own for one replay (``salt``: level, repeat), derived from the run's ``seed``."""
    return int(np.random.SeedSequence([int(seed), *(int(s) for s in salt)]).generate_state(1, dtype=np.uint32)[0])
