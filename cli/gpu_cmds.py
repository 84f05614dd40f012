"""GPU profile commands: ``driftsim profiles build``.

Thin wrapper over :mod:`driftsim.costmodel.kernels.build`: parse flags, build
the profile from measured kernel tables, print its held-out error and build
time, write the TOML. Bad input exits 2 with a one-line message naming the
flag. Library modules are imported inside the command, for start-up time.

Registered on the main app by :func:`register` (``cli/main.py``).
"""

from __future__ import annotations

import datetime
import time
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from driftsim.cli.render import make_console

console = make_console()
err = make_console(stderr=True)


def build(
    gpu: str = typer.Option(..., "--gpu", help="a100, h100, h200, l40s (measured) or l4 (transferred from l40s)."),
    model: str = typer.Option(..., "--model", help="A Hugging Face config.json file, or a bundled architecture name."),
    tp: int = typer.Option(1, "--tp", help="Tensor-parallel GPUs per replica."),
    engine_version: Optional[str] = typer.Option(None, "--engine-version", help="vLLM version of the kernel tables (default: the newest for the GPU)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Profile file to write (default: NAME.toml here)."),
    name: Optional[str] = typer.Option(None, "--name", help="Profile name (default: GPU-MODEL[-tpN]-kernels)."),
    samples: int = typer.Option(1200, "--samples", help="Batches sampled and composed (80 % fit, 20 % held out)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the batch sampler."),
    date: Optional[str] = typer.Option(None, "--date", help="Date recorded in the provenance (default: today, UTC)."),
) -> None:
    """Build a profile from measured vLLM kernel tables (needs the `kernels` extra: aiconfigurator-core)."""
    from driftsim.costmodel.kernels.build import build_profile
    from driftsim.errors import ConfigError

    if samples < 100:
        err.print(f"[red]error:[/] --samples {samples}: expected at least 100", highlight=False)
        raise typer.Exit(2)
    started = time.perf_counter()
    try:
        text, result = build_profile(gpu=gpu, model=model, tp=tp, engine_version=engine_version, samples=samples,
                                     seed=seed, date=date or datetime.datetime.now(datetime.UTC).date().isoformat(),
                                     name=name)
    except ConfigError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    profile_name = text.split('name = "', 1)[1].split('"', 1)[0]
    path = out or Path(f"{profile_name}.toml")
    path.write_text(text, encoding="utf-8")
    console.print(_error_table(result.errors, profile_name))
    console.print(f"{result.samples} batches composed ({result.refused} outside the measured grid, not used); "
                  f"built in {time.perf_counter() - started:.1f} s; wrote {path}", highlight=False)
    console.print(f"coverage: {result.coverage}", highlight=False)


def _error_table(errors: dict, title: str) -> Table:
    t = Table(title=f"{title}: held-out error against the composed kernel times", title_justify="left")
    t.add_column("model")
    for phase in ("decode", "prefill", "mixed"):
        t.add_column(f"{phase} median", justify="right")
        t.add_column(f"{phase} P90", justify="right")
    for which, errs in errors.items():
        t.add_row(which, *[f"{100 * errs[f'{p}_{q}']:.1f} %" if f"{p}_{q}" in errs else "-"
                           for p in ("decode", "prefill", "mixed") for q in ("median", "p90")])
    return t


def register(app: typer.Typer, profiles_app: typer.Typer) -> None:
    """Add the GPU profile commands to the main app and its ``profiles`` group."""
    profiles_app.command("build")(build)
