"""The latency metrics and statistics a run's summary reports, as names (no numpy or polars: the CLI's start-up reads them)."""

#: Per-request latency columns the summary describes (seconds).
LATENCY_METRICS = ("ttft_s", "tpot_s", "e2e_s", "queue_wait_s")
#: Statistics reported for each latency metric.
STATS = ("mean", "p50", "p90", "p99")

#: The `vllm bench serve`-style figures in each summary group, flat: short latencies in milliseconds,
#: end to end in seconds, the unit in the name (``ttft_p95_ms``, ``e2e_p99_s``).
BENCH_LATENCIES = (("ttft", "ms"), ("tpot", "ms"), ("itl", "ms"), ("e2e", "s"))
BENCH_STATS = ("mean", "p50", "p95", "p99")
#: Rates in each summary group: completed input/output tokens per second, requests meeting every SLO per second.
BENCH_RATES = ("input_tokens_per_s", "output_tokens_per_s", "total_tokens_per_s", "goodput_rps")


def bench_field(metric: str, stat: str) -> str:
    """The summary key of one latency statistic, its unit in the name: ``bench_field("ttft", "p95") == "ttft_p95_ms"``."""
    unit = dict(BENCH_LATENCIES)[metric]
    return f"{metric}_{stat}_{unit}"

#: Prefix-cache figures in each summary group (completed requests; tokens found cached at the first admission).
PREFIX_GROUP_FIELDS = ("prefix_cached_tokens", "prefix_hit_requests", "prefix_token_hit_rate", "prefix_request_hit_rate")
#: Prefix-cache counters of each replica (every admission, re-admissions after preemption included).
PREFIX_REPLICA_FIELDS = ("prefix_lookups", "prefix_lookup_tokens", "prefix_hit_tokens", "prefix_token_hit_rate",
                         "prefix_evictions")
