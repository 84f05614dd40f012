"""Capacity-planning commands: ``driftsim sweep``, ``driftsim plan ...``, ``driftsim report``.

Thin wrappers over :mod:`driftsim.capacity`: parse flags (and a study file),
build specs, run them on local cores or a Ray cluster with a progress bar
and time-left estimate, print, write a results folder. Bad input exits 2
with a one-line message; a plan with no answer within its bounds
(infeasible) exits 1 after printing the runs that show it.

Library modules are imported inside the commands, for start-up time (the
figures are in ``cli/main.py``'s docstring).

Registered on the main app by :func:`register` (``cli/main.py``)::

    from driftsim.cli.capacity_cmds import register as register_capacity
    register_capacity(app)
"""

from __future__ import annotations

import math
import time
import webbrowser
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.table import Table

from driftsim.cli.render import make_console

console = make_console()
err = make_console(stderr=True)

plan_app = typer.Typer(
    help=(
        "Answer inverse questions by search: the fewest replicas, the highest load, the cheapest GPU mix or the "
        "best policy such that every tenant meets its SLOs."
    ),
    no_args_is_help=True,
)


#: Where ``driftsim --help`` lists these commands (``compare`` belongs here too).
PANEL = "Plan capacity"


def register(app: typer.Typer) -> None:
    """Add ``sweep``, ``plan`` (with its subcommands) and ``report`` to ``app``."""
    app.command("sweep", rich_help_panel=PANEL)(sweep)
    app.add_typer(plan_app, name="plan", rich_help_panel=PANEL)
    app.command("report", rich_help_panel=PANEL)(report)


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)  # one line, however long
    raise typer.Exit(code)


def _input_errors() -> tuple[type[BaseException], ...]:
    from driftsim.sim.scenario import INPUT_ERRORS

    return INPUT_ERRORS


class _Bar:
    """A rich progress bar over runs: done/total, runs per minute, elapsed and time left."""

    def __init__(self, what: str, total: int | None = None) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.what, self.total = what, total
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("runs"),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("elapsed,"), TimeRemainingColumn(), TextColumn("left"),
            TextColumn("[dim]{task.fields[last]}"), console=err, transient=True,
        )  # fmt: skip
        self.t0 = time.perf_counter()

    def __enter__(self):
        self.progress.__enter__()
        self.task = self.progress.add_task(self.what, total=self.total, rate="", last="")
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def update(self, done: int, total: int | None, label: str = "") -> None:
        dt = time.perf_counter() - self.t0
        rate = f"{60 * done / dt:,.0f} runs/min" if dt > 0 and done else ""
        self.progress.update(self.task, completed=done, total=total, rate=rate, last=label[:48])


# --------------------------------------------------------------------------- shared options
_SCENARIO = typer.Option(None, "--scenario", "-s", help="Scenario TOML; default: the embedded DriftSched set-up.", rich_help_panel="Study")
_SET = typer.Option(None, "--set", help="Fixed override for every run, KEY=VALUE in scenario shape (repeatable), e.g. engine.max_num_seqs=64, workload.max_requests=5000.", rich_help_panel="Study")
_SEEDS = typer.Option(None, "--seeds", help="Seeds per configuration: '0,1,2' or '0-4' (default 0,1,2); intervals are taken across them.", rich_help_panel="Study")
_SLO = typer.Option(None, "--slo", help="SLO target TENANT.METRIC[.pQQ]=SECONDS (repeatable): premium.ttft.p99=0.5, '*.e2e.p99=10'. Metrics ttft, e2e, tpot, queue_wait. Replaces the scenario's for that tenant and metric.", rich_help_panel="SLOs")
_ATTAINMENT = typer.Option(None, "--attainment", help="Quantile at which the scenario's per-tenant slo_ttft_s/slo_e2e_s must hold (default 0.99), and of --slo without .pQQ.", rich_help_panel="SLOs")
_CRITERION = typer.Option(None, "--criterion", help="'all': every seed must meet the SLOs (default); 'mean': the mean over seeds must.", rich_help_panel="SLOs")
_JOBS = typer.Option(None, "--jobs", "-j", help="Local worker processes (default: every core; 1 = in this process).", rich_help_panel="Execution")
_RAY = typer.Option(None, "--ray", help="Run on a Ray cluster: its address, 'auto' (this node's cluster) or 'local' (start one here). Needs the ray extra.", rich_help_panel="Execution")
_RETRIES = typer.Option(2, "--run-retries", min=0, help="Retries of a run whose worker crashed or died before it is reported failed.", show_default=True, rich_help_panel="Execution")
class TableFormat(str, Enum):
    """How result tables are written."""

    parquet = "parquet"
    csv = "csv"


