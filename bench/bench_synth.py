"""Synthetic trace generation speed: wall time to draw a million-request two-tenant trace.

The workload is the one the synthetic-trace tests use at scale: tenant ``a`` at 800 requests/s with
gamma arrivals (CV 2) and log-normal prompts (mean 800, CV 1.5, capped at 32,000 tokens), tenant
``b`` at 200 requests/s with uniform prompts (10-4,000) and log-normal outputs (mean 200, CV 1).
Prints the median over ``--runs`` runs (after one warm-up) and the rows per second.

    python bench/bench_synth.py [--requests 1000000] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

from driftsim.traces import LengthDist, TenantLoad, generate

SHORT = LengthDist.constant(16)  # tenant a's outputs


def workload():
    return [
        TenantLoad("a", 800.0, arrival="gamma", cv=2.0, input=LengthDist.lognormal(mean=800, cv=1.5, max=32_000),
                   output=SHORT),
        TenantLoad("b", 200.0, input=LengthDist.uniform(10, 4000), output=LengthDist.lognormal(mean=200, cv=1.0)),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    generate(workload(), num_requests=min(args.requests, 10_000), seed=0)  # warm-up: imports, first calls
    times = []
    for run in range(args.runs):
        t0 = time.perf_counter()
        df = generate(workload(), num_requests=args.requests, seed=run)
        times.append(time.perf_counter() - t0)
        assert df.height == args.requests
    med = statistics.median(times)
    print(f"generate {args.requests:,} requests: median {med:.2f} s over {args.runs} runs "
          f"({args.requests / med:,.0f} rows/s; runs: {', '.join(f'{t:.2f}' for t in times)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
