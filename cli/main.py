"""The ``driftsim`` command line: thin wrappers that parse, build a scenario, call the library, print.

Every command exits non-zero with a one-line message on bad input.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from driftsim.cli.render import inspect_table, make_console, print_estimation, print_summary
from driftsim.sim.atomic import atomic_write_parquet, atomic_write_text

app = typer.Typer(
    name="driftsim",
    help=(
        "Simulate multi-tenant LLM inference on GPUs: per-tenant latency under a scheduler, GPU, model and load.\n\n"
        "Start with `driftsim simulate` (the embedded DriftSched set-up), then change one thing at a time: "
        "`--trace`, `--profile`, `--replicas`, `--policy`, `--rate-scale`, or a whole `--scenario FILE`."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
traces_app = typer.Typer(help="Look at request traces before simulating them.", no_args_is_help=True)
app.add_typer(traces_app, name="traces")
profiles_app = typer.Typer(help="Bundled GPU x model profiles (cost models).", no_args_is_help=True)
app.add_typer(profiles_app, name="profiles")
reproduce_app = typer.Typer(help="Reproduce a paper's experiments in simulation, with the paper's numbers alongside.", no_args_is_help=True)
app.add_typer(reproduce_app, name="reproduce")

console = make_console()
err = make_console(stderr=True)


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(2)


def _input_errors():
    from driftsim.costmodel.profiles import ProfileError
    from driftsim.sim.config import ConfigError
    from driftsim.traces.schema import TraceError

    return (ConfigError, TraceError, ProfileError, ValueError, FileNotFoundError)


def _parse_weights(spec: str) -> dict[str, float]:
    """'premium=2,standard=1' or 'a,b,c' -> weights."""
    out: dict[str, float] = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, w = part.partition("=")
        try:
            out[name.strip()] = float(w) if w else 1.0
        except ValueError:
            _fail(f"--tenants: weight of {name!r} is not a number: {w!r} (expected e.g. premium=2,standard=1)")
    if not out:
        _fail("--tenants: expected names with optional weights, e.g. premium=1,standard=1,batch=1")
    return out


@app.command()
def simulate(
    scenario: Optional[Path] = typer.Option(None, "--scenario", "-s", help="Scenario TOML; default: the embedded DriftSched set-up.", rich_help_panel="Scenario"),
    trace: Optional[Path] = typer.Option(None, "--trace", "-t", help="Replay this trace file (Azure/BurstGPT CSV, Mooncake/Bailian JSONL, Vidur CSV, driftsim CSV/Parquet).", rich_help_panel="Workload"),
    trace_format: str = typer.Option("auto", "--format", help="Trace format if auto-detection is not enough.", rich_help_panel="Workload"),
    tenants: Optional[str] = typer.Option(None, "--tenants", help="Split a trace into tenants by weight: 'premium=1,standard=1,batch=1'.", rich_help_panel="Workload"),
    rate_scale: Optional[float] = typer.Option(None, "--rate-scale", help="Multiply the request rate (2 = twice as many requests per second).", rich_help_panel="Workload"),
    duration: Optional[float] = typer.Option(None, "--duration", help="Keep only arrivals in the first DURATION seconds.", rich_help_panel="Workload"),
    max_requests: Optional[int] = typer.Option(None, "--max-requests", help="Keep only the first N requests.", rich_help_panel="Workload"),
    profile: Optional[str] = typer.Option(None, "--profile", "-p", help="GPU x model profile name or file (see `driftsim profiles list`).", rich_help_panel="Hardware"),
    replicas: Optional[int] = typer.Option(None, "--replicas", "-r", help="Engine replicas (one GPU each).", rich_help_panel="Hardware"),
    mode: Optional[str] = typer.Option(None, "--mode", help="'continuous' (vLLM server) or 'microbatch' (DriftSched worker).", rich_help_panel="Engine"),
    max_num_seqs: Optional[int] = typer.Option(None, "--max-num-seqs", help="Sequences per engine iteration.", rich_help_panel="Engine"),
    max_num_batched_tokens: Optional[int] = typer.Option(None, "--max-num-batched-tokens", help="Tokens per engine iteration.", rich_help_panel="Engine"),
    block_size: Optional[int] = typer.Option(None, "--block-size", help="Tokens per KV block.", rich_help_panel="Engine"),
    num_gpu_blocks: Optional[int] = typer.Option(None, "--num-gpu-blocks", help="KV blocks per replica (as a server's /metrics reports); default from the profile.", rich_help_panel="Engine"),
    max_model_len: Optional[int] = typer.Option(None, "--max-model-len", help="Prompt + output limit per request.", rich_help_panel="Engine"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Micro-batch size (microbatch mode).", rich_help_panel="Engine"),
    batch_wait: Optional[float] = typer.Option(None, "--batch-wait", help="Micro-batch wait in seconds (microbatch mode).", rich_help_panel="Engine"),
    policy: Optional[str] = typer.Option(None, "--policy", help="Gateway queue policy (e.g. fifo).", rich_help_panel="Scheduling"),
    max_outstanding: Optional[int] = typer.Option(None, "--max-outstanding", help="Cap on requests in flight per replica (continuous mode); the policy orders the rest.", rich_help_panel="Scheduling"),
    router: Optional[str] = typer.Option(None, "--router", help="'least_outstanding' or 'round_robin'.", rich_help_panel="Scheduling"),
    placement: Optional[str] = typer.Option(None, "--placement", help="Where the policy acts: 'gateway' (in front of the engine) or 'engine' (vLLM-style priority scheduling with preemption).", rich_help_panel="Scheduling"),
    estimator: Optional[str] = typer.Option(None, "--estimator", help="Output-length estimate at admission: 'oracle' (real lengths), 'driftsched' (keyword formula + EMA calibration) or 'learned'.", rich_help_panel="Scheduling"),
    counter: Optional[str] = typer.Option(None, "--counter", help="Token counting for estimates: 'tokenizer' or 'whitespace' (DriftSched's split() proxy).", rich_help_panel="Scheduling"),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="Local tokenizer.json (or its folder) for --counter tokenizer; default: the trace's own token counts.", rich_help_panel="Scheduling"),
    calibration: Optional[bool] = typer.Option(None, "--calibration/--no-calibration", help="DriftSched's EMA drift calibration on or off.", rich_help_panel="Scheduling"),
    granularity: Optional[str] = typer.Option(None, "--granularity", help="Calibration bias key: 'category' (the original), 'tenant' or 'tenant_category'.", rich_help_panel="Scheduling"),
    oracle_regret: bool = typer.Option(False, "--oracle-regret", help="Also simulate with the real output lengths as estimates and report the latency gap.", rich_help_panel="Scheduling"),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed for generated workloads and tenant assignment.", rich_help_panel="Scenario"),
    horizon: Optional[float] = typer.Option(None, "--horizon", help="Stop the simulation at this time (s); requests in flight are reported unfinished.", rich_help_panel="Scenario"),
    step_by_step: bool = typer.Option(False, "--step-by-step", help="Disable the exact fast-forward (for checking; same results, slower).", rich_help_panel="Scenario"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder; default driftsim-out/<scenario>-<time>.", rich_help_panel="Output"),
    summary_only: bool = typer.Option(False, "--summary-only", help="Keep no per-request rows: write summary.json only (percentiles within 0.5 %, from a streaming sketch). A native trace file is read lazily; memory stays flat.", rich_help_panel="Output"),
    stream: bool = typer.Option(False, "--stream", help="Read a native trace file lazily and write requests.parquet as requests settle; memory stays flat (percentiles within 0.5 %).", rich_help_panel="Output"),
) -> None:
    """Simulate a scenario and print per-tenant latency, throughput and SLO attainment.

    Writes requests.parquet (one row per request) and summary.json to the output folder.

    Examples:

      driftsim simulate

      driftsim simulate --trace traces/data/azure2023_conv.csv --tenants premium=1,standard=2,batch=3 --profile a100-llama-3.1-8b --mode continuous

      driftsim simulate --scenario my.toml --rate-scale 1.5 --replicas 2

      driftsim simulate --trace week.parquet --summary-only
    """
    from driftsim.sim.scenario import load_scenario, run_scenario

    workload: dict = {"rate_scale": rate_scale, "duration_s": duration, "max_requests": max_requests}
    if trace is not None:
        workload.update(kind="trace", path=str(trace), format=trace_format)
    if tenants is not None:
        workload["assign_tenants"] = _parse_weights(tenants)
    engine = {
        "mode": mode, "max_num_seqs": max_num_seqs, "max_num_batched_tokens": max_num_batched_tokens,
        "block_size": block_size, "num_gpu_blocks": num_gpu_blocks, "max_model_len": max_model_len,
        "batch_size": batch_size, "batch_wait_s": batch_wait,
    }
    if step_by_step:
        engine["fast_forward"] = False
    overrides = {
        "profile": profile, "replicas": replicas, "seed": seed, "horizon_s": horizon,
        "workload": workload, "engine": engine,
        "gateway": {"policy": policy, "max_outstanding": max_outstanding, "router": router, "placement": placement},
        "admission": {
            "estimator": estimator, "counter": counter, "calibration": calibration, "granularity": granularity,
            "tokenizer_path": str(tokenizer) if tokenizer else None,
        },
    }
    if summary_only and stream:
        _fail("--summary-only writes no per-request rows and --stream writes them as they settle; choose one")
        return
    if oracle_regret and (summary_only or stream):
        _fail("--oracle-regret needs the trace and results in memory; drop --summary-only / --stream")
        return
    folder = None
    try:
        sc = load_scenario(scenario, overrides)
        t0 = time.perf_counter()
        with Progress(
            TextColumn("simulating"), BarColumn(), TextColumn("{task.percentage:>3.0f}% of arrivals"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=True,
        ) as bar:
            task = bar.add_task("sim", total=1.0)
            if summary_only or stream:
                from driftsim.sim.scenario_stream import run_scenario_streamed

                folder = out or Path("driftsim-out") / f"{sc.name}-{datetime.now():%Y%m%d-%H%M%S}"
                result, context = run_scenario_streamed(
                    sc, results_path=None if summary_only else folder / "requests.parquet", summary_only=summary_only,
                    progress=lambda f: bar.update(task, completed=f),
                )
            else:
                result, context = run_scenario(
                    sc, progress=lambda f: bar.update(task, completed=f), oracle_regret=oracle_regret
                )
        wall = time.perf_counter() - t0
    except _input_errors() as exc:
        _fail(str(exc))
        return
    for line in context["trace_repairs"]:
        err.print(f"[yellow]trace repair:[/] {line}", highlight=False)
    folder = folder or out or Path("driftsim-out") / f"{sc.name}-{datetime.now():%Y%m%d-%H%M%S}"
    folder.mkdir(parents=True, exist_ok=True)
    if result.requests is not None:
        atomic_write_parquet(folder / "requests.parquet", result.requests)
    atomic_write_text(folder / "summary.json", json.dumps({"summary": result.summary, "context": context}, indent=2,
                                                          default=_json_default, allow_nan=True))
    n = result.requests.height if result.requests is not None else result.summary["overall"]["requests"]
    title = f"{sc.name}: {n} requests, profile {context['profile']['name']}, {context['engine']['mode']} engine x{len(result.replicas)}, policy {context['gateway']['policy']}"
    print_summary(console, result.summary, title)
    if "percentiles" in result.summary:
        console.print(f"percentiles from a streaming sketch, within {result.summary['percentiles']['relative_error']:.1%} of exact; counts and means exact")
    print_estimation(console, result.summary.get("estimation", {}), context.get("regret"))
    console.print(f"simulated {n} requests in {wall:.2f} s wall ({n / wall:,.0f} requests/s); results in [bold]{folder}[/]")


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    return str(o)


@traces_app.command("inspect")
def traces_inspect(
    file: Path = typer.Argument(..., help="Trace file to describe."),
    trace_format: str = typer.Option("auto", "--format", help="Trace format if auto-detection is not enough."),
) -> None:
    """Print what a trace holds: span, rate, token-length percentiles, per tenant."""
    from driftsim.traces.inspect import inspect_trace
    from driftsim.traces.loaders import load_trace_with_report

    try:
        df, report = load_trace_with_report(file, trace_format)
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
    from rich.table import Table

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

    try:
        p = load_profile(name)
    except _input_errors() as exc:
        _fail(str(exc))
        return
    console.print_json(json.dumps(p.describe(), default=_json_default))


def _parse_seeds(option: list[str] | None, extra: list[str] | None) -> list[int]:
    """Seeds from ``--seeds 0 1 2`` (click sees one option value and two extra arguments), ``--seeds 0,1,2`` or repeats."""
    seeds: list[int] = []
    for token in [*(option or []), *(extra or [])]:
        for part in token.replace(",", " ").split():
            try:
                seeds.append(int(part))
            except ValueError:
                _fail(f"--seeds: expected integers, got {part!r} (e.g. --seeds 0 1 2)")
    return seeds or [0, 1, 2]


@reproduce_app.command("driftsched", context_settings={"allow_extra_args": True})
def reproduce_driftsched(
    ctx: typer.Context,
    seeds: Optional[list[str]] = typer.Option(None, "--seeds", help="Seeds, e.g. --seeds 0 1 2 (default 0 1 2); one workload per seed."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder; default driftsim-out/reproduce-driftsched-<time>."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="Local tokenizer.json (or its folder) for the tokenizer counter; default: the trace's own counts."),
) -> None:
    """Run the DriftSched paper's grid (policies x token counters x calibration x seeds) and compare with the paper.

    Prints the headline table (paper vs driftsim, with notes where they
    differ) and per-tier latency; writes results.parquet (one row per
    seed x policy x counter x calibration x tenant), headline.json and an
    offline interactive report.html.

    Example: driftsim reproduce driftsched --seeds 0 1 2 --out out/
    """
    from driftsim.experiments.driftsched import headline_table, run_driftsched_experiment
    from driftsim.experiments.report import write_report

    seed_list = _parse_seeds(seeds, ctx.args)  # "--seeds 0 1 2": click passes 1 and 2 as extra arguments
    t0 = time.perf_counter()
    try:
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
    rows = headline_table(result)
    folder = out or Path("driftsim-out") / f"reproduce-driftsched-{datetime.now():%Y%m%d-%H%M%S}"
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_parquet(folder / "results.parquet", result.table)
    atomic_write_text(folder / "headline.json", json.dumps({"headline": result.headline, "table": rows,
                                                            "meta": result.meta}, indent=2, default=_json_default))
    write_report(result, folder / "report.html")
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
    from rich.table import Table

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

app.command("profile")(profiling_cmds.profile)
app.command("fit")(profiling_cmds.fit)
app.command("validate")(validate_cmds.validate)
app.command("validate-across")(validate_cmds.across)
_register_capacity(app)


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
