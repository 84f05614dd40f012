"""``driftsim validate-published``: the bundled profiles against published real vLLM serving runs.

Thin wrapper over :mod:`driftsim.validation.published`: load the rows,
simulate each set-up with its profile, print published against simulated
with the error and its target, optionally write the table (CSV, or Markdown
for a ``.md`` file). Bad input exits 2 with a one-line message naming the
file, row and field. Library modules are imported inside the command, for
start-up time (as in :mod:`driftsim.cli.main`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from driftsim.cli.render import make_console

console = make_console()
err = make_console(stderr=True)

_OUT_SUFFIXES = (".csv", ".md")


def validate_published(
    data: Optional[Path] = typer.Option(None, "--data", help="Measurements file (default: the bundled validation/published_runs.toml)."),
    only: Optional[list[str]] = typer.Option(None, "--only", help="Simulate only the rows whose id starts with this (repeatable)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Also write the table: .csv, or .md (a Markdown table)."),
    force: bool = typer.Option(False, "--force", help="Overwrite --out when it exists."),
    seed: int = typer.Option(0, "--seed", help="Seed of the simulated arrivals (all-at-once runs do not use it)."),
) -> None:
    """Simulate published real vLLM runs with the bundled profiles; print published, simulated, error and target."""
    from driftsim.errors import ConfigError
    from driftsim.validation.published import DEFAULT_RUNS, load_runs, score, score_table

    if out is not None:
        if out.suffix not in _OUT_SUFFIXES:
            _fail(f"--out {out}: expected a .csv or .md file")
        if out.exists() and not force:
            _fail(f"--out {out}: exists; choose another file or add --force to overwrite it")
    try:
        rows, rejected = load_runs(data or DEFAULT_RUNS)
        if only:
            rows = [r for r in rows if r.id.startswith(tuple(only))]
            if not rows:
                _fail(f"--only {' '.join(only)}: no measurement id starts with that")
        records = score(rows, seed=seed)
    except ConfigError as exc:
        _fail(str(exc))
    console.print(_table(records), highlight=False)
    met = [r["met"] for r in records if r["met"] is not None]
    console.print(f"{sum(met)} of {len(met)} simulated figures within target; "
                  f"{sum(r['met'] is None for r in records)} not covered. "
                  f"{len(rejected)} sources left out (see --data file's [[rejected]]).", highlight=False, markup=False)
    if out is not None:
        table = score_table(records)
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix == ".csv":
            table.write_csv(out)
        else:
            out.write_text(markdown_table(records), encoding="utf-8")
        console.print(f"wrote {out}", highlight=False)


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(2)


def _num(x: float | None, digits: int = 1) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:,.{digits}f}"


def _verdict(r: dict) -> str:
    if r["met"] is None:
        return f"not covered: {r['not_covered']}"
    return "yes" if r["met"] else "no"


def _table(records: list[dict]) -> Table:
    t = Table(title="Published real vLLM runs against the bundled profiles")
    for name in ("id", "set-up", "metric", "published", "simulated", "error %", "target %", "met"):
        t.add_column(name, justify="right" if name in ("published", "simulated", "error %", "target %") else "left")
    for r in records:
        t.add_row(r["id"], r["setup"], r["metric"], _num(r["published"], 2), _num(r["simulated"], 2),
                  "-" if r["error_pct"] is None else f"{r['error_pct']:+.1f}", f"{r['target_pct']:.0f}", _verdict(r))
    return t


def markdown_table(records: list[dict]) -> str:
    """The records as a Markdown table, for VALIDATION.md."""
    lines = ["| row | set-up | metric | published | simulated | error | target | met |",
             "|---|---|---|--:|--:|--:|--:|---|"]
    for r in records:
        error = "-" if r["error_pct"] is None else f"{r['error_pct']:+.1f} %"
        lines.append(f"| [{r['id']}]({r['url']}) | {r['setup']} | {r['metric']} | {_num(r['published'], 2)} | "
                     f"{_num(r['simulated'], 2)} | {error} | {r['target_pct']:.0f} % | {_verdict(r)} |")
    return "\n".join(lines) + "\n"


def register(app: typer.Typer) -> None:
    """Add ``validate-published`` to the ``driftsim`` app."""
    app.command("validate-published", rich_help_panel="Measure a real engine")(validate_published)