_OUT = typer.Option(None, "--out", "-o", help="Results folder; default: a fresh driftsim-out/<command>-<time>-<suffix>. A folder holding files is refused unless --force.", rich_help_panel="Output")
_FORCE = typer.Option(False, "--force", help="Write into a --out folder that already holds files (overwriting them).", rich_help_panel="Output")
_FORMAT = typer.Option(TableFormat.parquet, "--table-format", help="Format of the result tables.", show_default=True, rich_help_panel="Output")
_STUDY = typer.Option(None, "--study", help="Study TOML (scenario, seeds and the tables axes, set, prices, slo); flags win over it.", rich_help_panel="Study")


def _folder(out: Path | None, name: str, force: bool) -> Path:
    """The results folder, claimed before any run (see :func:`driftsim.sim.outdir.claim_folder`)."""
    from driftsim.sim.outdir import claim_folder

    try:
        return claim_folder(out, name, force=force)
    except _input_errors() as exc:
        _fail(str(exc))
        raise  # unreachable: _fail exits


def _fmt(x, unit: str = "") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if isinstance(x, float) and math.isinf(x):
        return "∞"
    return f"{x:.4g}{unit}"


# --------------------------------------------------------------------------- sweep
def sweep(
    scenario: Optional[Path] = _SCENARIO,
    study: Optional[Path] = _STUDY,
    rate_scale: Optional[str] = typer.Option(None, "--rate-scale", help="Load axis: request-rate multipliers, e.g. 0.5,1,1.5.", rich_help_panel="Axes"),
    policy: Optional[str] = typer.Option(None, "--policy", help="Policy axis, e.g. fifo,sjf,vtc.", rich_help_panel="Axes"),
    replicas: Optional[str] = typer.Option(None, "--replicas", "-r", help="Replica-count axis, e.g. 1,2,4.", rich_help_panel="Axes"),
    profile: Optional[str] = typer.Option(None, "--profile", "-p", help="Profile axis (GPU x model), e.g. a100-llama-3.1-8b,h100-llama-3.1-8b.", rich_help_panel="Axes"),
    max_num_seqs: Optional[str] = typer.Option(None, "--max-num-seqs", help="Engine limit axis: sequences per iteration, e.g. 64,128,256.", rich_help_panel="Axes"),
    max_num_batched_tokens: Optional[str] = typer.Option(None, "--max-num-batched-tokens", help="Engine limit axis: tokens per iteration.", rich_help_panel="Axes"),
    calibration: Optional[str] = typer.Option(None, "--calibration", help="Calibration axis: on,off (DriftSched's EMA; needs --set admission.estimator=driftsched).", rich_help_panel="Axes"),
    axis: Optional[list[str]] = typer.Option(None, "--axis", help="Any other axis, KEY=V1,V2 (repeatable), e.g. engine.block_size=16,32 or mode=continuous,microbatch.", rich_help_panel="Axes"),
    sets: Optional[list[str]] = _SET,
    seeds: Optional[str] = _SEEDS,
    slo: Optional[list[str]] = _SLO,
    attainment: Optional[float] = _ATTAINMENT,
    price: Optional[list[str]] = typer.Option(None, "--price", help="$ per GPU-hour of a profile, PROFILE=USD (repeatable), for cost per million tokens.", rich_help_panel="Cost"),
    jobs: Optional[int] = _JOBS,
    ray: Optional[str] = _RAY,
    retries: int = _RETRIES,
    out: Optional[Path] = _OUT,
    force: bool = _FORCE,
    resume: Optional[Path] = typer.Option(None, "--resume", help="Finish the interrupted sweep in this folder: run only the runs its journal lacks, then write its tables (the grid is the folder's; grid flags are refused).", rich_help_panel="Output"),
    fmt: TableFormat = _FORMAT,
    timeseries: bool = typer.Option(True, "--timeseries/--no-timeseries", help="Record time series and CDFs of each configuration's first seed (for the report).", rich_help_panel="Output"),
) -> None:
    """Run a grid (load x policies x replicas x engine limits x profiles x calibration x seeds) and write one tidy table.

    Every run is independent: by default they use every local core; --ray
    sends them to a Ray cluster. Writes results (one row per run x tenant,
    plus 'overall'), summary (mean and 95 % t-interval across seeds per
    configuration x tenant x metric), runs (status, errors), checks (SLO
    targets per run) and the report's time series, then `driftsim report`
    turns the folder into HTML.

    Examples:

      driftsim sweep --rate-scale 0.5,1,1.5 --policy fifo,sjf --seeds 0,1,2

      driftsim sweep -s my.toml --replicas 1,2,4 --profile a100-llama-3.1-8b,h100-llama-3.1-8b --price a100-llama-3.1-8b=1.8 --price h100-llama-3.1-8b=3.2

      driftsim sweep --study study.toml --ray auto
    """
    from driftsim.capacity.journal import SweepJournal
    from driftsim.capacity.pool import make_pool
    from driftsim.capacity.study import parse_prices, resolve_study, sweep_axes
    from driftsim.capacity.sweep import Sweep

    named_axes = {"rate_scale": rate_scale, "policy": policy, "replicas": replicas, "profile": profile,
                  "max_num_seqs": max_num_seqs, "max_num_batched_tokens": max_num_batched_tokens, "calibration": calibration}  # fmt: skip
    if resume is not None:
        grid_flags = [*named_axes.values(), scenario, study, axis, sets, seeds, slo, attainment, price, out]
        if any(v for v in grid_flags):
            _fail("--resume takes the grid, seeds, targets and folder from the interrupted sweep; give only --resume DIR (and --jobs, --ray, --run-retries, --table-format)")
        _resume_sweep(resume, jobs, ray, retries, fmt.value)
        return
    try:
        inputs = resolve_study(study_path=study, scenario=scenario, sets=sets, seeds=seeds, slos=slo, attainment=attainment)
        axes = sweep_axes(inputs.study.axes, named_axes, axis)
        prices = dict(inputs.study.prices, **parse_prices(price))
        grid_sweep = Sweep.build(inputs, axes=axes, prices=prices, record_first_seed=timeseries)
        pool = make_pool(jobs=jobs, ray=ray, retries=retries)
    except _input_errors() as exc:
        _fail(str(exc))
        return
    folder = _folder(out, "sweep", force)
    journal = SweepJournal(folder)
    journal.start(grid_sweep)
    _run_sweep(grid_sweep, pool, journal, fmt.value)


