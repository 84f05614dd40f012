"""Mixed steps (prefill beside decoding sequences): how well the calibration's fit times them.

For the recorded vllm-cpu calibration (tests/data/vllm-cpu-steps) and for each validation folder
given (a ``driftsim validate --out`` folder, or the ``out`` folder the real-engine tests write: it
needs ``validation.json`` and ``calibration_requests.parquet``), prints the fitted prefill factor,
mixed factor and constant (:func:`driftsim.validation.server_steps.fit_step_correction` on the
steps :func:`driftsim.validation.calibration.engine_steps` recovers), and the median |error| of the
calibration's own mixed steps under that fit, under a constant alone (the median excess over the
decode correction and the prefill factor) and under the profile with the decode correction only.
With ``real_requests.parquet`` present, the same on each replay's mixed steps (held out), each
request's cached prompt tokens taken from ``sim_requests.parquet`` as validation does. The folder's
saved overhead probes give the client overhead and the idle server's prefill factor
(:func:`driftsim.validation.calibration.fit_probe` against the uncorrected profile), as a live
calibration takes them.

    python bench/bench_mixed_steps.py [FOLDER ...] [--profile bench/prefix/tiny-cpu.toml]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import polars as pl

from driftsim.costmodel.profiles import load_profile
from driftsim.profiling.server_facts import ServerFacts, engine_config
from driftsim.validation.calibration import ProbeFit, engine_steps, fit_probe
from driftsim.validation.server_steps import StepCorrection, fit_step_correction, predicted, prefill_work_s, step_batches

ROOT = Path(__file__).resolve().parents[1]
RECORDED = ROOT / "tests" / "data" / "vllm-cpu-steps"


def mixed_steps(frame: pl.DataFrame, engine, overhead_s: float, cost) -> pl.DataFrame:
    steps = engine_steps(frame, engine=engine, overhead_s=overhead_s, cost=cost, lag_steps=1)
    return steps.filter(pl.col("consistent"), ~pl.col("after_idle"), pl.col("prefill_seqs") > 0,
                        pl.col("decode_seqs") > 0)


def median_err(steps: pl.DataFrame, model) -> float:
    y = steps["duration_s"].to_numpy()
    return float(np.median(np.abs(predicted(steps, model) / y - 1))) if steps.height else float("nan")


def models(calib: pl.DataFrame, engine, probe: ProbeFit, cost) -> tuple[dict, pl.DataFrame, dict]:
    """The fit, the calibration's mixed steps, and the three models compared: fitted, constant alone,
    decode correction only."""
    overhead_s = probe.overhead_s
    fit = fit_step_correction(engine_steps(calib, engine=engine, overhead_s=overhead_s, cost=cost, lag_steps=1,
                                           idle_starts=True), cost, max_num_seqs=engine.max_num_seqs,
                              prefill_factor=probe.prefill_factor)
    decode = StepCorrection(cost, fit["knots"], fit["values_s"], 0.0, fit["prefill_factor"], 1.0)
    mixed = mixed_steps(calib, engine, overhead_s, cost)
    batches = step_batches(mixed)
    excess = mixed["duration_s"].to_numpy() - np.array([decode.step_time(b) for b in batches]) - (
        fit["prefill_factor"] - 1.0) * np.array([prefill_work_s(cost, b) for b in batches])
    constant = max(0.0, float(np.median(excess))) if excess.size else 0.0
    if excess.size >= 3:  # how the excess grows with the prefill: a factor's shape, or a constant's
        tokens = mixed["prefill_tokens"].to_numpy()
        thirds = np.array_split(np.argsort(tokens, kind="stable"), 3)
        print("  excess over the decode correction by prefill size (thirds of the mixed steps): "
              + ", ".join(f"{np.median(tokens[i]):.0f} tokens {1000 * np.median(excess[i]):+.1f} ms" for i in thirds))
    return fit, mixed, {
        "fitted": StepCorrection(cost, fit["knots"], fit["values_s"], fit["prefill_step_s"], fit["prefill_factor"],
                                 fit["mixed_factor"]),
        "constant alone": StepCorrection(cost, fit["knots"], fit["values_s"], constant, fit["prefill_factor"]),
        "decode only": decode,
    }


def report(name: str, calib: pl.DataFrame, engine, probe: ProbeFit, cost, replays=None, sims=None) -> None:
    overhead_s = probe.overhead_s
    fit, own, ms = models(calib, engine, probe, cost)
    print(f"{name}: prefill factor {fit['prefill_factor']:.3f}, mixed factor {fit['mixed_factor']:.3f}, "
          f"constant {1000 * fit['prefill_step_s']:.1f} ms ({fit['mixed_steps']} mixed steps); constant alone would be "
          f"{1000 * ms['constant alone'].prefill_step_s:.1f} ms")
    print("  calibration's mixed steps, median |error|: "
          + ", ".join(f"{k} {100 * median_err(own, m):.1f} %" for k, m in ms.items()))
    if replays is None:
        return
    for (load, rep), frame in replays.group_by(["load", "repeat"], maintain_order=True):
        frame = frame.drop("load", "repeat")
        if sims is not None:
            cached = sims.filter(pl.col("load") == load, pl.col("repeat") == rep).select("request_id", "cached_tokens")
            frame = frame.join(cached, on="request_id", how="left")
        steps = mixed_steps(frame, engine, overhead_s, cost)
        print(f"  held out, load {load} repeat {rep}, {steps.height} mixed steps: "
              + ", ".join(f"{k} {100 * median_err(steps, m):.1f} %" for k, m in ms.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="*", type=Path)
    ap.add_argument("--profile", default=str(ROOT / "bench" / "prefix" / "tiny-cpu.toml"))
    args = ap.parse_args()
    cost = load_profile(args.profile).cost_model
    meta = json.loads((RECORDED / "server.json").read_text())
    report("recorded calibration", pl.read_parquet(RECORDED / "replay.parquet"),
           engine_config(ServerFacts(**meta["facts"])), fit_probe(meta["overhead_samples"], cost), cost)
    for folder in args.folders:
        data = json.loads((folder / "validation.json").read_text())
        real, sim = folder / "real_requests.parquet", folder / "sim_requests.parquet"
        report(str(folder), pl.read_parquet(folder / "calibration_requests.parquet"),
               engine_config(ServerFacts(**data["server"])), fit_probe(data["overhead_samples_s"], cost), cost,
               pl.read_parquet(real) if real.exists() else None, pl.read_parquet(sim) if sim.exists() else None)


if __name__ == "__main__":
    main()
