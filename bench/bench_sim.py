"""Simulator speed benchmark: whole-process wall time and peak memory, simulated requests per second.

Workload (the speed yardstick): Llama-3.1-8B on one A100
(bundled spec-derived profile), continuous batching with max_num_seqs 128 and
max_num_batched_tokens 4096, FIFO, prompt/output pairs resampled from the
Azure 2023 conversation trace (pairs with prompt <= 2048 tokens), Poisson
arrivals at 80 % of the capacity measured here first by a saturation run.

Whole process (the default): each size's trace is written once to a
driftsim Parquet file, then a fresh ``python -m driftsim simulate`` process
runs it (start-up imports, reading the trace, simulating, writing
requests.parquet and summary.json, printing the tables); wall time is the
process's (best of ``--repeat``), peak RSS its ru_maxrss. ``--baseline GITREF`` runs the same files
through that revision too (``git archive`` into a temporary folder, its
compiled core built there, same Python, ``PYTHONPATH`` pointing there), back
to back per size, and prints the ratio.

    python bench/bench_sim.py                               # 10k and 100k, this tree
    python bench/bench_sim.py --sizes 10000 100000 1000000 --baseline main
    python bench/bench_sim.py --in-process                  # simulate() alone, in a child process per size
    python bench/bench_sim.py --python-engine               # in process, the compiled core and the Python engine
    python bench/bench_sim.py --compare-step                # in process, also step-by-step (smallest size)
    python bench/bench_sim.py --python-engine --async-scheduling  # in process, vLLM's async scheduling on
    python bench/bench_sim.py --python-engine --replicas 4  # in process, 4 replicas (offered load x4)
    python bench/bench_sim.py --python-engine --shared-prefix  # in process, the shared-prefix workload below
    python bench/bench_sim.py --python-engine --shared-prefix --replicas 4 --router prefix_affinity
    python bench/bench_sim.py --python-engine --replicas 4 --max-outstanding 32 --policy priority
    python bench/bench_sim.py --python-engine --sessions     # in process, chat sessions (sessions_workload)
    python bench/bench_sim.py --python-engine --max-concurrency 64  # in process, a closed loop
    python bench/bench_sim.py --rate 6 --max-prompt 4096    # a fixed offered rate, longer prompts
    python bench/bench_sim.py --prefix-pair 20000           # prefix caching on vs off, shared-prefix workload

The shared-prefix workload is the same requests, each carrying the identity
of one of 8 system prompts (Zipf popularity, exponent 1) covering its first
min(512, prompt) tokens; on and off run the same table, best of 3 each.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from driftsim.costmodel.profiles import load_profile  # noqa: E402
from driftsim.sim.config import EngineConfig, GatewayConfig  # noqa: E402
from driftsim.sim.router import ROUTERS  # noqa: E402
from driftsim.sim.run import simulate  # noqa: E402
from driftsim.sim.closed_loop import ClosedLoop, simulate_closed_loop  # noqa: E402
from driftsim.sim.sessions import simulate_sessions  # noqa: E402
from driftsim.traces.synth import LengthDist, TenantLoad, generate  # noqa: E402
from driftsim.traces.loaders import load_trace  # noqa: E402
from driftsim.traces.schema import REQUEST_SCHEMA  # noqa: E402

PROFILE = "a100-llama-3.1-8b"
ENGINE = dict(max_num_seqs=128, max_num_batched_tokens=4096, max_model_len=4096, block_size=16)
REPLICAS = 1  # --replicas: behind ROUTER
ROUTER = "least_outstanding"  # --router
GATEWAY = {}  # --max-outstanding, --policy: a capped gateway and its policy
SHARED_PREFIX = False  # --shared-prefix: in process, shared_prefix_workload (prefix caching on)
SESSIONS = False  # --sessions: in process, sessions_workload sent turn by turn
CONCURRENCY = 0  # --max-concurrency: in process, a closed loop of that many requests in flight


MAX_PROMPT = 2048  # --max-prompt


def workload(n: int, rate: float | None, seed: int) -> pl.DataFrame:
    conv = load_trace(ROOT / "traces" / "data" / "azure2023_conv.csv").filter(pl.col("input_tokens") <= MAX_PROMPT)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, conv.height, n)
    arrivals = np.zeros(n) if rate is None else np.cumsum(rng.exponential(1.0 / rate, n))
    df = pl.DataFrame({
        "request_id": np.arange(n),
        "arrival_s": arrivals,
        "tenant": "default",
        "input_tokens": conv["input_tokens"].to_numpy()[pick],
        "output_tokens": conv["output_tokens"].to_numpy()[pick],
    })
    return df.with_columns(
        *[pl.lit(None, dtype=REQUEST_SCHEMA[c]).alias(c) for c in REQUEST_SCHEMA if c not in df.columns]
    ).select(list(REQUEST_SCHEMA))


SYSTEM_PROMPTS, SYSTEM_PROMPT_TOKENS = 8, 512


def shared_prefix_workload(n: int, rate: float, seed: int) -> pl.DataFrame:
    """:func:`workload` with prefix identity: one of 8 system prompts (Zipf 1) over each prompt's first 512 tokens."""
    df = workload(n, rate, seed)
    rng = np.random.default_rng(seed + 1)
    weights = 1.0 / np.arange(1, SYSTEM_PROMPTS + 1)
    pick = rng.choice(SYSTEM_PROMPTS, size=n, p=weights / weights.sum())
    blocks = np.minimum(df["input_tokens"].to_numpy(), SYSTEM_PROMPT_TOKENS) // 16
    ids = [[int(g) * 1000 + m for m in range(int(b))] for g, b in zip(pick, blocks)]
    return df.with_columns(pl.Series("prefix_ids", ids, dtype=pl.List(pl.Int64)),
                           pl.lit(16, dtype=pl.Int64).alias("prefix_block_tokens"))


