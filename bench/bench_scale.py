"""Week-long-trace benchmark: wall time, simulated requests/s and peak memory at 1M and 10M requests.

Workload: the speed benchmark's (bench_sim.py: Llama-3.1-8B on one A100,
max_num_seqs 128, 4,096 tokens per iteration, prompt/output pairs resampled
from the Azure 2023 conversation trace), split over three tenants
(premium : standard : batch = 1 : 2 : 3, E2E SLOs 30 / 60 / 300 s), Poisson
arrivals at 80 % of one replica's measured capacity. The trace is first
written to a Parquet file in a temporary folder (in 64k-row row groups,
generated block by block), then each run reads it lazily
(driftsim.traces.stream.TraceStream) in a fresh subprocess, so its peak RSS
(ru_maxrss) is its own:

- summary-only: no per-request rows kept, percentiles from the sketch;
- streamed: per-request rows written to requests.parquet as chunks settle;
- in-memory (1M only, the reference): load_trace + simulate, rows kept;
- 64 replicas behind the least-outstanding router, arrivals at 80 % of 64
  replicas' capacity (default 2M requests), summary-only.

    python bench/bench_scale.py                        # 1M and 10M, plus 64 replicas x 2M
    python bench/bench_scale.py --sizes 100000 --fleet-requests 200000   # a quick look
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_sim import ENGINE, PROFILE, run_once  # noqa: E402
from driftsim.costmodel.profiles import load_profile  # noqa: E402
from driftsim.sim.config import EngineConfig  # noqa: E402
from driftsim.sim.run import simulate  # noqa: E402
from driftsim.traces.loaders import load_trace  # noqa: E402
from driftsim.traces.schema import REQUEST_SCHEMA  # noqa: E402
from driftsim.traces.stream import TraceStream  # noqa: E402

TENANTS = {"premium": (1, 30.0), "standard": (2, 60.0), "batch": (3, 300.0)}  # weight, E2E SLO s
BLOCK = 1_000_000  # rows generated at a time
ROW_GROUP = 65_536


def write_trace_file(path: Path, n: int, rate: float, seed: int = 0) -> None:
    """A schema-complete multi-tenant Poisson trace of ``n`` requests, written block by block."""
    conv = load_trace(ROOT / "traces" / "data" / "azure2023_conv.csv").filter(pl.col("input_tokens") <= 2048)
    inp, out = conv["input_tokens"].to_numpy(), conv["output_tokens"].to_numpy()
    names = list(TENANTS)
    weights = np.array([w for w, _ in TENANTS.values()], dtype=float)
    slo = np.array([s for _, s in TENANTS.values()])
    rng = np.random.default_rng(seed)
    writer, t0 = None, 0.0
    for start in range(0, n, BLOCK):
        m = min(BLOCK, n - start)
        arrivals = t0 + np.cumsum(rng.exponential(1.0 / rate, m))
        t0 = float(arrivals[-1])
        pick = rng.integers(0, conv.height, m)
        tenant = rng.choice(len(names), size=m, p=weights / weights.sum())
        df = pl.DataFrame({
            "request_id": np.arange(start, start + m),
            "arrival_s": arrivals,
            "tenant": pl.Series(names).gather(tenant),
            "input_tokens": inp[pick],
            "output_tokens": out[pick],
            "slo_e2e_s": slo[tenant],
        })
        df = df.with_columns(
            *[pl.lit(None, dtype=REQUEST_SCHEMA[c]).alias(c) for c in REQUEST_SCHEMA if c not in df.columns]
        ).select([pl.col(c).cast(t) for c, t in REQUEST_SCHEMA.items()])
        table = df.to_arrow()
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=ROW_GROUP)
    writer.close()


def child(mode: str, trace: Path, replicas: int, out: Path) -> dict:
    profile = load_profile(PROFILE)
    engine = EngineConfig(**ENGINE, gpu_memory_utilization=0.9)
    blocks = profile.kv_capacity_blocks(engine.block_size, engine.gpu_memory_utilization)
    kw = dict(cost=profile.cost_model, engine=engine, num_blocks=blocks, replicas=replicas)
    t0 = time.perf_counter()
    if mode == "in-memory":
        res = simulate(load_trace(trace), **kw)
        n = res.requests.height
    else:
        stream = TraceStream(trace)
        n = stream.rows
        if mode == "summary-only":
            res = simulate(stream, summary_only=True, **kw)
        else:
            res = simulate(stream, results_path=out / "requests.parquet", **kw)
    wall = time.perf_counter() - t0
    s = res.summary
    return {
        "mode": mode,
        "requests": n,
        "replicas": replicas,
        "wall_s": wall,
        "requests_per_s": n / wall,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "completed": s["overall"]["completed"],
        "busy_fraction": s["busy_fraction"],
        "e2e_p50_s": s["overall"]["e2e_s"]["p50"],
        "ttft_p99_s": s["overall"]["ttft_s"]["p99"],
        "results_mb": (out / "requests.parquet").stat().st_size / 2**20 if mode == "streamed" else 0.0,
    }


def run_child(mode: str, trace: Path, replicas: int, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--trace", str(trace), "--replicas", str(replicas),
           "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"child {mode} {trace.name} failed:\n{done.stderr}")
    return json.loads(done.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--fleet-replicas", type=int, default=64)
    ap.add_argument("--fleet-requests", type=int, default=2_000_000)
    ap.add_argument("--load", type=float, default=0.8, help="fraction of measured capacity")
    ap.add_argument("--in-memory-max", type=int, default=1_000_000, help="largest size also run in memory")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--trace", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--replicas", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.trace, args.replicas, args.out)))
        return

    capacity = run_once(5000, None, True)["throughput_rps"]
    rate = args.load * capacity
    print(f"profile {PROFILE}, engine {ENGINE}, tenants {TENANTS}")
    print(f"capacity of one replica (5000 requests at t=0): {capacity:.2f} requests/s; offered {rate:.2f} requests/s per replica ({args.load:.0%})")
    header = f"{'requests':>10} {'replicas':>8} {'mode':>13} {'trace MB':>9} {'wall s':>8} {'req/s':>8} {'peak RSS MB':>12} {'busy':>5} {'E2E p50':>8} {'TTFT p99':>9} {'rows MB':>8}"
    print(header, flush=True)
    runs = []
    for n in args.sizes:
        modes = ["summary-only", "streamed"] + (["in-memory"] if n <= args.in_memory_max else [])
        runs += [(n, 1, m) for m in modes]
    if args.fleet_requests:
        runs += [(args.fleet_requests, args.fleet_replicas, "summary-only")]
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        tmp = Path(tmp)
        traces: dict[tuple[int, int], Path] = {}
        for n, replicas, mode in runs:
            key = (n, replicas)
            if key not in traces:
                path = tmp / f"trace-{n}-x{replicas}.parquet"
                t0 = time.perf_counter()
                write_trace_file(path, n, rate * replicas)
                print(f"(wrote {path.name}: {path.stat().st_size / 2**20:.0f} MB in {time.perf_counter() - t0:.0f} s)", flush=True)
                traces[key] = path
            out = tmp / f"out-{n}-{replicas}-{mode}"
            out.mkdir()
            r = run_child(mode, traces[key], replicas, out)
            print(f"{n:>10} {replicas:>8} {mode:>13} {traces[key].stat().st_size / 2**20:>9.0f} {r['wall_s']:>8.1f} "
                  f"{r['requests_per_s']:>8.0f} {r['peak_rss_mb']:>12.0f} {r['busy_fraction']:>5.2f} "
                  f"{r['e2e_p50_s']:>7.2f}s {r['ttft_p99_s']:>8.2f}s {r['results_mb']:>8.0f}", flush=True)
            for f in out.iterdir():
                f.unlink()


if __name__ == "__main__":
    main()
