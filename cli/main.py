"""The ``driftsim`` command line: thin wrappers that parse, build a scenario, call the library, print.

Every command exits non-zero with a one-line message on bad input.

NOTE: start-up time. Commands import the library inside their bodies, and
:mod:`driftsim.cli.lazy_rich` defers the two rich modules typer's help
renderer imports without using them, so ``driftsim --help`` loads no
polars, numpy, plotly, markdown-it or pygments (``bench/bench_cli_startup.py``
times it).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

# polars' allocator (jemalloc, configured when polars loads): one arena, not one per CPU, so that memory
# one thread freed serves the next thread's allocations, and freed pages handed back after 0.1 s, not
# polars' 0.5 s, so that numpy's arrays (another allocator) do not stack on pages the trace loader freed:
# a 1M-request run peaks ~45 MB lower in the same wall time (bench/bench_sim.py). A user's own setting is
# kept; polars' default, which a parent process that loaded polars passes down, is not one.
_POLARS_JEMALLOC_DEFAULT = "dirty_decay_ms:500,muzzy_decay_ms:1000"
if os.environ.get("_RJEM_MALLOC_CONF", _POLARS_JEMALLOC_DEFAULT) == _POLARS_JEMALLOC_DEFAULT:
    os.environ["_RJEM_MALLOC_CONF"] = "narenas:1,dirty_decay_ms:100,muzzy_decay_ms:0"

from driftsim.cli import lazy_rich

lazy_rich.install()  # before typer: its help renderer imports rich modules the help never uses

import typer  # noqa: E402
from rich.table import Table  # noqa: E402

from driftsim.cli import plain_params  # noqa: E402

plain_params.install()  # option values without pydantic where they are plain (start-up)

from driftsim import __version__
from driftsim.cli.choices import (
    Counter, EngineMode, Estimator, Granularity, Placement, PolicyName, RouterName, TraceFormat, value,
)
from driftsim.cli.render import inspect_table, make_console, print_estimation, print_summary
from driftsim.sim.run_description import describe_run, overload_note

app = typer.Typer(
    name="driftsim",
    help=(
        "Simulate multi-tenant LLM inference on GPUs: per-tenant latency under a scheduler, GPU, model and load.\n\n"
        "`driftsim simulate` alone runs the embedded DriftSched set-up; `driftsim simulate --trace FILE --profile NAME` "
        "a vLLM server (continuous batching); `driftsim simulate --num-prompts 200 --request-rate 4` the same with a "
        "workload named as `vllm bench serve` names it. Then change one thing at a time: `--replicas`, `--policy`, "
        "`--rate-scale`, or a whole `--scenario FILE`."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
#: ``driftsim --help`` groups commands by what a user is doing.
SIMULATE_PANEL = "Simulate"
MEASURE_PANEL = "Measure a real engine"
traces_app = typer.Typer(help="Look at request traces before simulating them.", no_args_is_help=True)
app.add_typer(traces_app, name="traces", rich_help_panel=SIMULATE_PANEL)
profiles_app = typer.Typer(help="Bundled GPU x model profiles (cost models).", no_args_is_help=True)
app.add_typer(profiles_app, name="profiles", rich_help_panel=SIMULATE_PANEL)
reproduce_app = typer.Typer(help="Reproduce a paper's experiments in simulation, with the paper's numbers alongside.", no_args_is_help=True)
app.add_typer(reproduce_app, name="reproduce", rich_help_panel="Reproduce")

console = make_console()
err = make_console(stderr=True)


def _print_version(value: bool) -> None:
    if value:
        console.print(f"driftsim {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", help="Print driftsim's version and exit.", callback=_print_version, is_eager=True),
) -> None:
    """Simulate multi-tenant LLM inference on GPUs."""


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(2)


def _input_errors() -> tuple[type[BaseException], ...]:
    from driftsim.sim.scenario import INPUT_ERRORS

    return INPUT_ERRORS


@app.command(rich_help_panel=SIMULATE_PANEL)
def simulate(
    scenario: Optional[Path] = typer.Option(None, "--scenario", "-s", help="Scenario TOML, or a bundled one by name: 'driftsched' (micro-batch worker) or 'vllm' (continuous batching). Default: 'vllm' when --trace, --profile or a workload flag is given, else 'driftsched'.", rich_help_panel="Scenario"),
    trace: Optional[Path] = typer.Option(None, "--trace", "-t", help="Replay this trace file (Azure/BurstGPT CSV, Mooncake/Bailian JSONL, Vidur CSV, driftsim CSV/Parquet).", rich_help_panel="Workload"),
    trace_format: TraceFormat = typer.Option(TraceFormat.auto, "--trace-format", "--format", help="Trace format if auto-detection is not enough (--format: old name).", show_default=True, rich_help_panel="Workload"),
    tenants: Optional[str] = typer.Option(None, "--tenants", help="Tenants by weight, splitting a trace or mixing a generated workload: 'premium=1,standard=1,batch=1'.", rich_help_panel="Workload"),
    rate_scale: Optional[float] = typer.Option(None, "--rate-scale", help="Multiply the request rate (2 = twice as many requests per second).", rich_help_panel="Workload"),
    duration: Optional[float] = typer.Option(None, "--duration-s", "--duration", help="Keep only arrivals in the first this many seconds (--duration: old name).", rich_help_panel="Workload"),
    max_requests: Optional[int] = typer.Option(None, "--max-requests", min=1, help="Keep only the first N requests.", rich_help_panel="Workload"),
    num_prompts: Optional[int] = typer.Option(None, "--num-prompts", min=1, help="Requests to send, as vllm bench serve: generated (default 1000), or the first N of --trace.", rich_help_panel="Workload"),
    request_rate: Optional[float] = typer.Option(None, "--request-rate", help="Mean requests per second, as vllm bench serve ('inf': all at once, the default when generating); with --trace it re-times the trace.", rich_help_panel="Workload"),
    burstiness: Optional[float] = typer.Option(None, "--burstiness", help="Gamma shape of the gaps between requests, as vllm bench serve: 1 Poisson (default), below 1 burstier, 'inf' evenly spaced.", rich_help_panel="Workload"),
    input_len: Optional[int] = typer.Option(None, "--input-len", min=1, help="Generated prompts: mean length, tokens (default 1024).", rich_help_panel="Workload"),
    output_len: Optional[int] = typer.Option(None, "--output-len", min=1, help="Generated outputs: mean length, tokens (default 128).", rich_help_panel="Workload"),
    range_ratio: Optional[float] = typer.Option(None, "--range-ratio", min=0, help="Generated lengths uniform from len*(1-r) to len*(1+r) (default 0: fixed).", rich_help_panel="Workload"),
    max_concurrency: Optional[int] = typer.Option(None, "--max-concurrency", min=1, help="Closed-loop client, as vllm bench serve: at most N requests in flight; the next is sent when one completes.", rich_help_panel="Workload"),
    think_s: Optional[float] = typer.Option(None, "--think-s", min=0, help="With --max-concurrency: pause, seconds, between a completion and the send it allows.", rich_help_panel="Workload"),
    profile: Optional[str] = typer.Option(None, "--profile", "-p", help="GPU x model profile name or file (see `driftsim profiles list`).", rich_help_panel="Hardware"),
    replicas: Optional[int] = typer.Option(None, "--replicas", "-r", min=1, help="Engine replicas (one GPU each). Default: the scenario's (1).", rich_help_panel="Hardware"),
    mode: Optional[EngineMode] = typer.Option(None, "--mode", help="continuous: vLLM server; microbatch: DriftSched worker. Default: the scenario's (driftsched: microbatch; vllm: continuous).", rich_help_panel="Engine"),
    max_num_seqs: Optional[int] = typer.Option(None, "--max-num-seqs", min=1, help="Sequences per engine iteration. Default: the profile's.", rich_help_panel="Engine"),
    max_num_batched_tokens: Optional[int] = typer.Option(None, "--max-num-batched-tokens", min=1, help="Tokens per engine iteration. Default: the profile's.", rich_help_panel="Engine"),
    block_size: Optional[int] = typer.Option(None, "--block-size", min=1, help="Tokens per KV block. Default: the profile's (16).", rich_help_panel="Engine"),
    num_gpu_blocks: Optional[int] = typer.Option(None, "--num-gpu-blocks", min=1, help="KV blocks per replica (as a server's /metrics reports). Default: from the profile's GPU memory.", rich_help_panel="Engine"),
    max_model_len: Optional[int] = typer.Option(None, "--max-model-len", min=1, help="Prompt + output limit per request. Default: the profile's.", rich_help_panel="Engine"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Micro-batch size (microbatch mode). Default: the scenario's (32).", rich_help_panel="Engine"),
    batch_wait: Optional[float] = typer.Option(None, "--batch-wait-s", "--batch-wait", min=0, help="Micro-batch wait, seconds (microbatch mode; --batch-wait: old name). Default: the scenario's (0.01).", rich_help_panel="Engine"),
    policy: Optional[PolicyName] = typer.Option(None, "--policy", help="Scheduling policy. With no --max-outstanding cap it orders each engine's waiting queue, as vLLM's --scheduling-policy priority does (weighted and vtc need a cap). Default: the scenario's (fifo).", rich_help_panel="Scheduling"),
    max_outstanding: Optional[int] = typer.Option(None, "--max-outstanding", min=1, help="Cap on requests in flight per replica (continuous mode); the policy orders the rest at the gateway. Default: no cap.", rich_help_panel="Scheduling"),
    router: Optional[RouterName] = typer.Option(None, "--router", help="How the gateway picks a replica. Default: least_outstanding.", rich_help_panel="Scheduling"),
    placement: Optional[Placement] = typer.Option(None, "--placement", help="Where the policy acts: gateway (in front of the engine) or engine (its waiting queue, with preemption). Default: engine for a non-FIFO policy with no cap, else gateway.", rich_help_panel="Scheduling"),
    estimator: Optional[Estimator] = typer.Option(None, "--estimator", help="Output-length estimate at admission: oracle (real lengths), driftsched (keyword formula + EMA calibration) or learned. Default: the scenario's (oracle).", rich_help_panel="Scheduling"),
    counter: Optional[Counter] = typer.Option(None, "--counter", help="Token counting for estimates: tokenizer, or whitespace (DriftSched's split() proxy). Default: tokenizer.", rich_help_panel="Scheduling"),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="Local tokenizer.json (or its folder) for --counter tokenizer; default: the trace's own token counts.", rich_help_panel="Scheduling"),
    calibration: Optional[bool] = typer.Option(None, "--calibration/--no-calibration", help="DriftSched's EMA drift calibration on or off.", rich_help_panel="Scheduling"),
    granularity: Optional[Granularity] = typer.Option(None, "--granularity", help="Calibration bias key (category: the original). Default: category.", rich_help_panel="Scheduling"),
    oracle_regret: bool = typer.Option(False, "--oracle-regret", help="Also simulate with the real output lengths as estimates and report the latency gap.", rich_help_panel="Scheduling"),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed for generated workloads and tenant assignment.", rich_help_panel="Scenario"),
    horizon: Optional[float] = typer.Option(None, "--horizon-s", "--horizon", help="Stop the simulation at this time, seconds; requests in flight are reported unfinished (--horizon: old name). Default: run to the end.", rich_help_panel="Scenario"),
    prefix_caching: Optional[bool] = typer.Option(None, "--prefix-caching/--no-prefix-caching", help="vLLM's automatic prefix caching for requests that carry prefix identity (continuous mode). Default: on.", rich_help_panel="Engine"),
    step_by_step: bool = typer.Option(False, "--step-by-step", help="Disable the exact fast-forward (for checking; same results, slower).", rich_help_panel="Scenario"),
    python_engine: bool = typer.Option(False, "--python-engine", help="Run the Python engine even where the compiled core applies (for checking; same results, slower).", rich_help_panel="Scenario"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder; default: a fresh driftsim-out/<scenario>-<time>-<suffix>. A folder holding files is refused unless --force.", rich_help_panel="Output"),
    force: bool = typer.Option(False, "--force", help="Write into a --out folder that already holds files (overwriting them).", rich_help_panel="Output"),
    summary_only: bool = typer.Option(False, "--summary-only", help="Keep no per-request rows: write summary.json only (percentiles within 0.5 %, from a streaming sketch). A native trace file is read lazily; memory stays flat.", rich_help_panel="Output"),
    stream: bool = typer.Option(False, "--stream", help="Read a native trace file lazily and write requests.parquet as requests settle; memory stays flat (percentiles within 0.5 %).", rich_help_panel="Output"),
    report: bool = typer.Option(False, "--report", help="Also record the engine's batch, queue and KV use (engine_samples.parquet) and write report.html (offline).", rich_help_panel="Output"),
) -> None:
    """Simulate a scenario and print per-tenant latency, throughput and SLO attainment.

    Workload flags are named as vllm bench serve names them: with no
    --trace they generate the requests (its random dataset); with --trace,
    --num-prompts keeps the first N and --request-rate re-times them.

    With --trace, --profile or a workload flag (and no --scenario) it
    simulates a vLLM server: continuous batching with the profile's limits.
    With none of them, the embedded DriftSched set-up (micro-batch worker).
    The first line printed says what ran. Writes requests.parquet (one row
    per request) and summary.json to a fresh output folder.

    Examples:

      driftsim simulate

      driftsim simulate --trace traces/data/azure2023_conv.csv --tenants premium=1,standard=2,batch=3 --profile a100-llama-3.1-8b

      driftsim simulate --trace traces/data/azure2023_conv.csv --tenants premium=2,batch=1 --rate-scale 4 --policy priority

      driftsim simulate --scenario my.toml --rate-scale 1.5 --replicas 2

      driftsim simulate --num-prompts 200 --request-rate 4 --input-len 512 --output-len 128 --report

      driftsim simulate --trace traces/data/azure2023_conv.csv --max-concurrency 8 --num-prompts 100

      driftsim simulate --trace week.parquet --summary-only
    """
    _simulate(_SimulateOptions(**locals()))  # the first statement: locals() is exactly the flags


@dataclass(frozen=True)
class _SimulateOptions:
    """``driftsim simulate``'s flags, as given (None = not given: the scenario's value stands)."""

    scenario: Path | None
    trace: Path | None
    trace_format: TraceFormat
    tenants: str | None
    rate_scale: float | None
    duration: float | None
    max_requests: int | None
    num_prompts: int | None
    request_rate: float | None
    burstiness: float | None
    input_len: int | None
    output_len: int | None
    range_ratio: float | None
    max_concurrency: int | None
    think_s: float | None
    profile: str | None
    replicas: int | None
    mode: EngineMode | None
    max_num_seqs: int | None
    max_num_batched_tokens: int | None
    block_size: int | None
    num_gpu_blocks: int | None
    max_model_len: int | None
    batch_size: int | None
    batch_wait: float | None
    policy: PolicyName | None
    max_outstanding: int | None
    router: RouterName | None
    placement: Placement | None
    estimator: Estimator | None
    counter: Counter | None
    tokenizer: Path | None
    calibration: bool | None
    granularity: Granularity | None
    oracle_regret: bool
    seed: int | None
    horizon: float | None
    prefix_caching: bool | None
    step_by_step: bool
    python_engine: bool
    out: Path | None
    force: bool
    summary_only: bool
    stream: bool
    report: bool

    @property
    def base_scenario(self) -> Path | str | None:
        """The scenario the flags apply to: ``--scenario``; else a vLLM server when a trace, a profile or a
        workload flag is given (a vLLM user's expectation); else the embedded DriftSched set-up."""
        if self.scenario is not None:
            return self.scenario
        workload = (self.trace, self.profile, self.tenants, self.rate_scale, self.duration, self.max_requests,
                    *self.bench_flags.values(), self.max_concurrency)  # fmt: skip
        return "vllm" if any(v is not None for v in workload) else None

    @property
    def bench_flags(self) -> dict[str, object]:
        """The vllm bench serve workload flags, by flag name (None = not given)."""
        return {"--num-prompts": self.num_prompts, "--request-rate": self.request_rate, "--burstiness": self.burstiness,
                "--input-len": self.input_len, "--output-len": self.output_len, "--range-ratio": self.range_ratio}

    def conflict(self) -> str | None:
        """Two flags that cannot go together, as a sentence naming both; None when they all fit."""
        given = {flag for flag, v in self.bench_flags.items() if v is not None}
        pairs = [("--trace", f, "a trace brings its own lengths") for f in ("--input-len", "--output-len", "--range-ratio")]
        pairs += [("--max-requests", "--num-prompts", "both keep the first N requests"),
                  ("--rate-scale", "--request-rate", "one scales the trace's rate, the other sets the rate")]
        for a, b, why in pairs:
            if b in given and getattr(self, a[2:].replace("-", "_")) is not None:
                return f"{a} and {b} cannot go together: {why}; give one of them"
        if self.trace is not None and "--burstiness" in given and "--request-rate" not in given:
            return "--burstiness re-times --trace only with --request-rate (the mean rate); give both or neither"
        if self.think_s is not None and self.max_concurrency is None:
            return "--think-s is the pause before a freed slot of --max-concurrency is used; give --max-concurrency"
        if self.max_concurrency is not None and (self.summary_only or self.stream):
            return (f"--max-concurrency and {'--summary-only' if self.summary_only else '--stream'} cannot go "
                    "together: the closed loop sends on completions, which needs the results in memory")
        for flag in ("--request-rate", "--burstiness"):
            v = self.bench_flags[flag]
            if v is not None and not v > 0:
                return f"{flag}: expected a number > 0 or inf, got {v}"
        if self.range_ratio is not None and not self.range_ratio < 1:
            return f"--range-ratio: expected a number in [0, 1), got {self.range_ratio}"
        return None

    @property
    def generates(self) -> bool:
        """Whether the workload is generated from the bench flags: with no trace, a length flag, or any bench flag
        on the default scenario."""
        if self.trace is not None:
            return False
        lengths = (self.input_len, self.output_len, self.range_ratio)
        return any(v is not None for v in lengths) or (
            self.scenario is None and any(v is not None for v in self.bench_flags.values()))

    @property
    def results(self) -> str:
        """How per-request results are kept (see :data:`driftsim.sim.scenario_folder.RESULT_MODES`)."""
        return "summary" if self.summary_only else "stream" if self.stream else "memory"

    def overrides(self, tenant_weights: dict[str, float] | None) -> dict:
        """The flags as scenario overrides (the scenario's tables and keys)."""
        workload: dict = {"rate_scale": self.rate_scale, "duration_s": self.duration, "max_requests": self.max_requests,
                          "max_concurrency": self.max_concurrency, "think_s": self.think_s}  # fmt: skip
        workload.update({flag[2:].replace("-", "_"): "inf" if v == math.inf else v for flag, v in self.bench_flags.items()})
        if self.trace is not None:
            workload.update(kind="trace", path=str(self.trace), format=value(self.trace_format))
        elif self.generates:
            workload["kind"] = "bench"
        if tenant_weights is not None:
            workload["assign_tenants"] = tenant_weights
        engine = {
            "mode": value(self.mode), "max_num_seqs": self.max_num_seqs, "max_num_batched_tokens": self.max_num_batched_tokens,
            "block_size": self.block_size, "num_gpu_blocks": self.num_gpu_blocks, "max_model_len": self.max_model_len,
            "batch_size": self.batch_size, "batch_wait_s": self.batch_wait,
        }  # fmt: skip
        if self.step_by_step:
            engine["fast_forward"] = False
        if self.python_engine:
            engine["compiled_core"] = False
        if self.prefix_caching is not None:
            engine["prefix_caching"] = self.prefix_caching
        return {
            "profile": self.profile, "replicas": self.replicas, "seed": self.seed, "horizon_s": self.horizon,
            "workload": workload, "engine": engine,
            "gateway": {"policy": value(self.policy), "max_outstanding": self.max_outstanding, "router": value(self.router),
                        "placement": value(self.placement)},
            "admission": {
                "estimator": value(self.estimator), "counter": value(self.counter), "calibration": self.calibration,
                "granularity": value(self.granularity), "tokenizer_path": str(self.tokenizer) if self.tokenizer else None,
            },
        }  # fmt: skip


def _simulate(opts: _SimulateOptions) -> None:
    """Load the scenario with the flags over it, run it into its folder with a progress bar, print the summary."""
    from driftsim.sim.scenario import load_scenario
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from driftsim.sim.outdir import claim_folder, discard_if_empty
    from driftsim.sim.sampling import EngineSampler
    from driftsim.sim.scenario_folder import FolderRun, run_scenario_to_folder
    from driftsim.traces.transform import parse_tenant_weights

    try:
        weights = parse_tenant_weights(opts.tenants) if opts.tenants is not None else None
    except ValueError as exc:
        _fail(f"--tenants: {exc}")
        return
    if opts.summary_only and opts.stream:
        _fail("--summary-only writes no per-request rows and --stream writes them as they settle; choose one")
        return
    if opts.oracle_regret and (opts.summary_only or opts.stream):
        _fail("--oracle-regret needs the trace and results in memory; drop --summary-only / --stream")
        return
    if opts.conflict():
        _fail(opts.conflict())
        return
    folder = None
    try:
        sc = load_scenario(opts.base_scenario, opts.overrides(weights))
        new = opts.out is None or not opts.out.exists()
        folder = claim_folder(opts.out, sc.name, force=opts.force)
        run = FolderRun(folder=folder, results=opts.results, oracle_regret=opts.oracle_regret)
        with Progress(
            TextColumn("simulating"), BarColumn(), TextColumn("{task.percentage:>3.0f}% of arrivals"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=True,
        ) as bar:
            task = bar.add_task("sim", total=1.0)
            sampler = EngineSampler() if opts.report else None
            done = run_scenario_to_folder(sc, run=run, progress=lambda f: bar.update(task, completed=f),
                                          observers=[sampler] if sampler else None)  # fmt: skip
    except _input_errors() as exc:
        if folder is not None and new:
            discard_if_empty(folder)  # a run refused on its input leaves no empty folder behind
        _fail(str(exc))
        return
    _print_simulation(sc.name, done)
    if sampler is not None:
        from driftsim.experiments.run_report import write_run_report

        sampler.write(folder)
        console.print(f"report written to [bold]{write_run_report(folder, folder / 'report.html')}[/] (opens offline)",
                      highlight=False)  # fmt: skip


def _print_simulation(name: str, done) -> None:
    """Trace repairs, the per-tenant summary, estimation and regret, and where the results are."""
    result, context, wall = done.result, done.context, done.wall_s
    for line in context["trace_repairs"]:
        err.print(f"[yellow]trace repair:[/] {line}", highlight=False)
    n = result.requests.height if result.requests is not None else result.summary["overall"]["requests"]
    title = f"{name}: {n} requests, profile {context['profile']['name']}, {context['engine']['mode']} engine x{len(result.replicas)}, policy {context['gateway']['policy']}"
    console.print(describe_run(context, len(result.replicas)), highlight=False)
    for note in context.get("notes", []):
        err.print(f"[yellow]warning:[/] {note}", highlight=False)
    overload = overload_note(result.summary, context)
    if overload:
        err.print(f"[yellow]warning:[/] {overload}", highlight=False)
    print_summary(console, result.summary, title)
    if "percentiles" in result.summary:
        console.print(f"percentiles from a streaming sketch, within {result.summary['percentiles']['relative_error']:.1%} of exact; counts and means exact")
    print_estimation(console, result.summary.get("estimation", {}), context.get("regret"))
    core = ", compiled core" if result.engine_core == "compiled" else ""
    console.print(f"simulated {n} requests in {wall:.2f} s wall ({n / wall:,.0f} requests/s{core}); results in [bold]{done.folder}[/]")


@traces_app.command("inspect")
def traces_inspect(
    file: Path = typer.Argument(..., help="Trace file to describe."),
    trace_format: TraceFormat = typer.Option(TraceFormat.auto, "--trace-format", "--format", help="Trace format if auto-detection is not enough (--format: old name).", show_default=True),
) -> None:
    """Print what a trace holds: span, rate, token-length percentiles, per tenant."""
    from driftsim.traces.inspect import inspect_trace
    from driftsim.traces.loaders import load_trace_with_report

    try:
        df, report = load_trace_with_report(file, value(trace_format))
    except _input_errors() as exc:
        _fail(str(exc))
        return
    for line in report.repairs:
        err.print(f"[yellow]trace repair:[/] {line}", highlight=False)
    title = f"{file.name}: {report.format} format, {report.rows_loaded} of {report.rows_read} rows"
    for table in inspect_table(inspect_trace(df), title):
        console.print(table)


@profiles_app.command("list")
def profiles_list() -> None:
    """List bundled profiles and where their numbers came from."""
    from driftsim.costmodel.profiles import list_profiles, load_profile

    t = Table(title="bundled profiles", title_justify="left")
    t.add_column("name", no_wrap=True)
    t.add_column("GPU")
    t.add_column("model")
    t.add_column("kind", no_wrap=True)
    t.add_column("numbers", no_wrap=True)
    for name in list_profiles():
        p = load_profile(name)
        t.add_row(name, p.gpu.name, p.model.name, p.cost_model.describe().get("kind", "?"), p.provenance.get("source", "?"))
    console.print(t)


@profiles_app.command("show")
def profiles_show(name: str = typer.Argument(..., help="Profile name or file.")) -> None:
    """Print a profile's parameters and provenance as JSON."""
    from driftsim.costmodel.profiles import load_profile
    from driftsim.sim.scenario_folder import json_default

    try:
        p = load_profile(name)
    except _input_errors() as exc:
        _fail(str(exc))
        return
    console.print_json(json.dumps(p.describe(), default=json_default))


def _parse_seeds(option: list[str] | None, extra: list[str] | None) -> list[int]:
    """Seeds as ``driftsim sweep`` takes them (``--seeds 0,1,2`` or ``0-4``); ``--seeds 0 1 2`` (click sees one
    option value and two extra arguments) and repeats are accepted too."""
    from driftsim.capacity.spec import parse_seeds

    tokens = [*(option or []), *(extra or [])]
    if not tokens:
        return [0, 1, 2]
    try:
        return parse_seeds(",".join(tokens))
    except _input_errors() as exc:
        _fail(f"--{exc}")
        raise  # unreachable: _fail exits


@reproduce_app.command("driftsched", context_settings={"allow_extra_args": True})
def reproduce_driftsched(
    ctx: typer.Context,
    seeds: Optional[list[str]] = typer.Option(None, "--seeds", help="Seeds: '0,1,2' or '0-4', as `driftsim sweep` takes them (default 0,1,2); one workload per seed."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder; default: a fresh driftsim-out/reproduce-driftsched-<time>-<suffix>. A folder holding files is refused unless --force."),
    force: bool = typer.Option(False, "--force", help="Write into a --out folder that already holds files (overwriting them)."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="Local tokenizer.json (or its folder) for the tokenizer counter; default: the trace's own counts."),
) -> None:
    """Run the DriftSched paper's grid (policies x token counters x calibration x seeds) and compare with the paper.

    Prints the headline table (paper vs driftsim, with notes where they
    differ) and per-tier latency; writes results.parquet (one row per
    seed x policy x counter x calibration x tenant), headline.json and an
    offline interactive report.html.

    Example: driftsim reproduce driftsched --seeds 0,1,2 --out out/
    """
    from driftsim.experiments.driftsched import run_driftsched_experiment
    from driftsim.experiments.reproduction import save_reproduction
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from driftsim.sim.outdir import claim_folder

    seed_list = _parse_seeds(seeds, ctx.args)  # "--seeds 0 1 2": click passes 1 and 2 as extra arguments
    t0 = time.perf_counter()
    try:
        folder = claim_folder(out, "reproduce-driftsched", force=force)
        with Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} runs"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=True,
        ) as bar:
            task = bar.add_task("simulating", total=None)

            def progress(done: int, total: int, label: str) -> None:
                bar.update(task, completed=done, total=total, description=label)

            result = run_driftsched_experiment(
                seeds=seed_list, tokenizer_path=str(tokenizer) if tokenizer else None, progress=progress
            )
    except (*_input_errors(), ImportError) as exc:
        _fail(str(exc))
        return
    rows = save_reproduction(result, folder)
    wall = time.perf_counter() - t0
    _print_reproduction(result, rows)
    m = result.meta
    console.print(
        f"{m['runs']} runs of {m['n_learning'] + m['n_stress']} requests in {wall:.1f} s wall "
        f"(simulation {m['wall_s']:.1f} s); results in [bold]{folder}[/]"
    )


def _print_reproduction(result, rows: list[dict]) -> None:
    """The headline rows the paper has a figure for, the per-tier latency table (with Jain's index) and the caveats.

    Rows without a paper figure (per-tier medians, Jain) are the per-tier
    table's content, so they are not repeated; headline.json and the report
    keep every row.
    """
    from driftsim.experiments.headline import format_value, is_discrepancy, view_config

    t = Table(title="DriftSched headline: paper vs driftsim", title_justify="left")
    t.add_column("metric", ratio=3)
    t.add_column("paper", justify="right", ratio=1)
    t.add_column("driftsim", justify="right", ratio=1)
    t.add_column("note", ratio=4)
    for r in rows:
        if r["paper"] is None and not r["metric"].startswith("Job-size"):
            continue
        note = f"[red]{r['note']}[/]" if is_discrepancy(r["note"]) else r["note"]
        t.add_row(r["metric"], format_value(r["paper"], r["unit"]), format_value(r["driftsim"], r["unit"]), note)
    console.print(t, highlight=False)
    view = view_config(result)
    lat = Table(title=f"E2E latency per tier (s), mean over seeds; {view}", title_justify="left")
    lat.add_column("policy", no_wrap=True)
    lat.add_column("tier", no_wrap=True)
    for col in ("mean", "p50", "p90", "p99", "wait p50", "Jain"):
        lat.add_column(col, justify="right", no_wrap=True)
    jain = result.headline["jain"].get(view, {})
    policies = list(result.headline["per_tier"].get(view, {}).items())
    for k, (policy, groups) in enumerate(policies):
        for i, (tier, g) in enumerate(groups.items()):
            lat.add_row(
                policy if i == 0 else "", f"[bold]{tier}[/]" if tier == "overall" else tier,
                *(f"{g[c]:.1f}" for c in ("e2e_mean_s", "e2e_p50_s", "e2e_p90_s", "e2e_p99_s", "queue_wait_p50_s")),
                format_value(jain.get(policy)) if i == 0 else "",
                end_section=i == len(groups) - 1 and k < len(policies) - 1,
            )  # fmt: skip
    console.print(lat, highlight=False)
    console.print("Jain: Jain's index over the tiers' mean E2E (1 = all tiers wait alike; 1/3 = one tier gets everything).")
    beyond = result.headline.get("beyond") or {}
    if beyond:
        b = Table(title="beyond the paper, SJF: regret to the oracle and estimation error (tokens)", title_justify="left")
        for col in ("estimator", "E2E p50 regret", "E2E p99 regret", "MAE"):
            b.add_column(col, justify="left" if col == "estimator" else "right", no_wrap=True)
        for name, r in beyond["regret"].items():
            b.add_row(name, f"{r['p50']:+.1f} s", f"{r['p99']:+.1f} s", f"{beyond['mae'][name]:.1f}")
        console.print(b, highlight=False)
    for note in result.headline.get("notes", []):
        console.print(f"[dim]- {note}[/]", highlight=False)


from driftsim.cli import profiling_cmds, validate_cmds  # noqa: E402  (commands defined in their own modules)
from driftsim.cli.capacity_cmds import register as _register_capacity  # noqa: E402
from driftsim.cli.compare_cmds import register as _register_compare  # noqa: E402

app.command("profile", rich_help_panel=MEASURE_PANEL)(profiling_cmds.profile)
app.command("fit", rich_help_panel=MEASURE_PANEL)(profiling_cmds.fit)
app.command("validate", rich_help_panel=MEASURE_PANEL)(validate_cmds.validate)
app.command("validate-across", rich_help_panel=MEASURE_PANEL)(validate_cmds.across)
_register_capacity(app)
from driftsim.cli.gpu_cmds import register as _register_gpu  # noqa: E402

_register_gpu(app, profiles_app)
_register_compare(app)
from driftsim.cli.published_cmds import register as _register_published  # noqa: E402

_register_published(app)


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
