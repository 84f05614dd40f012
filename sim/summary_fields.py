"""The latency metrics and statistics a run's summary reports, as names (no numpy or polars: the CLI's start-up reads them)."""

#: Per-request latency columns the summary describes (seconds).
LATENCY_METRICS = ("ttft_s", "tpot_s", "e2e_s", "queue_wait_s")
#: Statistics reported for each latency metric.
STATS = ("mean", "p50", "p90", "p99")
