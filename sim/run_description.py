"""What a run simulated, in one line, and whether its offered load exceeded what the engine served.

Both read only a run's summary and context (as ``summary.json`` keeps them),
so a report can say the same of a saved run.
"""

from __future__ import annotations

import math

#: How a profile's ``provenance.source`` reads to a user.
PROVENANCE = {"measured": "measured", "derived-from-spec": "derived from specs", "fitted-published": "fitted from published data"}
#: Served below this share of the offered rate, with the engine this busy, a run is called overloaded.
OVERLOAD_SERVED_SHARE = 0.9
OVERLOAD_BUSY = 0.9


def describe_run(context: dict, replicas: int) -> str:
    """``continuous engine x1 (max_num_seqs 256, ...), policy priority in the engine's waiting queue, profile ...``."""
    engine, gateway, profile = context["engine"], context["gateway"], context["profile"]
    if engine["mode"] == "continuous":
        limits = (f"max_num_seqs {engine['max_num_seqs']}, max_num_batched_tokens {engine['max_num_batched_tokens']}, "
                  f"max_model_len {engine['max_model_len']}"
                  f"{', async scheduling' if engine.get('async_scheduling') else ''}")  # fmt: skip
    else:
        limits = f"micro-batches of {engine['batch_size']}, wait {engine['batch_wait_s']} s"
    if gateway["placement"] == "engine":
        where = "in the engine's waiting queue (vLLM priority scheduling, with preemption)"
    elif gateway.get("max_outstanding") is not None:
        where = f"at the gateway, cap {gateway['max_outstanding']} in flight per replica"
    elif engine["mode"] == "continuous":
        where = "at the gateway, no cap (requests sent on arrival; the engine's queue is FIFO)"
    else:
        where = "in front of the micro-batch worker"
    source = profile.get("provenance", {}).get("source", "unknown")
    loop = context.get("closed_loop")
    client = ""
    if loop:
        think = f", {loop['think_s']:g} s think time" if loop["think_s"] else ""
        client = f", closed-loop client: at most {loop['max_concurrency']} requests in flight{think}"
    return (
        f"ran: {engine['mode']} engine x{replicas} ({limits}; KV {context['kv_blocks_per_replica']:,} blocks of "
        f"{engine['block_size']} tokens per replica), policy {gateway['policy']} {where}, "
        f"profile {profile['name']} ({PROVENANCE.get(source, source)}){client}"
    )


def overload_note(summary: dict, context: dict) -> str | None:
    """A sentence with the offered and the served request rate when the engine could not keep up; else None."""
    span = context.get("arrival_span_s")
    if context.get("closed_loop"):
        return None  # a closed loop sends only when a slot frees: its queues cannot grow without bound
    overall = summary.get("overall", {})
    if not span or span <= 0 or not overall.get("requests"):
        return None
    offered = overall["requests"] / span
    served = overall.get("throughput_rps", math.nan)
    busy = summary.get("busy_fraction", math.nan)
    if not (served < OVERLOAD_SERVED_SHARE * offered and busy >= OVERLOAD_BUSY):
        return None
    return (
        f"overloaded: the trace offers {offered:,.2f} requests/s and the engine served {served:,.2f} requests/s "
        f"(busy {busy:.0%}); queues grow for the whole run, so latencies depend on the trace's length"
    )
