"""What a real vLLM server is, as the simulator must model it, and its own engine counters.

Server facts come from the server itself where it publishes them
(``/v1/models``: ``max_model_len``; ``/metrics`` ``vllm:cache_config_info``:
``num_gpu_blocks``, ``block_size``); the limits a server does not publish
(``max_num_seqs``, ``max_num_batched_tokens``, chunked prefill) are what it
was launched with, given by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from driftsim.profiling.gateway import MicroBatch, check_endpoint
from driftsim.profiling.http import EndpointError, OpenAIClient, cache_config, metric_total
from driftsim.sim.config import EngineConfig


@dataclass(frozen=True, kw_only=True)
class ServerFacts:
    """The engine as the simulator must model it. ``source`` says where each came from."""

    url: str
    model: str
    version: str | None
    max_model_len: int
    num_gpu_blocks: int
    block_size: int
    max_num_seqs: int
    max_num_batched_tokens: int
    chunked_prefill: bool = True
    async_scheduling: bool | None = None  # None = unknown (not published by the server)
    prefix_caching: bool | None = None  # automatic prefix caching; None = not published (vLLM v1: on)
    source: dict = field(default_factory=dict)


def read_server_facts(client: OpenAIClient, *, model: str | None = None, max_num_seqs: int,
                      max_num_batched_tokens: int, chunked_prefill: bool = True,
                      async_scheduling: bool | None = None, num_gpu_blocks: int | None = None,
                      block_size: int | None = None) -> ServerFacts:
    """Check the endpoint (fails fast with :class:`EndpointError`) and read what it publishes.

    ``num_gpu_blocks``/``block_size`` override the server's ``/metrics`` (for
    servers without ``vllm:cache_config_info``; without either, this fails).
    """
    name = check_endpoint(client, model)
    entry = next(m for m in client.models() if str(m.get("id")) == name)
    mml = int(entry.get("max_model_len") or 0)
    source = {"max_model_len": "/v1/models" if mml else "default 2048",
              "max_num_seqs": "as launched (given)", "max_num_batched_tokens": "as launched (given)"}
    kv = {}
    try:
        kv = cache_config(client.metrics())
        source["num_gpu_blocks"] = source["block_size"] = "/metrics vllm:cache_config_info"
        if "enable_prefix_caching" in kv:
            source["prefix_caching"] = "/metrics vllm:cache_config_info"
    except EndpointError as exc:
        if num_gpu_blocks is None or block_size is None:
            raise EndpointError(f"{exc}; give the server's KV capacity (--num-gpu-blocks and --block-size)") from None
    if num_gpu_blocks is not None:
        kv["num_gpu_blocks"] = num_gpu_blocks
        source["num_gpu_blocks"] = "given"
    if block_size is not None:
        kv["block_size"] = block_size
        source["block_size"] = "given"
    return ServerFacts(url=client.base_url, model=name, version=client.version(), max_model_len=mml or 2048,
                       num_gpu_blocks=int(kv["num_gpu_blocks"]), block_size=int(kv["block_size"]),
                       max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                       chunked_prefill=chunked_prefill, async_scheduling=async_scheduling,
                       prefix_caching=kv.get("enable_prefix_caching"), source=source)


def engine_config(facts: ServerFacts, *, microbatch: MicroBatch | None = None) -> EngineConfig:
    """The simulator's engine for this server (its real KV capacity, block size, limits and prefix
    caching; vLLM v1's default, on, where the server does not say)."""
    mb = {} if microbatch is None else {"mode": "microbatch", "batch_size": microbatch.batch_size,
                                         "batch_wait_s": microbatch.batch_wait_s,
                                         "batch_poll_s": microbatch.batch_poll_s}
    return EngineConfig(max_num_seqs=facts.max_num_seqs, max_num_batched_tokens=facts.max_num_batched_tokens,
                        block_size=facts.block_size, chunked_prefill=facts.chunked_prefill,
                        max_model_len=facts.max_model_len, num_gpu_blocks=facts.num_gpu_blocks,
                        prefix_caching=facts.prefix_caching is not False, **mb)


#: What :func:`engine_counters` reads: our name -> vLLM's ``/metrics`` counter.
ENGINE_COUNTERS = {"steps": "vllm:iteration_tokens_total_count", "tokens": "vllm:iteration_tokens_total_sum",
             "preemptions": "vllm:num_preemptions_total", "prompt_tokens": "vllm:prompt_tokens_total",
             "generation_tokens": "vllm:generation_tokens_total",
             "queue_time_sum_s": "vllm:request_queue_time_seconds_sum",
             "queue_time_count": "vllm:request_queue_time_seconds_count",
             # prompt tokens looked up in the prefix cache and found there (requests not preempted before)
             "prefix_queries": "vllm:prefix_cache_queries_total", "prefix_hits": "vllm:prefix_cache_hits_total"}


def engine_counters(client: OpenAIClient) -> dict:
    """The engine's own counters from ``/metrics`` (empty for servers without them)."""
    try:
        m = client.metrics()
    except EndpointError:
        return {}
    return {k: metric_total(m, name) for k, name in ENGINE_COUNTERS.items()}
