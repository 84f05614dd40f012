"""``driftsim compare RUN RUN ...``: saved runs side by side in the terminal, and optionally on one HTML page.

Library modules are imported inside the command, for start-up time (as in
:mod:`driftsim.cli.main`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from driftsim.cli.render import make_console


def compare(
    runs: list[Path] = typer.Argument(..., help="Run folders written by `driftsim simulate` (two or more)."),
    html: Optional[Path] = typer.Option(None, "--html", help="Also write an offline HTML page with overlaid CDFs."),
) -> None:
    """Compare saved runs: vllm bench serve's figures per tenant and overall, one row per run."""
    from driftsim.cli.render import bench_table
    from driftsim.errors import ConfigError
    from driftsim.experiments.compare import compare_rows, load_runs, write_compare_report

    console = make_console()
    try:
        loaded = load_runs(runs)
    except ConfigError as e:
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from None
    rows = compare_rows(loaded)
    groups = list(dict.fromkeys(g for g, _, _ in rows))
    for group in groups:
        console.print(bench_table([(name, g) for grp, name, g in rows if grp == group], f"{group}"))
    console.print("TTFT, TPOT, ITL in ms; E2E in s; SLO met in percent of requests carrying an SLO; "
                  "goodput: completed requests meeting every SLO, per second")  # fmt: skip
    if html is not None:
        console.print(f"wrote {write_compare_report(loaded, html)}")


def register(app: typer.Typer) -> None:
    """Add ``compare`` to the ``driftsim`` app."""
    app.command("compare", rich_help_panel="Plan capacity")(compare)
