"""Sweep throughput benchmark: the same grid of runs in one process, on local processes, and through local Ray.

Workload: two synthetic tenants (chat and batch, lognormal lengths, Poisson
arrivals) on the bundled A100 / Llama-3.1-8B profile in continuous mode,
10,000 requests per run (~0.3 s each on this project's machine). The grid
is rate_scale (10 values) x replicas (1, 2) x seeds, 200 runs by default.

It prints, for each executor, wall time, runs per minute, the speed-up
over one process and how much longer runs took than their CPU time (1.0x:
never waited for a CPU), then Ray's overhead over plain processes
(wall-time ratio; Ray's start-up is timed apart). It first measures how
much parallel CPU the (shared) machine gives at that moment, which bounds
the speed-up. Every executor must give identical results: it checks that.

    python bench/bench_sweep.py                    # 200 runs; serial baseline on 40 of them, spread over the grid
    python bench/bench_sweep.py --runs 60 --requests 2000 --no-ray
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from driftsim.capacity.pool import LocalPool, RayPool, SerialPool  # noqa: E402
from driftsim.capacity.spec import Grid, expand  # noqa: E402

SCENARIO = """
name = "bench-sweep"
seed = 0
replicas = 1
profile = "a100-llama-3.1-8b"
[workload]
kind = "synthetic"
num_requests = {requests}
[[workload.tenants]]
name = "chat"
rate_per_s = 12
input = {{ kind = "lognormal", mean = 600, cv = 1.0, max = 3000 }}
output = {{ kind = "lognormal", mean = 150, cv = 1.0, max = 800 }}
[[workload.tenants]]
name = "batch"
rate_per_s = 6
input = {{ kind = "lognormal", mean = 1000, cv = 1.0, max = 3000 }}
output = {{ kind = "lognormal", mean = 300, cv = 1.0, max = 1000 }}
[engine]
mode = "continuous"
max_num_seqs = 128
max_num_batched_tokens = 4096
max_model_len = 4096
[tenants.chat]
slo_ttft_s = 1.0
slo_e2e_s = 20.0
[tenants.batch]
slo_e2e_s = 60.0
"""


def specs(n_runs: int, requests: int, folder: Path):
    path = folder / "bench.toml"
    path.write_text(SCENARIO.format(requests=requests))
    scales = [round(0.3 + 0.05 * i, 2) for i in range(10)]
    per_seed = len(scales) * 2
    seeds = list(range(max(1, -(-n_runs // per_seed))))
    grid = Grid(scenario=str(path), axes={"rate_scale": scales, "replicas": [1, 2]}, seeds=seeds)
    return expand(grid, record_first_seed=False)[:n_runs]


def _burn(n: int) -> float:
    t0 = time.perf_counter()
    s = 0
    for i in range(n):
        s += i * i
    return time.perf_counter() - t0


def cpu_check(workers: int, n: int = 5_000_000) -> float:
    """How much parallel CPU the machine gives right now: one busy loop alone vs ``workers`` at once (1.0 = none)."""
    alone = _burn(n)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as ex:
        list(ex.map(_burn, [n // 10] * workers))  # start the workers first
        t0 = time.perf_counter()
        list(ex.map(_burn, [n] * workers))
        together = time.perf_counter() - t0
    return workers * alone / together


def timed(pool, batch) -> tuple[float, list]:
    t0 = time.perf_counter()
    outs = pool.run(batch)
    return time.perf_counter() - t0, outs


def key(outs) -> list:
    return [next(r["e2e_s_p99"] for r in o.rows if r["tenant"] == "overall") for o in outs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--serial-runs", type=int, default=40, help="runs timed in one process for the baseline (0: skip)")
    ap.add_argument("--jobs", type=int, default=None, help="local worker processes (default: every core)")
    ap.add_argument("--chunks", type=int, default=4, help="interleave the executors over this many slices of the grid")
    ap.add_argument("--no-ray", action="store_true")
    args = ap.parse_args()

    ray = None
    if not args.no_ray:
        try:
            import ray  # NOTE: optional (the ray extra): imported only when its row is wanted
        except ImportError:
            print("ray is not installed: pip install 'driftsim[ray]' (skipping the Ray row)")
    with tempfile.TemporaryDirectory() as tmp:
        batch = specs(args.runs, args.requests, Path(tmp))
        cores = os.cpu_count()
        workers = args.jobs or cores
        print(f"{len(batch)} runs of {args.requests:,} requests each (rate_scale x replicas x seeds), {cores} cores")
        print(f"parallel CPU available now (busy loop in {workers} processes vs one): {cpu_check(workers):.2f}x "
              f"(the machine is shared: below {workers} means other load)")
        step = max(1, len(batch) // max(args.serial_runs, 1))
        picks = set(list(range(0, len(batch), step))[: args.serial_runs])  # spread over the grid: runs differ in cost
        executors = {"one process (serial)": SerialPool(), f"local processes ({workers})": LocalPool(args.jobs)}
        start = None
        if ray is not None:
            t0 = time.perf_counter()
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
            start = time.perf_counter() - t0
            executors[f"local Ray ({workers} CPUs)"] = RayPool(None)
        wall = dict.fromkeys(executors, 0.0)
        outs: dict[str, dict[int, object]] = {name: {} for name in executors}
        # NOTE: the executors take turns on slices of the grid (order alternating), so a change in the shared
        # machine's background load hits them alike instead of whichever ran last.
        size = -(-len(batch) // args.chunks)
        for c in range(args.chunks):
            chunk = list(range(c * size, min(len(batch), (c + 1) * size)))
            order = list(executors) if c % 2 == 0 else list(reversed(executors))
            for name in order:
                idx = [i for i in chunk if i in picks] if name.startswith("one process") else chunk
                if not idx:
                    continue
                w, res = timed(executors[name], [batch[i] for i in idx])
                wall[name] += w
                outs[name].update(zip(idx, res))
        for pool in executors.values():
            pool.close()
        print(f"{'executor':<28} {'runs':>5} {'wall s':>8} {'runs/min':>9} {'s/run':>7} {'speed-up':>9} {'run wall/CPU':>13}")
        base = None
        for name, pool in executors.items():
            got = [outs[name][i] for i in sorted(outs[name])]
            if not got:
                continue
            assert all(o.ok for o in got), [o.error for o in got if not o.ok][:3]
            rate = 60 * len(got) / wall[name]
            base = base or rate
            stretch = sum(o.wall_s for o in got) / max(sum(o.cpu_s for o in got), 1e-9)  # > 1: runs waited for a CPU
            print(f"{name:<28} {len(got):>5} {wall[name]:>8.2f} {rate:>9.1f} {wall[name] / len(got):>7.3f} "
                  f"{rate / base:>8.2f}x {stretch:>12.2f}x")  # fmt: skip
        names = list(executors)
        ref = {i: key([o])[0] for i, o in outs[names[1]].items()}
        for name in names:
            assert all(key([o])[0] == ref[i] for i, o in outs[name].items()), f"{name} results differ"
        if start is not None:
            local, via_ray = wall[names[1]], wall[names[2]]
            print(f"Ray start-up (ray.init, local instance): {start:.1f} s, not included above")
            print(f"Ray overhead over plain processes: {via_ray / local:.2f}x wall time ({100 * (via_ray / local - 1):+.0f} %); "
                  f"{100 * (via_ray + start - local) / local:+.0f} % with start-up")  # fmt: skip
            ray.shutdown()
        print("results identical across executors")


if __name__ == "__main__":
    main()