def _resume_sweep(folder: Path, jobs, ray, retries, fmt: str) -> None:
    """Rebuild the sweep from ``folder``'s journal and finish it."""
    from driftsim.capacity.journal import SweepJournal
    from driftsim.capacity.pool import make_pool

    try:
        journal = SweepJournal(folder)
        grid_sweep = journal.sweep()
        pool = make_pool(jobs=jobs, ray=ray, retries=retries)
    except _input_errors() as exc:
        _fail(str(exc))
        return
    kept = len(journal.outcomes())
    err.print(f"resuming {folder}: {kept} of {len(grid_sweep.specs)} runs already done", highlight=False)
    _run_sweep(grid_sweep, pool, journal, fmt)


def _run_sweep(grid_sweep, pool, journal, fmt: str) -> None:
    """Run the sweep with a progress bar (each run kept in ``journal`` as it ends), save the results folder,
    print the summary and any failures."""
    from driftsim.capacity.sweep import run_sweep

    folder = journal.folder
    n = len(grid_sweep.specs)
    err.print(f"{n} runs ({grid_sweep.configurations} configurations x {len(grid_sweep.inputs.seeds)} seeds) on {pool.describe()}; "
              f"each run is kept in {journal.path} as it ends", highlight=False)  # fmt: skip
    try:
        with _Bar("sweep", n) as bar:
            done = 0

            def tick(o) -> None:
                nonlocal done
                done += 1
                bar.update(done, n, o.label)

            rs = run_sweep(grid_sweep, pool, on_result=tick, journal=journal)
    except KeyboardInterrupt:
        _fail(f"interrupted; the finished runs are kept: `driftsim sweep --resume {folder}` runs the rest", 130)
        return
    wall = rs.meta["wall_s"]
    try:
        rs.save(folder, fmt)
    except ValueError as exc:
        _fail(str(exc))
    _print_sweep(rs)
    n_failed = rs.failed.height
    console.print(
        f"{n} runs in {wall:.1f} s wall ({60 * n / wall:,.0f} runs/min on {pool.describe()}); "
        f"results in [bold]{folder}[/]; `driftsim report {folder}` for the HTML report",
        highlight=False,
    )
    if n_failed:
        errors = rs.failed["error"].to_list()
        if n_failed == n:
            _fail(f"every run failed; the first: {errors[0]}")
        err.print(f"[yellow]warning:[/] {n_failed} of {n} runs failed (see runs.{fmt}); the first: {errors[0]}", highlight=False)