def sessions_workload(n: int, rate: float, seed: int) -> pl.DataFrame:
    """Chat sessions of 1-6 turns (each prompt the history and a new input of 20-400 tokens, answers of
    20-300, a mean think time of 2 s, one of 8 system prompts of 512 tokens), starting at ``rate / 3.5``
    sessions per second (about ``rate`` requests per second)."""
    chat = TenantLoad("chat", rate / 3.5, input=LengthDist.uniform(20, 400), output=LengthDist.uniform(20, 300),
                      turns=LengthDist.uniform(1, 6), think_s=2.0, system_prompts=8, system_prompt_tokens=512)
    return generate([chat], num_requests=n, seed=seed)


def prefix_pair(n: int, rate: float) -> None:
    """Wall time of the same shared-prefix run with prefix caching on and off, best of 3 each."""
    profile = load_profile(PROFILE)
    trace = shared_prefix_workload(n, rate, 0)
    best: dict[bool, tuple[float, dict]] = {}
    for _ in range(3):
        for on in (False, True):
            engine = EngineConfig(**ENGINE, prefix_caching=on, gpu_memory_utilization=0.9)
            blocks = profile.kv_capacity_blocks(engine.block_size, engine.gpu_memory_utilization)
            t0 = time.perf_counter()
            res = simulate(trace, cost=profile.cost_model, engine=engine, num_blocks=blocks)
            wall = time.perf_counter() - t0
            if on not in best or wall < best[on][0]:
                best[on] = (wall, res.summary)
    print(f"shared-prefix workload, {n} requests at {rate:.2f} requests/s "
          f"({SYSTEM_PROMPTS} system prompts of {SYSTEM_PROMPT_TOKENS} tokens, Zipf 1)")
    print(f"{'prefix caching':>14} {'wall s':>8} {'req/s':>9} {'steps':>8} {'us/step':>8} {'token hit':>10} "
          f"{'TTFT p50':>9} {'E2E p50':>8}")
    per_step = {}
    for on in (False, True):
        wall, summ = best[on]
        g, steps = summ["overall"], summ["replicas"][0]["steps"]
        per_step[on] = wall / steps
        print(f"{'on' if on else 'off':>14} {wall:>8.2f} {n / wall:>9.0f} {steps:>8} {1e6 * per_step[on]:>8.1f} "
              f"{100 * g['prefix_token_hit_rate']:>9.1f}% {g['ttft_s']['p50']:>8.3f}s {g['e2e_s']['p50']:>7.2f}s")
    # cached prompts make steps shorter, so the same span holds more of them: per step is the engine's own cost
    print(f"on / off: wall time {best[True][0] / best[False][0]:.2f}, wall time per engine step "
          f"{per_step[True] / per_step[False]:.2f}")


