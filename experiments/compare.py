"""Runs side by side: the same figures per run (per tenant and overall), and their latency CDFs overlaid.

Reads run folders as ``driftsim simulate`` writes them (see
:func:`driftsim.experiments.run_report.load_run`). Runs are named by their
folder; two folders with the same name get ``#2``, ``#3``, ... so every
column and line says which run it is.
"""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl

from driftsim.errors import ConfigError
from driftsim.experiments.run_report import RunData, cdf_figure, load_run, page, table_html
from driftsim.sim.atomic import atomic_write_text
from driftsim.sim.html import figures_html

__all__ = ["compare_rows", "load_runs", "write_compare_report"]

OVERALL = "overall"


def load_runs(folders: list[str | os.PathLike]) -> list[RunData]:
    """The runs in ``folders``, uniquely named; at least two."""
    if len(folders) < 2:
        raise ConfigError(f"compare: expected two or more run folders, got {len(folders)}")
    runs, seen = [], {}
    for folder in folders:
        name = Path(folder).name or str(folder)
        seen[name] = seen.get(name, 0) + 1
        runs.append(load_run(folder, name=name if seen[name] == 1 else f"{name}#{seen[name]}"))
    return runs


def _group(run: RunData, tenant: str) -> dict | None:
    s = run.summary
    return s["overall"] if tenant == OVERALL else s.get("tenants", {}).get(tenant)


def compare_rows(runs: list[RunData]) -> list[tuple[str, str, dict]]:
    """(group, run name, summary group) for every tenant any run has, then overall; a tenant a run lacks is left out."""
    tenants = sorted({t for r in runs for t in r.summary.get("tenants", {})})
    groups = [*tenants, OVERALL] if len(tenants) > 1 else [OVERALL]
    return [(g, r.name, grp) for g in groups for r in runs if (grp := _group(r, g)) is not None]


def write_compare_report(runs: list[RunData], path: str | os.PathLike, *, title: str = "driftsim runs compared") -> Path:
    """One offline page: the comparison table and each run's latency CDFs (completed requests) overlaid."""
    parts = ["<h2>per group and run</h2>",
             table_html([(f"{group} · {name}", g) for group, name, g in compare_rows(runs)])]  # fmt: skip
    with_rows = [(r.name, r.requests.filter(pl.col("status") == "ok")) for r in runs if r.requests is not None]
    missing = [r.name for r in runs if r.requests is None]
    if missing:
        parts.append(f"<p class='note'>Kept only their summary, so not in the CDFs: {', '.join(missing)}.</p>")
    parts += figures_html([cdf_figure(with_rows, "latency CDFs, all tenants, one line per run")])
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, page(title, parts))
    return out