def _print_sweep(rs, limit: int = 60) -> None:
    """The summary as a table: each configuration, then its tenants, mean ± half-width across seeds."""
    s = rs.summary()
    if s.height == 0:
        return
    import polars as pl  # NOTE: here, not at the top, for start-up time (see cli/main.py's docstring)

    cols = [("ttft_s_p99", "p99 TTFT s"), ("e2e_s_p99", "p99 E2E s"), ("slo_attainment", "SLO att."),
            ("throughput_rps", "req/s"), ("usd_per_m_output_tokens", "$/M tok")]  # fmt: skip
    cols = [c for c in cols if c[0] in s["metric"].unique().to_list()]
    if len(cols) == 5 and console.width < 110:  # keep it readable in 80 columns: cost over throughput
        cols = [c for c in cols if c[0] != "throughput_rps"]
    idx = {(r["config"], r["tenant"], r["metric"]): r for r in s.filter(pl.col("metric").is_in([c for c, _ in cols])).to_dicts()}
    keys = s.select("config", "tenant").unique(maintain_order=True).rows()
    t = Table(title="mean ± 95 % t-interval half-width across seeds", title_justify="left", box=box.SIMPLE_HEAD)
    t.add_column("configuration / tenant", min_width=min(26, max(len(k[0]) for k in keys)), overflow="fold")
    for _, name in cols:
        t.add_column(name, justify="right")
    last = None
    for config, tenant in keys[:limit]:
        if config != last:
            t.add_row(f"[bold]{config}[/]", *[""] * len(cols), end_section=False)
            last = config
        cells = []
        for c, _ in cols:
            r = idx.get((config, tenant, c))
            if r is None or r["mean"] is None or math.isnan(r["mean"]):
                cells.append("—")
            elif r["half_width"] is None or math.isnan(r["half_width"]) or r["half_width"] == 0:
                cells.append(f"{r['mean']:.3g}")
            else:
                cells.append(f"{r['mean']:.3g}±{r['half_width']:.2g}")
        t.add_row(f"  {tenant}", *cells)
    console.print(t, highlight=False)
    if len(keys) > limit:
        console.print(f"[dim]({len(keys) - limit} more rows in the summary table)[/]")