def run_once(n: int, rate: float | None, mode: str = "compiled", seed: int = 0) -> dict:
    """One in-process run; ``mode``: "compiled" (the default engine: the compiled core where it applies),
    "python" (the Python engine) or "step" (the Python engine step by step)."""
    profile = load_profile(PROFILE)
    engine = EngineConfig(**ENGINE, fast_forward=mode != "step", compiled_core=mode == "compiled",
                          gpu_memory_utilization=0.9)
    make = sessions_workload if SESSIONS and rate is not None else shared_prefix_workload if SHARED_PREFIX else workload
    trace = make(n, rate, seed)
    blocks = profile.kv_capacity_blocks(engine.block_size, engine.gpu_memory_utilization)
    run = simulate_sessions if SESSIONS and rate is not None else simulate
    if CONCURRENCY and rate is not None:
        run = functools.partial(simulate_closed_loop, loop=ClosedLoop(max_concurrency=CONCURRENCY))
    t0 = time.perf_counter()
    res = run(trace, cost=profile.cost_model, engine=engine, num_blocks=blocks, replicas=REPLICAS,
              gateway=GatewayConfig(router=ROUTER, **GATEWAY))
    wall = time.perf_counter() - t0
    steps = sum(r["steps"] for r in res.replicas)
    return {
        "requests": n,
        "engine": {"compiled": "compiled core", "python": "Python"}.get(res.engine_core if mode == "compiled" else mode,
                                                                       "step-by-step"),
        "wall_s": wall,
        "requests_per_s": n / wall,
        "engine_steps": steps,
        "steps_per_s": steps / wall,
        "us_per_request": 1e6 * wall / n,
        "busy_fraction": res.summary["busy_fraction"],
        "throughput_rps": res.summary["overall"]["throughput_rps"],
        "e2e_p50_s": res.summary["overall"]["e2e_s"]["p50"],
        "ttft_p99_s": res.summary["overall"]["ttft_s"]["p99"],
        "mean_input": float(trace["input_tokens"].mean()),
        "mean_output": float(trace["output_tokens"].mean()),
        "prefix_token_hit_rate": res.summary["overall"].get("prefix_token_hit_rate"),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def child(args) -> None:
    print(json.dumps(run_once(args.child, args.rate, args.mode)))


def checkout(ref: str, into: Path) -> Path:
    """The tree of git revision ``ref`` unpacked under ``into``, laid out so that ``PYTHONPATH`` alone imports
    it: the repository's package folders linked inside its ``driftsim`` folder (as pyproject maps them)."""
    root = into / "baseline"
    root.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    for package in ("sim", "costmodel", "traces", "admission", "profiling", "validation", "capacity",
                    "experiments", "cli"):
        if (root / package).is_dir() and not (root / "driftsim" / package).exists():
            (root / "driftsim" / package).symlink_to(Path("..") / package)
    if (root / "sim" / "_stepcore.c").exists():  # its compiled core, built as an install builds it
        subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=root, check=True,
                       capture_output=True)
    return root


def tree_env(tree: Path | None, pycache: Path) -> dict:
    """Environment for a child running ``tree`` (None: this one), checked to import driftsim from it.

    Compiled bytecode is kept under ``pycache`` (as an installed package keeps it), so start-up is
    timed as a user meets it, not with every module compiled afresh.
    """
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(pycache)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    where = subprocess.run([sys.executable, "-c", "import driftsim.sim.run as r, driftsim.cli.main as c; "
                            "print(r.__file__); print(c.__file__)"],
                           env=env, cwd=tree or ROOT, capture_output=True, text=True, check=True).stdout.split()
    expected = (tree or ROOT).resolve()
    if not all(Path(w).resolve().is_relative_to(expected) for w in where):
        raise SystemExit(f"driftsim resolves to {where}, not to {expected}")
    return env


