"""``driftsim profile`` and ``driftsim fit``: measure a real engine, then fit
the latency model to the measurements.

Thin wrappers, as the rest of the CLI: parse options, call
``driftsim.profiling.sweep.run_sweep`` / ``driftsim.costmodel.fit.fit_measurements``, print
rich tables, exit non-zero on failure. Register them on the app with::

    from driftsim.cli import profiling_cmds
    app.command("profile")(profiling_cmds.profile)
    app.command("fit")(profiling_cmds.fit)

Exit codes: 0 done; 1 the measurement stopped early (engine/server failure
or Ctrl-C; what was measured is in the file); 2 bad input (unreachable
endpoint, bad file, too few measurements); 3 ``fit --check-targets`` and
the held-out error misses the targets.

NOTE: the library is imported inside the commands: every ``driftsim`` call
imports this module, and the profiling drivers, the fit and pyarrow would
add about a second to its start-up.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from driftsim.cli.render import make_console

console = make_console()
err = make_console(stderr=True)


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def tiny_model_or_exit() -> Path:
    """Build (or reuse from the cache) the tiny random-weight test model, or exit 2 naming what is missing."""
    from driftsim.profiling.tiny_model import build_tiny_model

    with err.status("building the tiny model"):
        try:
            return build_tiny_model()
        except ImportError as exc:
            _fail(f"building the tiny model needs torch, transformers and tokenizers (the engine extra): {exc}")


def start_server_or_exit(server, status: str) -> str:
    """Start a :class:`driftsim.profiling.server.VllmServer` under a spinner and return its URL, or exit 2 with
    the reason it did not come up (its log says more)."""
    from driftsim.profiling.server import ServerStartError

    with err.status(status):
        try:
            server.start()
        except ServerStartError as exc:
            _fail(str(exc))
    err.print(f"server up at {server.url} in {server.startup_s:.0f} s (log {server.log_path})")
    return server.url


def _pct(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f} %"


def profile(
    engine: Optional[str] = typer.Option(None, "--engine", "-e", help="'offline' (vllm.LLM in this process: exact step times) or 'http' (any OpenAI-compatible server). Default: http with --endpoint, --launch or --launch-tiny, else offline."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Model folder. offline: the model to load; http: where to read config.json (optional)."),
    tiny_model: bool = typer.Option(False, "--tiny-model", help="offline: build (or reuse) the small random-weight Llama and profile it; nothing is downloaded."),
    endpoint: Optional[str] = typer.Option(None, "--endpoint", help="http: a running server's base URL, e.g. http://127.0.0.1:8000."),
    launch: Optional[Path] = typer.Option(None, "--launch", help="http: start a local vLLM server for this model folder, profile it, stop it (as `driftsim validate --launch`)."),
    launch_tiny: bool = typer.Option(False, "--launch-tiny", help="http: build (or reuse) the small random-weight Llama and launch it (as `driftsim validate --launch-tiny`)."),
    build_tiny_model: bool = typer.Option(False, "--build-tiny-model", hidden=True, help="Old name of --tiny-model."),
    serve: bool = typer.Option(False, "--serve", hidden=True, help="Old form of --launch: start a server for --model (or the tiny model)."),
    served_model: Optional[str] = typer.Option(None, "--served-model", help="http: model name on the server (default: its first model)."),
    api_key_file: Optional[Path] = typer.Option(None, "--api-key-file", help="http: file whose first line is the endpoint's API key (default: $DRIFTSIM_API_KEY, then $OPENAI_API_KEY). Sent to that endpoint only; never written anywhere."),
    budget_s: float = typer.Option(300.0, "--budget-s", help="Time for measuring (warm-up included), seconds. Minutes on a CPU; give a GPU 15-30 min."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Measurement file (.parquet or .csv); default driftsim-out/measurements-<time>.parquet."),
    max_num_seqs: Optional[int] = typer.Option(None, "--max-num-seqs", help="Engine limit: sequences per step (http: what the server was started with; default 128)."),
    max_num_batched_tokens: Optional[int] = typer.Option(None, "--max-num-batched-tokens", help="Engine limit: tokens per step (http: as the server; default 2048)."),
    max_model_len: Optional[int] = typer.Option(None, "--max-model-len", help="Engine limit: prompt + output tokens (offline default 2048; http: read from the server)."),
    dtype: str = typer.Option("auto", "--dtype", help="offline: weights dtype ('auto' = float32 on CPU)."),
    kv_cache_gib: int = typer.Option(1, "--kv-cache-gib", help="CPU engines: KV cache size (VLLM_CPU_KVCACHE_SPACE), GiB."),
    gpu_memory_utilization: Optional[float] = typer.Option(None, "--gpu-memory-utilization", help="offline on GPU: fraction of GPU memory vLLM may use."),
    cpu_threads: Optional[str] = typer.Option(None, "--cpu-threads", help="CPU engines: cores for the engine's OpenMP threads, e.g. '1' or '2-7' (default: all but the first)."),
    seed: int = typer.Option(0, "--seed", help="Seed for the plan order and the prompts."),
) -> None:
    """Measure a real engine: run a sweep of prefill, decode and mixed steps and write one row per step.

    The engine is named as `driftsim validate` names it: --endpoint URL (a
    running server), --launch MODEL_DIR or --launch-tiny (a server started
    and stopped here), or, offline, --model DIR or --tiny-model.

    Examples:

      driftsim profile --tiny-model --budget-s 300 --out tiny.parquet

      driftsim profile --model /models/qwen1.5-1.8b-chat --budget-s 1800 --out l4.parquet

      driftsim profile --endpoint http://127.0.0.1:8000 --max-num-seqs 256 --out srv.parquet

      driftsim profile --launch-tiny --budget-s 300 --out tiny-http.parquet
    """
    choice = resolve_engine(engine=engine, model=model, tiny_model=tiny_model or build_tiny_model, endpoint=endpoint,
                            launch=launch, launch_tiny=launch_tiny, serve=serve)  # fmt: skip
    engine, model, build_tiny_model, serve = choice.engine, choice.model, choice.tiny, choice.launches
    _check_profile_options(engine=engine, budget_s=budget_s, endpoint=endpoint, serve=serve, model=model,
                           build_tiny_model=build_tiny_model)
    out = out or Path("driftsim-out") / f"measurements-{datetime.now():%Y%m%d-%H%M%S}.parquet"
    if out.suffix.lower() not in (".parquet", ".csv"):
        _fail(f"--out {out}: must end in .parquet or .csv")
    t_total = time.perf_counter()
    model, offline_config = _model_and_offline_config(
        engine, model, build_tiny_model, dtype=dtype, max_model_len=max_model_len, max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens, gpu_memory_utilization=gpu_memory_utilization,
        kv_cache_gib=kv_cache_gib, cpu_threads=cpu_threads, seed=seed)  # fmt: skip

    server = driver = None
    extra = {}
    try:
        if engine == "offline":
            from driftsim.profiling.offline import OfflineDriver

            driver = OfflineDriver(offline_config)
            _start_offline_or_exit(driver)
        else:
            if serve:
                server = _server_to_profile(model, max_model_len=max_model_len, max_num_seqs=max_num_seqs,
                                            max_num_batched_tokens=max_num_batched_tokens, kv_cache_gib=kv_cache_gib,
                                            cpu_threads=cpu_threads)
                endpoint = start_server_or_exit(server, "starting the vLLM server")
            driver, arch = _http_driver_or_exit(endpoint, model=model, served_model=served_model,
                                                api_key_file=api_key_file, max_num_seqs=max_num_seqs,
                                                max_num_batched_tokens=max_num_batched_tokens,
                                                max_model_len=max_model_len, seed=seed)
            if model is not None:
                extra = {"model_arch": arch, "model_dir": str(model)}
        result = _measure(driver, out=out, budget_s=budget_s, seed=seed, extra=extra)
    finally:
        if engine == "offline" and driver is not None:
            driver.close()
        if server is not None:
            server.stop()
    _print_sweep(result, out, total_s=time.perf_counter() - t_total)


def _model_and_offline_config(engine: str, model: Path | None, build_tiny_model: bool, *, dtype: str,
                              max_model_len: int | None, max_num_seqs: int | None, max_num_batched_tokens: int | None,
                              gpu_memory_utilization: float | None, kv_cache_gib: int, cpu_threads: str | None,
                              seed: int):  # fmt: skip
    """The model folder (the tiny model built or reused when asked) and, offline, the engine's config, with the
    environment prepared before anything imports torch (the tiny model's build does)."""
    offline_config = None
    if engine == "offline":
        from driftsim.profiling.offline import OfflineConfig, prepare_environment

        offline_config = OfflineConfig(
            model=str(model) if model else "", dtype=dtype, max_model_len=max_model_len or 2048,
            max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens or 2048,
            gpu_memory_utilization=gpu_memory_utilization, kv_cache_space_gib=kv_cache_gib,
            cpu_threads_bind=cpu_threads, seed=seed)
        prepare_environment(offline_config)
    if build_tiny_model:
        model = tiny_model_or_exit()
        err.print(f"tiny model: {model}")
        if offline_config is not None:
            offline_config = replace(offline_config, model=str(model))
    return model, offline_config


def _server_to_profile(model: Path, *, max_model_len: int | None, max_num_seqs: int | None,
                       max_num_batched_tokens: int | None, kv_cache_gib: int, cpu_threads: str | None):
    """``--serve``: the vLLM server to start for ``model`` (not started yet)."""
    from driftsim.profiling.server import ServerConfig, VllmServer

    return VllmServer(ServerConfig(model=str(model), max_model_len=max_model_len or 2048,
                                   max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                                   kv_cache_space_gib=kv_cache_gib,
                                   env={"VLLM_CPU_OMP_THREADS_BIND": cpu_threads} if cpu_threads else {}))


def _measure(driver, *, out: Path, budget_s: float, seed: int, extra: dict):
    """Run the sweep on a started driver under a progress line."""
    from driftsim.profiling.sweep import run_sweep

    limits = driver.limits()
    err.print(f"limits: {limits.max_num_seqs} seqs, {limits.max_num_batched_tokens} tokens per step, "
              f"max_model_len {limits.max_model_len}, KV {limits.kv_tokens or '?'} tokens; "
              f"measuring for up to {budget_s:.0f} s into {out}")
    with err.status("measuring") as status:
        def progress(i: int, n: int, elapsed: float, point) -> None:
            status.update(f"measuring: {elapsed:5.0f} / {budget_s:.0f} s, point {i + 1} of {n}: {point.describe()}")

        return run_sweep(driver, out=out, budget_s=budget_s, seed=seed, extra_meta=extra, progress=progress)


@dataclass(frozen=True)
class EngineChoice:
    """The engine ``driftsim profile`` measures, from its launch vocabulary (shared with ``driftsim validate``)."""

    engine: str  # "offline" or "http"
    model: Path | None  # the model folder to load, serve or read config.json from
    tiny: bool  # the tiny random-weight Llama is the model (built or reused)
    launches: bool  # a local vLLM server is started for the model


def resolve_engine(*, engine: str | None, model: Path | None, tiny_model: bool, endpoint: str | None,
                   launch: Path | None, launch_tiny: bool, serve: bool) -> EngineChoice:  # fmt: skip
    """``--launch DIR`` / ``--launch-tiny`` / ``--endpoint`` (http) or ``--model`` / ``--tiny-model`` (offline) as
    one choice; the old ``--serve`` (launch ``--model``) means ``--launch``. Exits 2 naming the flags that clash."""
    if launch is not None and launch_tiny:
        _fail("give either --launch MODEL_DIR or --launch-tiny, not both")
    if serve and (launch is not None or launch_tiny):
        _fail("--serve is the old form of --launch; give --launch MODEL_DIR or --launch-tiny alone")
    if launch is not None and model is not None and Path(model) != Path(launch):
        _fail(f"--launch {launch} and --model {model} name two models; --launch MODEL_DIR alone is enough")
    if launch_tiny and (model is not None or tiny_model):
        _fail("--launch-tiny serves the tiny model; drop --model / --tiny-model")
    if launch is not None and not Path(launch).is_dir():
        _fail(f"--launch {launch}: not a folder (expected the model folder to serve)")
    launches = serve or launch is not None or launch_tiny
    if engine is None:
        engine = "http" if (launches or endpoint) else "offline"
    if launches and engine != "http":
        _fail(f"--engine {engine}: a launched server is measured over http; drop --engine or give --engine http")
    return EngineChoice(engine=engine, model=launch if launch is not None else model, tiny=tiny_model or launch_tiny,
                        launches=launches)  # fmt: skip


def _check_profile_options(*, engine: str, budget_s: float, endpoint: str | None, serve: bool, model: Path | None,
                           build_tiny_model: bool) -> None:
    """Exit 2 naming the flag on every bad combination of ``driftsim profile`` options."""
    if engine not in ("offline", "http"):
        _fail(f"--engine: expected 'offline' or 'http', got {engine!r}")
    if not budget_s > 0:
        _fail(f"--budget-s must be > 0, got {budget_s}")
    if engine == "http" and not (endpoint or serve):
        _fail("--engine http needs --endpoint URL, --launch MODEL_DIR or --launch-tiny")
    if endpoint and serve:
        _fail("give either --endpoint or --launch / --launch-tiny, not both")
    if engine == "offline" and endpoint:
        _fail("--endpoint is for --engine http")
    if model is None and not build_tiny_model and (engine == "offline" or serve):
        _fail("which model? give --model DIR or --tiny-model (offline), or --launch MODEL_DIR or --launch-tiny")
    if model is not None and build_tiny_model:
        _fail("give either --model or --tiny-model, not both")
    if model is not None and not model.is_dir():
        _fail(f"--model {model}: not a folder")


def _start_offline_or_exit(driver) -> None:
    from driftsim.profiling.offline import EngineUnavailable

    with err.status("starting the engine"):
        try:
            driver.start()
        except EngineUnavailable as exc:
            _fail(str(exc))


def _http_driver_or_exit(endpoint: str, *, model: Path | None, served_model: str | None, api_key_file: Path | None,
                         max_num_seqs: int | None, max_num_batched_tokens: int | None, max_model_len: int | None,
                         seed: int):
    """The started HTTP driver for ``endpoint`` and the model's architecture (None without ``model``)."""
    from driftsim.profiling.http import EndpointError, HttpConfig, HttpDriver
    from driftsim.profiling.modelinfo import model_arch
    from driftsim.profiling.secrets import SecretError, load_api_key

    vocab = 4000
    arch = None
    if model is not None:
        try:
            arch = model_arch(model)
            vocab = arch["vocab_size"]
        except (OSError, ValueError) as exc:
            _fail(str(exc))
    try:
        api_key = load_api_key(api_key_file)
    except SecretError as exc:
        _fail(str(exc))
    driver = HttpDriver(HttpConfig(endpoint=str(endpoint), model=served_model, api_key=api_key,
                                   max_num_seqs=max_num_seqs or 128,
                                   max_num_batched_tokens=max_num_batched_tokens or 2048,
                                   max_model_len=max_model_len, vocab_size=vocab, seed=seed))
    try:
        driver.start()
    except EndpointError as exc:
        _fail(str(exc))
    return driver, arch


def _print_sweep(result, out: Path, *, total_s: float) -> None:
    """What the sweep measured; exit 1 if it stopped early."""
    console.print(f"measured {result.rows} steps in {result.wall_s:.0f} s ({total_s:.0f} s in all, "
                  "engine start included)")
    t = Table()
    t.add_column("phase")
    t.add_column("steps", justify="right")
    for phase in ("prefill", "decode", "mixed"):
        t.add_row(phase, str(result.phase_counts.get(phase, 0)))
    console.print(t)
    console.print(f"{result.points_run} of {result.points_planned} planned points; status [bold]{result.status}[/]; "
                  f"measurements in [bold]{result.path}[/]")
    if result.status != "complete":
        err.print(f"[bold red]error:[/] measurement stopped early: {result.error}; the {result.rows} steps "
                  f"measured so far are kept in {result.path}", highlight=False)
        raise typer.Exit(1)
    console.print(f"next: driftsim fit {result.path} --out {out.with_suffix('.toml')}")


def fit(
    measurements: Path = typer.Argument(..., help="Measurement file written by `driftsim profile`."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Profile to write (TOML); default: beside the measurements."),
    name: Optional[str] = typer.Option(None, "--name", help="Profile name (default: the file stem)."),
    model_dir: Optional[Path] = typer.Option(None, "--model-dir", help="Model folder to read config.json from, if the measurements do not name the model's shapes (http runs without --model)."),
    folds: int = typer.Option(5, "--folds", help="Cross-validation folds (grouped by sweep point)."),
    include_new_shapes: bool = typer.Option(False, "--include-new-shapes", help="Also fit the first step of each new batch shape (one-off kernel preparation)."),
    keep_contended: bool = typer.Option(False, "--keep-contended", help="Also fit steps during which other processes kept the engine thread waiting."),
    check_targets: bool = typer.Option(False, "--check-targets", help="Exit 3 if the linear model's held-out error misses the targets (median <= 5 %, P90 <= 15 % per phase)."),
    decode_knots: str = typer.Option("auto", "--decode-knots", help="Decode table knots (decode batch sizes where the per-sequence cost may change): 'auto' (chosen by cross-validation), 'none' (one cost per sequence), or a list such as 1,8,64."),
) -> None:
    """Fit the linear latency model to measurements, print its held-out error, write a profile for `driftsim simulate --profile`.

    The error is measured on held-out steps (K-fold cross-validation grouped by sweep point), per phase,
    for the linear model and for gradient-boosted trees.
    """
    from driftsim.costmodel.fit import TARGET_MDAPE, TARGET_P90APE, FitError, fit_measurements, write_profile
    from driftsim.costmodel.profiles import ProfileError
    from driftsim.profiling.measurements import MeasurementError, load_measurements

    if folds < 2:
        _fail(f"--folds must be >= 2, got {folds}")
    knots_arg: object = decode_knots.strip().lower()
    if knots_arg not in ("auto", "none"):
        try:
            knots_arg = [int(k) for k in str(knots_arg).split(",")]
        except ValueError:
            _fail(f"--decode-knots must be 'auto', 'none' or comma-separated integers such as 1,8,64, got {decode_knots!r}")
    try:
        m = load_measurements(measurements)
        if m.meta.get("status") not in (None, "complete"):
            err.print(f"[yellow]warning:[/] {measurements}: the measurement run did not complete "
                      f"({m.meta.get('status')}: {m.meta.get('error', '')}); fitting the {m.df.height} rows it kept",
                      highlight=False)
        model, report = fit_measurements(m, folds=folds, exclude_new_shape=not include_new_shapes,
                                         max_wait_frac=None if keep_contended else 0.05, decode_knots=knots_arg)
    except (MeasurementError, FitError) as exc:
        _fail(str(exc))
        return
    arch = None
    if model_dir is not None:
        from driftsim.profiling.modelinfo import model_arch

        try:
            arch = model_arch(model_dir, dtype=m.meta.get("dtype"))
        except (OSError, ValueError) as exc:
            _fail(str(exc))
    out = out or measurements.with_suffix(".toml")
    console.print(_fit_error_table(report))
    _print_fit_notes(report)
    console.print(_coefficients_table(model))
    try:
        write_profile(out, model, report, m.meta, name=name, measurements_path=measurements, model_arch=arch)
    except (FitError, ProfileError) as exc:
        _fail(str(exc))
    console.print(f"profile written to [bold]{out}[/]; use it with: driftsim simulate --profile {out}")
    if check_targets and not report.meets_targets("linear"):
        err.print(f"[bold red]targets missed:[/] the linear model's held-out error exceeds median "
                  f"{TARGET_MDAPE:.0%} or P90 {TARGET_P90APE:.0%} in some phase", highlight=False)
        raise typer.Exit(3)


def _fit_error_table(report) -> Table:
    """Held-out step-time error per phase, per model, and whether the linear model meets its targets."""
    from driftsim.costmodel.fit import TARGET_MDAPE, TARGET_P90APE

    t = Table(title=f"held-out step-time error ({report.folds}-fold CV by sweep point, {report.rows} steps, "
                    f"{report.groups} points)", title_justify="left")
    t.add_column("phase")
    t.add_column("steps", justify="right")
    shown = [m_ for m_ in ("linear", "linear_plain", "gbt") if m_ in report.errors]
    labels = {"linear": "linear", "linear_plain": "no-table", "gbt": "GBT"}
    for model_name in shown:
        t.add_column(f"{labels[model_name]} median", justify="right")
        t.add_column(f"{labels[model_name]} P90", justify="right")
    t.add_column("linear meets target", justify="center")
    for phase in ("prefill", "decode", "mixed", "all"):
        lin = report.errors["linear"].get(phase)
        if lin is None:
            t.add_row(phase, "0", *["-"] * (2 * len(shown) + 1))
            continue
        ok = lin.mdape <= TARGET_MDAPE and lin.p90ape <= TARGET_P90APE
        cells = [c for m_ in shown for c in (_pct(report.errors[m_][phase].mdape), _pct(report.errors[m_][phase].p90ape))]
        t.add_row(f"[bold]{phase}[/]" if phase == "all" else phase, str(lin.n), *cells,
                  ("[green]yes[/]" if ok else "[red]no[/]") if phase != "all" else "",
                  end_section=phase == "mixed")
    return t


def _print_fit_notes(report) -> None:
    """What else the fit found: the decode table, measurement noise, what was left out, warnings, the winner."""
    if "linear_plain" in report.errors:
        console.print("linear: the profile's model, "
                      + (f"with a decode table at {', '.join(map(str, report.decode_knots))} decode sequences"
                         if report.decode_knots else "no decode table chosen")
                      + "; no-table: the same fit with one cost per decode sequence", highlight=False)
    rep = report.decode_repeatability
    if rep is not None:
        console.print(f"repeatability: {rep.n} decode steps differ from same-shape steps of other sweep points by "
                      f"median {_pct(rep.mdape)}, P90 {_pct(rep.p90ape)} (run-to-run measurement noise: a rough floor "
                      "for any model's held-out decode error)", highlight=False)
    if report.excluded:
        console.print("left out: " + ", ".join(f"{n} {why}" for why, n in report.excluded.items()), highlight=False)
    for warning in report.warnings:
        err.print(f"[yellow]warning:[/] {warning}", highlight=False)
    if report.neighbour_cpu is not None and report.neighbour_cpu > 0.2:
        err.print(f"[yellow]warning:[/] other processes used {report.neighbour_cpu:.1f} CPU cores on average while "
                  "these steps ran; shared caches and memory make the timings noisier than the engine alone. "
                  "Re-measure on an otherwise idle machine for a clean profile.", highlight=False)
    console.print(f"winner (lower P90 over all held-out steps): [bold]{'linear' if report.winner == 'linear' else 'gradient-boosted trees'}[/]"
                  + ("" if report.winner == "linear" else
                     " (the profile still holds the linear model: it is the form the simulator evaluates)"))


def _coefficients_table(model) -> Table:
    """The linear model's coefficients and decode table."""
    c = Table(title="linear model (fitted on all steps)", title_justify="left")
    c.add_column("coefficient")
    c.add_column("value", justify="right")
    for key, value in model.coefficients.items():
        c.add_row(key + (" (beyond the table)" if key == "per_decode_seq_s" and model.decode_seq_knots else ""),
                  f"{value:.4g}")
    for knot, cost in zip(model.decode_seq_knots, model.decode_seq_cost_s):
        c.add_row(f"decode sequences cost at {knot} (s)", f"{cost:.4g}")
    return c


def _standalone_app() -> typer.Typer:
    """The two commands on their own (``python -m driftsim.cli.profiling_cmds``), for
    scripts and tests that must not depend on how the main app wires them."""
    app = typer.Typer(name="driftsim-profiling", no_args_is_help=True, add_completion=False,
                      pretty_exceptions_enable=False)
    app.command("profile")(profile)
    app.command("fit")(fit)
    return app


if __name__ == "__main__":  # pragma: no cover
    _standalone_app()()