# --------------------------------------------------------------------------- plan
def _run_plan(question: str, fn, *, scenario, study, sets, seeds, slo, attainment, criterion, jobs, ray, retries, out, force, fmt,
              prices: dict | None = None, **kwargs) -> None:  # fmt: skip
    from driftsim.capacity.plan import Study, run_plan
    from driftsim.capacity.pool import make_pool
    from driftsim.capacity.study import resolve_study

    try:
        inputs = resolve_study(study_path=study, scenario=scenario, sets=sets, seeds=seeds, slos=slo,
                               attainment=attainment, criterion=criterion)  # fmt: skip
        scen, fixed, seed_list, targets, crit = inputs.scenario, inputs.fixed, inputs.seeds, inputs.targets, inputs.criterion
        if prices is not None:
            prices = dict(inputs.study.prices, **prices)
            kwargs["prices"] = prices
        plan_study = Study(scenario=scen, fixed=fixed, seeds=seed_list, targets=targets, criterion=crit)
        pool = make_pool(jobs=jobs, ray=ray, retries=retries)
    except _input_errors() as exc:
        _fail(str(exc))
        return
    if targets:
        err.print("targets: " + "; ".join(t.describe() for t in targets) + f" (criterion: {crit} seeds)", highlight=False)
    err.print(f"searching on {pool.describe()}, {len(seed_list)} seeds per configuration", highlight=False)
    folder = _folder(out, f"plan-{question}", force)
    try:
        with _Bar(f"plan {question}") as bar:
            done = run_plan(question, fn, plan_study, pool, progress=bar.update, **kwargs)
    except _input_errors() as exc:
        _fail(str(exc))
        return
    except KeyboardInterrupt:
        _fail("interrupted", 130)
        return
    result = done.result
    _print_plan(result)
    done.result_set.save(folder, fmt.value)
    runs = done.result_set.runs.height
    console.print(f"{runs} runs in {done.wall_s:.1f} s wall on {pool.describe()}; runs and plan in [bold]{folder}[/]", highlight=False)
    if done.infeasible is not None:
        _fail(f"infeasible: {done.infeasible}", 1)
    console.print(f"[bold green]answer:[/] {result.headline}", highlight=False)
    b = result.verdict.binding if result.verdict else None
    if b is not None:
        console.print(f"[bold]margin:[/] {b.describe()} — the binding target", highlight=False)


def _print_plan(result) -> None:
    t = result.table()
    if t.height == 0:
        return
    table = Table(title=f"supporting runs (plan {result.question}; one row per configuration, all seeds)", title_justify="left")
    hidden = {"chosen"}
    cols = [c for c in t.columns if c not in hidden]
    for c in cols:
        table.add_column(c.replace("_", " "), justify="right" if t.schema[c].is_numeric() else "left")
    for row in t.to_dicts():
        cells = []
        for c in cols:
            v = row[c]
            if c == "margin" and v is not None:
                cells.append(_fmt(v * 100, " %") if not math.isinf(v) else "-∞")
            elif "attainment" in c and isinstance(v, float) and not math.isnan(v):
                cells.append(f"{v:.1%}")
            elif c == "passes":
                cells.append("[green]yes[/]" if v else "[red]no[/]")
            elif isinstance(v, float):
                cells.append(_fmt(v))
            else:
                cells.append("" if v is None else str(v))
        style = "bold" if row.get("chosen") else None
        table.add_row(*cells, style=style)
    console.print(table, highlight=False)
    if result.verdict and result.verdict.checks and result.best is not None:
        checks = Table(title=f"every target at the answer ({result.best.label})", title_justify="left")
        for c in ("target", "value s", "SLO s", "margin", "attainment"):
            checks.add_column(c, justify="left" if c == "target" else "right")
        for c in result.verdict.checks:
            checks.add_row(c.name, _fmt(c.value_s), _fmt(c.threshold_s), _fmt(c.margin * 100, " %") if not math.isinf(c.margin) else "-∞",
                           f"{c.attainment:.2%}" if not math.isnan(c.attainment) else "—")  # fmt: skip
        console.print(checks, highlight=False)
    for note in result.notes:
        console.print(f"[dim]- {note}[/]", highlight=False)


@plan_app.command("replicas")
def plan_replicas(
    scenario: Optional[Path] = _SCENARIO, study: Optional[Path] = _STUDY, sets: Optional[list[str]] = _SET,
    seeds: Optional[str] = _SEEDS, slo: Optional[list[str]] = _SLO, attainment: Optional[float] = _ATTAINMENT,
    criterion: Optional[str] = _CRITERION,
    max_replicas: int = typer.Option(16, "--max-replicas", help="Upper bound of the search.", rich_help_panel="Search"),
    min_replicas: int = typer.Option(1, "--min-replicas", help="Lower bound of the search.", rich_help_panel="Search"),
    jobs: Optional[int] = _JOBS, ray: Optional[str] = _RAY, retries: int = _RETRIES, out: Optional[Path] = _OUT, force: bool = _FORCE, fmt: TableFormat = _FORMAT,
) -> None:  # fmt: skip
    """The fewest replicas such that every tenant meets its SLOs (galloping, then binary search).

    Example: driftsim plan replicas -s my.toml --slo premium.ttft.p99=0.5 --slo '*.e2e.p99=20' --max-replicas 32
    """
    from driftsim.capacity.plan import min_replicas as fn

    _run_plan("replicas", fn, scenario=scenario, study=study, sets=sets, seeds=seeds, slo=slo, attainment=attainment,
              criterion=criterion, jobs=jobs, ray=ray, retries=retries, out=out, force=force, fmt=fmt,
              max_replicas=max_replicas, min_replicas=min_replicas)  # fmt: skip