def whole_process(trace: Path, out: Path, env: dict, cwd: Path, blocks: int) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one fresh ``python -m driftsim simulate`` process on ``trace``."""
    cmd = [sys.executable, "-m", "driftsim", "simulate", "--trace", str(trace), "--profile", PROFILE,
           "--max-num-seqs", str(ENGINE["max_num_seqs"]), "--max-num-batched-tokens",
           str(ENGINE["max_num_batched_tokens"]), "--max-model-len", str(ENGINE["max_model_len"]),
           "--block-size", str(ENGINE["block_size"]), "--num-gpu-blocks", str(blocks), "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr.read().decode()}")
    proc.stderr.close()
    return wall, usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--load", type=float, default=0.8, help="fraction of measured capacity")
    ap.add_argument("--baseline", metavar="GITREF", help="also run each trace through this git revision, back to back")
    ap.add_argument("--repeat", type=int, default=3, help="whole-process runs per size and revision; the best counts")
    ap.add_argument("--in-process", action="store_true", help="time simulate() alone, in a child process per size")
    ap.add_argument("--compare-step", action="store_true", help="in process: also step-by-step execution (smallest size)")
    ap.add_argument("--python-engine", action="store_true",
                    help="in process: also the Python engine (the compiled core's reference), every size")
    ap.add_argument("--rate", type=float, help="offered requests/s (default: --load of the measured capacity)")
    ap.add_argument("--max-prompt", type=int, default=MAX_PROMPT, help="keep trace pairs with prompts up to this")
    ap.add_argument("--prefix-pair", type=int, metavar="N", help="only time prefix caching on vs off on N requests")
    ap.add_argument("--async-scheduling", action="store_true", help="in process: the engine with async scheduling")
    ap.add_argument("--replicas", type=int, default=1, help="in process: replicas behind --router")
    ap.add_argument("--router", default="least_outstanding", choices=sorted(ROUTERS),
                    help="in process, with --replicas: the gateway's router")
    ap.add_argument("--max-outstanding", type=int, help="in process: the gateway's cap of requests in flight per replica")
    ap.add_argument("--policy", default="fifo", help="in process, with --max-outstanding: the gateway's policy")
    ap.add_argument("--max-concurrency", type=int, default=0,
                    help="in process: a closed loop of N requests in flight (open times: the workload's arrivals)")
    ap.add_argument("--sessions", action="store_true",
                    help="in process: chat sessions (sessions_workload), each turn sent after the previous answer")
    ap.add_argument("--shared-prefix", action="store_true",
                    help="in process: requests carry the ids of 8 shared system prompts (prefix caching on)")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="compiled", help=argparse.SUPPRESS)
    args = ap.parse_args()
    globals()["MAX_PROMPT"] = args.max_prompt
    ENGINE["async_scheduling"] = args.async_scheduling
    globals()["REPLICAS"] = args.replicas
    globals()["ROUTER"] = args.router
    if args.max_outstanding is not None:
        GATEWAY.update(max_outstanding=args.max_outstanding, policy=args.policy)
    globals()["SHARED_PREFIX"] = args.shared_prefix
    globals()["SESSIONS"] = args.sessions
    globals()["CONCURRENCY"] = args.max_concurrency
    if args.child:
        return child(args)
    args.in_process = (args.in_process or args.compare_step or args.python_engine or args.async_scheduling
                       or args.replicas > 1 or args.shared_prefix or args.max_outstanding is not None or args.sessions
                       or args.max_concurrency > 0)
    if args.baseline and (args.in_process or args.prefix_pair):
        ap.error("--baseline compares whole processes: give it without --in-process and --prefix-pair")

    sat = run_once(5000, None)
    capacity = sat["throughput_rps"]
    rate = args.rate or args.load * capacity
    print(f"profile {PROFILE}, engine {ENGINE}, replicas {REPLICAS} ({ROUTER}), gateway {GATEWAY or 'uncapped'}, "
          f"prompts <= {MAX_PROMPT} tokens")
    print(f"capacity (5000 requests at t=0): {capacity:.2f} requests/s; offered load {rate:.2f} requests/s "
          f"({rate / capacity:.0%})")
    if args.prefix_pair:
        return prefix_pair(args.prefix_pair, rate)
    if args.in_process:
        return in_process(args, rate)
    profile = load_profile(PROFILE)
    blocks = profile.kv_capacity_blocks(ENGINE["block_size"], 0.9)
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; each run a fresh "
          f"`python -m driftsim simulate` process (start-up with bytecode cached, trace read, run, requests.parquet, "
          f"summary, tables); best of {args.repeat}")
    with tempfile.TemporaryDirectory(prefix="bench-sim-") as tmp:
        tmp = Path(tmp)
        trees: list[tuple[str, Path | None]] = [("this tree", None)]
        if args.baseline:
            rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.baseline],
                                 capture_output=True, text=True, check=True).stdout.strip()
            trees.append((f"baseline {rev}", checkout(args.baseline, tmp)))
        envs = {label: tree_env(tree, tmp / f"pycache-{k}") for k, (label, tree) in enumerate(trees)}
        warm = tmp / "warm-up.parquet"
        workload(200, rate, 1).write_parquet(warm)
        for k, (label, tree) in enumerate(trees):  # compiles and caches the bytecode of what simulate imports
            whole_process(warm, tmp / f"warm-up-{k}", envs[label], tree or ROOT, blocks)
        print(f"{'requests':>9} {'revision':>18} {'wall s':>8} {'req/s':>9} {'peak RSS MB':>12}")
        for n in args.sizes:
            trace = tmp / f"trace-{n}.parquet"
            workload(n, rate, 0).write_parquet(trace)
            best: dict[str, tuple[float, float]] = {}
            for rep in range(args.repeat):  # alternating, so that a burst of load hits both alike
                for k, (label, tree) in enumerate(trees):
                    wall, rss = whole_process(trace, tmp / f"out-{n}-{k}-{rep}", envs[label], tree or ROOT, blocks)
                    if label not in best or wall < best[label][0]:
                        best[label] = (wall, rss)
            walls = {label: wall for label, (wall, _) in best.items()}
            for label, (wall, rss) in best.items():
                print(f"{n:>9} {label:>18} {wall:>8.2f} {n / wall:>9.0f} {rss:>12.0f}", flush=True)
            if len(walls) == 2:
                base, ours = walls[trees[1][0]], walls["this tree"]
                print(f"{n:>9} {'baseline / this':>18} {base / ours:>8.2f}x", flush=True)


def in_process(args, rate: float) -> None:
    """simulate() alone (trace built in memory first), one child process per size."""
    runs = [(n, mode) for n in args.sizes for mode in (["compiled", "python"] if args.python_engine else ["compiled"])]
    if args.compare_step:
        runs.append((min(args.sizes), "step"))
    print(f"{'requests':>9} {'engine':>13} {'wall s':>8} {'req/s':>9} {'steps':>10} {'steps/s':>9} {'us/req':>7} {'E2E p50':>8} {'TTFT p99':>9} {'peak RSS MB':>12}")
    for n, mode in runs:
        cmd = [sys.executable, __file__, "--child", str(n), "--rate", repr(rate), "--mode", mode,
               "--max-prompt", str(MAX_PROMPT), "--replicas", str(args.replicas), "--router", args.router,
               *(["--async-scheduling"] if args.async_scheduling else []),
               *(["--shared-prefix"] if args.shared_prefix else []), *(["--sessions"] if args.sessions else []),
               "--max-concurrency", str(args.max_concurrency),
               *(["--max-outstanding", str(args.max_outstanding), "--policy", args.policy]
                 if args.max_outstanding is not None else [])]
        r = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
        print(f"{n:>9} {r['engine']:>13} {r['wall_s']:>8.2f} {r['requests_per_s']:>9.0f} {r['engine_steps']:>10} "
              f"{r['steps_per_s']:>9.0f} {r['us_per_request']:>7.1f} {r['e2e_p50_s']:>7.2f}s {r['ttft_p99_s']:>8.2f}s "
              f"{r['peak_rss_mb']:>12.0f}")
    hits = (f"; prefix cache token hit rate {100 * r['prefix_token_hit_rate']:.1f} %" if SHARED_PREFIX or SESSIONS
            else "")
    print(f"(mean prompt {r['mean_input']:.0f} tokens, mean output {r['mean_output']:.0f} tokens{hits})")


if __name__ == "__main__":
    main()