@plan_app.command("load")
def plan_load(
    scenario: Optional[Path] = _SCENARIO, study: Optional[Path] = _STUDY, sets: Optional[list[str]] = _SET,
    seeds: Optional[str] = _SEEDS, slo: Optional[list[str]] = _SLO, attainment: Optional[float] = _ATTAINMENT,
    criterion: Optional[str] = _CRITERION,
    replicas: Optional[int] = typer.Option(None, "--replicas", "-r", help="Replicas to plan the load for (default: the scenario's).", rich_help_panel="Search"),
    start: float = typer.Option(1.0, "--start", help="First rate scale tried; the search doubles or halves from it.", rich_help_panel="Search"),
    min_scale: float = typer.Option(1 / 64, "--min-scale", help="Lowest rate scale tried.", rich_help_panel="Search"),
    max_scale: float = typer.Option(64.0, "--max-scale", help="Highest rate scale tried.", rich_help_panel="Search"),
    tolerance: float = typer.Option(0.02, "--tolerance", help="Stop when the bracket is this close (relative).", rich_help_panel="Search"),
    jobs: Optional[int] = _JOBS, ray: Optional[str] = _RAY, retries: int = _RETRIES, out: Optional[Path] = _OUT, force: bool = _FORCE, fmt: TableFormat = _FORMAT,
) -> None:  # fmt: skip
    """The highest load (rate scale) at which every tenant meets its SLOs (bracketing, then bisection).

    Example: driftsim plan load -s my.toml --replicas 2 --tolerance 0.05
    """
    from driftsim.capacity.plan import max_load as fn

    if replicas is not None:
        sets = [*(sets or []), f"replicas={replicas}"]
    _run_plan("load", fn, scenario=scenario, study=study, sets=sets, seeds=seeds, slo=slo, attainment=attainment,
              criterion=criterion, jobs=jobs, ray=ray, retries=retries, out=out, force=force, fmt=fmt,
              start=start, min_scale=min_scale, max_scale=max_scale, tolerance=tolerance)  # fmt: skip


@plan_app.command("gpu-mix")
def plan_gpu_mix(
    price: Optional[list[str]] = typer.Option(None, "--price", help="A GPU type to consider and its price: PROFILE=USD_PER_GPU_HOUR (repeatable).", rich_help_panel="Cost"),
    scenario: Optional[Path] = _SCENARIO, study: Optional[Path] = _STUDY, sets: Optional[list[str]] = _SET,
    seeds: Optional[str] = _SEEDS, slo: Optional[list[str]] = _SLO, attainment: Optional[float] = _ATTAINMENT,
    criterion: Optional[str] = _CRITERION,
    max_per_type: int = typer.Option(4, "--max-per-type", help="Most replicas of one type in a pool.", rich_help_panel="Search"),
    max_total: Optional[int] = typer.Option(None, "--max-total", help="Most replicas in a pool.", rich_help_panel="Search"),
    compare: bool = typer.Option(True, "--compare/--no-compare", help="Also find the cheapest single-type pool, to quote the saving.", rich_help_panel="Search"),
    jobs: Optional[int] = _JOBS, ray: Optional[str] = _RAY, retries: int = _RETRIES, out: Optional[Path] = _OUT, force: bool = _FORCE, fmt: TableFormat = _FORMAT,
) -> None:  # fmt: skip
    """The cheapest pool of GPU types (replicas per profile) such that every tenant meets its SLOs.

    Pools are tried cheapest first; mixed pools are simulated as homogeneous
    sub-pools over a capacity-weighted split of the trace (an approximation,
    see CAPACITY.md).

    Example: driftsim plan gpu-mix -s my.toml --price a100-llama-3.1-8b=1.8 --price h100-llama-3.1-8b=3.2
    """
    from driftsim.capacity.plan import cheapest_mix as fn
    from driftsim.capacity.study import parse_prices

    try:
        prices = parse_prices(price)
    except _input_errors() as exc:
        _fail(str(exc))
        return
    _run_plan("gpu-mix", fn, scenario=scenario, study=study, sets=sets, seeds=seeds, slo=slo, attainment=attainment,
              criterion=criterion, jobs=jobs, ray=ray, retries=retries, out=out, force=force, fmt=fmt, prices=prices,
              max_per_type=max_per_type, max_total=max_total, compare_homogeneous=compare)  # fmt: skip


@plan_app.command("policy")
def plan_policy(
    scenario: Optional[Path] = _SCENARIO, study: Optional[Path] = _STUDY, sets: Optional[list[str]] = _SET,
    seeds: Optional[str] = _SEEDS, slo: Optional[list[str]] = _SLO, attainment: Optional[float] = _ATTAINMENT,
    criterion: Optional[str] = _CRITERION,
    policies: Optional[str] = typer.Option(None, "--policies", help="Policies to compare, e.g. fifo,sjf,vtc (default: all).", rich_help_panel="Search"),
    jobs: Optional[int] = _JOBS, ray: Optional[str] = _RAY, retries: int = _RETRIES, out: Optional[Path] = _OUT, force: bool = _FORCE, fmt: TableFormat = _FORMAT,
) -> None:  # fmt: skip
    """The policy that maximises the lowest per-tenant SLO attainment (then the lowest mean E2E).

    Example: driftsim plan policy --policies fifo,priority,sjf,aging,vtc --seeds 0-4
    """
    from driftsim.capacity.plan import best_policy as fn

    names = [p.strip() for p in policies.split(",")] if policies is not None else None
    if names is not None and not all(names):
        _fail(f"--policies {policies!r}: expected a comma-separated list of policy names")
    _run_plan("policy", fn, scenario=scenario, study=study, sets=sets, seeds=seeds, slo=slo, attainment=attainment,
              criterion=criterion, jobs=jobs, ray=ray, retries=retries, out=out, force=force, fmt=fmt, policies=names)  # fmt: skip


# --------------------------------------------------------------------------- report
def report(
    results: Path = typer.Argument(..., help="A results folder written by `driftsim sweep`, `driftsim plan` or `driftsim simulate`."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="HTML file; default RESULTS/report.html."),
    price: Optional[list[str]] = typer.Option(None, "--price", help="$ per GPU-hour of a profile, PROFILE=USD (repeatable), for cost per million tokens (sweeps and plans)."),
    open_browser: bool = typer.Option(False, "--open", help="Open the report in the default browser (a local file; no server)."),
) -> None:
    """Write an interactive, self-contained HTML report of a results folder (plotly inlined; opens offline).

    A sweep or plan: latency vs load per tenant and policy with SLO lines,
    CDFs, queue depth, running requests and estimated KV use over time, cost
    per million tokens. A `driftsim simulate` run: the page `simulate
    --report` writes (bench table, per-tenant CDFs, latency over time, and
    the engine's batch, queue and KV use when the run recorded them).

    Example: driftsim report driftsim-out/sweep-20260101-120000 --open
    """
    from driftsim.capacity.report import write_report
    from driftsim.capacity.study import parse_prices
    from driftsim.experiments.run_report import is_run_folder, write_run_report

    try:
        if is_run_folder(results):
            if price:
                _fail("--price: cost per million tokens is for sweeps and plans; a simulate run has one profile")
            path = write_run_report(results, out if out is not None else results / "report.html")
        else:
            path = write_report(results, out, prices=parse_prices(price))
    except _input_errors() as exc:
        _fail(str(exc))
        return
    console.print(f"report written to [bold]{path}[/] ({path.stat().st_size / 1e6:.1f} MB, opens offline)", highlight=False)
    if open_browser:
        webbrowser.open(path.resolve().as_uri())
